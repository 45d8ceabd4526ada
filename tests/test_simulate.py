"""The cluster simulator: the real controller, strategies and store on a virtual clock."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from search.config import parse_config
from search.simulate import SimSettings, busy_fraction, hypervolume_curve, last_submit, simulate
from search.store import COMPLETE, FAIL, Store
from search.strategies import STRATEGIES

REPO = Path(__file__).resolve().parents[1]


def _digits_cfg(strategy: str, budget: int, options: dict[str, Any] | None = None, max_retries: int = 2) -> Any:
    raw = yaml.safe_load((REPO / "configs" / "digits.yaml").read_text())
    raw["strategy"] = {"name": strategy, "budget": budget, "options": options or {}}
    raw["workers"] = {"backend": "local", "count": 1, "max_retries": max_retries}
    return parse_config(raw).with_base_dir(str(REPO / "configs"))


def _stored(url: Path, run: str = "digits") -> list[Any]:
    st = Store.open(str(url), readonly=True)
    try:
        return st.trials(st.study(run).id)
    finally:
        st.close()


def _fingerprint(trials: list[Any]) -> list[tuple[Any, ...]]:
    return [(t.number, tuple(t.candidate["x"]), t.state, tuple(t.values or ()), t.attempts, t.worker, t.error) for t in trials]


@pytest.fixture(autouse=True)
def _quiet() -> Any:
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


def test_simulation_is_deterministic_for_a_seed(digits_zoo: Path, tmp_path: Path) -> None:
    cfg = _digits_cfg("nsga2", 60, {"pop_size": 8})
    sim = SimSettings(workers=16, trial_mean_s=30, trial_sigma=0.5, preempt_rate=0.1, fail_rate=0.05, seed=3)
    a = simulate(cfg, sim, str(tmp_path / "a.db"))
    b = simulate(cfg, sim, str(tmp_path / "b.db"))
    c = simulate(cfg, sim.model_copy(update={"seed": 4}), str(tmp_path / "c.db"))
    assert a.rc == b.rc == c.rc == 0
    assert a.timeline == b.timeline and a.makespan == b.makespan > 0
    assert _fingerprint(_stored(tmp_path / "a.db")) == _fingerprint(_stored(tmp_path / "b.db"))
    # another seed draws other durations and faults: the timeline differs
    assert [(t["worker"], t["end"]) for t in c.timeline] != [(t["worker"], t["end"]) for t in a.timeline]


def test_simulated_failures_are_retried_and_recorded_like_real_ones(digits_zoo: Path, tmp_path: Path) -> None:
    """A preempted attempt comes back 'died' (as from a real pool) and is retried up to
    workers.max_retries, then recorded FAIL with the worker's error; a failed trial is FAIL."""
    cfg = _digits_cfg("cmaes", 80, max_retries=1)
    rep = simulate(cfg, SimSettings(workers=8, preempt_rate=0.3, fail_rate=0.1, seed=7), str(tmp_path / "f.db"))
    assert rep.rc == 0
    trials = _stored(tmp_path / "f.db")
    assert [t.number for t in trials] == list(range(80))
    search = [t for t in rep.timeline if t["split"] == "search"]
    attempts = Counter(t["number"] for t in search)
    last = {t["number"]: t for t in search}  # the timeline is in submit order: the last attempt wins
    n_retried = n_gave_up = n_failed = 0
    for t in trials:
        assert t.attempts == attempts[t.number]  # every retry went through store.restart_trial
        final = last[t.number]
        if final["died"]:  # died on its last allowed attempt: FAIL, with the worker's error
            assert t.attempts == 2 and t.state == FAIL and t.error == f"worker {final['worker']} died"
            n_gave_up += 1
        elif final["ok"]:
            assert t.state == COMPLETE and list(t.values) == final["values"] and t.worker == final["worker"]
        else:
            assert t.state == FAIL and t.error == "simulated failure"
            n_failed += 1
        n_retried += t.attempts > 1
    assert n_retried and n_gave_up and n_failed  # the seed exercises every path


@pytest.mark.parametrize("strategy", STRATEGIES.names())
def test_small_cluster_run_of_each_strategy_loses_nothing(strategy: str, digits_zoo: Path, tmp_path: Path) -> None:
    budget = 200
    cfg = _digits_cfg(strategy, budget)
    rep = simulate(cfg, SimSettings(workers=16, seed=0), str(tmp_path / "s.db"))
    assert rep.rc == 0
    trials = _stored(tmp_path / "s.db")
    assert [t.number for t in trials] == list(range(budget)) and all(t.state == COMPLETE for t in trials)
    search = [t for t in rep.timeline if t["split"] == "search"]
    assert sorted(t["number"] for t in search) == list(range(budget))  # each trial ran once, none lost
    by_number = {t["number"]: t for t in search}
    assert all(list(t.values) == by_number[t.number]["values"] for t in trials)
    # never more than W trials at once: at every start, fewer than 16 others are running
    for t in search:
        assert sum(o["start"] <= t["start"] < o["end"] for o in search) <= 16
    assert 0.5 < busy_fraction(search, 16, last_submit(search)) <= 1.0 + 1e-9
    hv = hypervolume_curve(search, ["maximize", "maximize"], [0.0, 0.0], [0.0, rep.makespan / 2, rep.makespan])
    assert hv[0] == 0.0 < hv[1] <= hv[2]
    assert np.isclose(hv[2], hypervolume_curve(search, ["maximize", "maximize"], [0.0, 0.0], [1e12])[0])


# ----------------------------------------------------------------------------- strategy keep-up
def test_model_rows_keeps_the_front_and_a_random_rest() -> None:
    from search.pareto import pareto_mask
    from search.strategies.subset import model_rows

    rng = np.random.default_rng(0)
    F = rng.random((3000, 2))
    assert model_rows(F[:500], 500) is None and model_rows(F, None) is None
    rows = model_rows(F, 500, seed=1)
    assert rows is not None and len(rows) == len(set(rows.tolist())) == 500 and np.all(np.diff(rows) > 0)
    front = np.flatnonzero(pareto_mask(F, ["minimize", "minimize"]))
    assert set(front.tolist()) <= set(rows.tolist())  # the measured front is always modelled
    assert np.array_equal(rows, model_rows(F, 500, seed=1))  # deterministic for a seed
    assert not np.array_equal(rows, model_rows(F, 500, seed=2))  # the random half is drawn


def test_mobo_with_a_subset_of_data_proposes_new_points_deterministically(digits_zoo: Path) -> None:
    """Past max_model_points the models see a subset; proposals stay in the box, new, and
    the same for the same seed."""
    from search.controller import build_problem
    from search.strategies import STRATEGIES, TrialResult
    from search.workers import TrialTask, TrialWorker

    cfg = _digits_cfg("mobo", 200, {"max_model_points": 24, "max_fit_points": 16, "n_candidates": 128})
    worker = TrialWorker(cfg.to_yaml(), str(cfg.base_dir), "t")

    def run() -> list[np.ndarray]:
        s = STRATEGIES.get("mobo")(build_problem(worker.space, cfg), cfg.strategy.options, seed=0)
        xs: list[np.ndarray] = []
        for _ in range(6):
            cands = s.ask(8)
            xs += [c.x.copy() for c in cands]
            res = [worker.run(TrialTask(i, c.x.tolist())) for i, c in enumerate(cands)]
            s.tell([TrialResult(c, np.asarray(r.values), None, None, dict(r.margins)) for c, r in zip(cands, res, strict=True)])
        return xs

    a, b = run(), run()
    assert len(a) == 48 and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert len({tuple(np.round(x, 9)) for x in a}) == 48
    assert all(np.all(x >= worker.space.lower) and np.all(x <= worker.space.upper) for x in a)


# ----------------------------------------------------------------------------- a server database
@pytest.fixture(scope="module")
def postgres_url() -> Any:
    """A PostgreSQL server started for these tests (skipped where psycopg or the server
    binaries are missing); as root it runs as the ``postgres`` user, as PostgreSQL requires."""
    import glob
    import os
    import shutil
    import socket
    import subprocess
    import tempfile

    pytest.importorskip("psycopg")
    bindirs = sorted(glob.glob("/usr/lib/postgresql/*/bin")) + [os.path.dirname(shutil.which("initdb") or "")]
    bindir = next((b for b in bindirs if b and os.path.exists(os.path.join(b, "initdb"))), None)
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb) here")
    user: dict[str, int] = {}
    data = Path(tempfile.mkdtemp(prefix="ms-pg-", dir="/tmp"))
    if os.geteuid() == 0:
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run the server as")
        os.chown(data, pw.pw_uid, pw.pw_gid)
        user = {"user": pw.pw_uid, "group": pw.pw_gid}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pg = data / "db"
    subprocess.run([f"{bindir}/initdb", "-D", str(pg), "-A", "trust", "-U", "ms"], check=True, capture_output=True, **user)  # type: ignore[call-overload]
    subprocess.run([f"{bindir}/pg_ctl", "-D", str(pg), "-w", "-l", str(data / "log"), "-o",
                    f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True, **user)  # type: ignore[call-overload]
    try:
        yield f"postgresql+psycopg://ms@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([f"{bindir}/pg_ctl", "-D", str(pg), "-m", "immediate", "stop"], capture_output=True, **user)  # type: ignore[call-overload]
        shutil.rmtree(data, ignore_errors=True)


def test_a_role_that_does_not_own_the_tables_opens_a_postgresql_store(postgres_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """On PostgreSQL, creating an index needs table ownership (even with IF NOT EXISTS): a role
    that may read and write a store it does not own opens it for writing with one warning per
    index it cannot add, and works; once the owner has added them it opens without a word."""
    import sqlalchemy as sa

    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql("CREATE DATABASE owned")
        c.exec_driver_sql("CREATE ROLE rw LOGIN")
    admin.dispose()
    url = postgres_url.rsplit("/", 1)[0] + "/owned"
    Store.open(url).close()
    owner = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with owner.connect() as c:
        for ix in ("ix_trial_values_split", "ix_trials_study_id_id"):  # a store made before them
            c.exec_driver_sql(f"DROP INDEX {ix}")
        c.exec_driver_sql("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO rw")
        c.exec_driver_sql("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO rw")
    owner.dispose()
    rw = url.replace("://ms@", "://rw@")
    with caplog.at_level("WARNING", logger="search.store"):
        st = Store.open(rw)
    warned = sorted(r.getMessage() for r in caplog.records if r.name == "search.store")
    assert len(warned) == 2 and all("must be owner" in m and "dashboard polls will scan" in m for m in warned), warned
    assert "could not add index ix_trial_values_split" in warned[0] and "could not add index ix_trials_study_id_id" in warned[1]
    try:
        s = st.create_study("rw", "name: rw\n", "sha", [("a", "maximize")], {"names": ["w0"]})
        tid = st.add_trial(s.id, 0, {"id": 0}, {"w0": 0.5}, "random")
        st.finish_trial(tid, COMPLETE, [0.5])
        st.add_heldout(tid, [0.4])
        assert st.trials(s.id)[0].heldout == [0.4]
    finally:
        st.close()
    Store.open(url).close()  # the owner adds them
    caplog.clear()
    with caplog.at_level("WARNING", logger="search.store"):
        Store.open(rw).close()
    assert [r for r in caplog.records if r.name == "search.store"] == []


def test_a_simulated_run_on_postgresql_matches_the_sqlite_run(postgres_url: str, digits_zoo: Path, tmp_path: Path) -> None:
    """The store reached through SQLAlchemy on a PostgreSQL server records the same run as
    SQLite: same trials, values, workers and attempts for the seed (preemptions included)."""
    cfg = _digits_cfg("nsga2", 60, {"pop_size": 8})
    sim = SimSettings(workers=16, preempt_rate=0.1, seed=5)
    pg = simulate(cfg, sim, postgres_url)
    lite = simulate(cfg, sim, str(tmp_path / "l.db"))
    assert pg.rc == lite.rc == 0 and pg.timeline == lite.timeline
    st = Store.open(postgres_url, readonly=True)
    try:
        pg_trials = st.trials(st.study("digits").id)
    finally:
        st.close()
    assert _fingerprint(pg_trials) == _fingerprint(_stored(tmp_path / "l.db"))
    assert [t.number for t in pg_trials] == list(range(60)) and any(t.attempts > 1 for t in pg_trials)
