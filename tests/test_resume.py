"""Resume loses nothing and a store never runs code.

Real controller processes are SIGKILLed at named points (``MERGESEARCH_CRASH_AT``: after an
ask, after its trials are recorded, after a tell, after it is recorded, mid held-out) with
several local workers, then resumed from their real SQLite store.
"""

from __future__ import annotations

import os
import pickle
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from search import statedata
from search.controller import launch, resume
from search.store import COMPLETE, Store
from search.strategies import STRATEGIES, Candidate, Strategy
from tests.toy_problem import toy_config

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, cfg: dict, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg))
    return p


def _read(store: Path, run: str) -> tuple[list[Any], Any, dict]:
    st = Store.open(str(store), readonly=True)
    try:
        sid = st.study(run).id
        snap = st.latest_snapshot(sid)
        return st.trials(sid), (statedata.decode(snap[2], snap[3]) if snap else None), st.trial_arrays(sid)
    finally:
        st.close()


def _digits(tmp_path: Path, workers: int, budget: int, strategy: str = "mobo") -> dict:
    cfg = yaml.safe_load((REPO / "configs" / "digits.yaml").read_text())
    cfg["strategy"] = {"name": strategy, "budget": budget}
    cfg["workers"] = {"backend": "local", "count": workers}
    cfg["store"] = str(tmp_path / "run.db")
    return cfg


def _launch_and_crash(path: Path, point: str, extra: str = "", **env: str) -> None:
    """Run `search launch` in a process that SIGKILLs itself at ``point``; its local workers
    notice and exit by themselves."""
    code = f"{extra}\nimport sys\nfrom search.cli import main\nsys.exit(main(['launch', {str(path)!r}]))"
    log = path.with_suffix(".log")
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, MERGESEARCH_CRASH_AT=point, **env),
                              stdout=f, stderr=subprocess.STDOUT, timeout=240)
    assert proc.returncode == -9, (point, proc.returncode, log.read_text()[-3000:])


@pytest.mark.parametrize("workers,point", [(2, "ask:3"), (3, "asked:2"), (2, "tell:4"), (3, "told:5"), (2, "heldout:1")])
def test_kill_9_at_any_point_with_several_workers_loses_nothing(workers: int, point: str, digits_zoo: Path, tmp_path: Path) -> None:
    """Nothing lost, no trial number or point repeated, every result kept with its margins, and
    the resumed mobo's state holds the margin model of every trial."""
    budget = 12
    cfg = _digits(tmp_path, workers, budget)
    path = _write(tmp_path, cfg)
    _launch_and_crash(path, point)
    store = tmp_path / "run.db"
    before, _, _ = _read(store, "digits")
    done_before = {t.number: t for t in before if t.state == COMPLETE}
    assert resume("digits", store=str(store)) == 0
    after, state, arrays = _read(store, "digits")
    assert [t.number for t in after] == list(range(budget)) and all(t.state == COMPLETE for t in after)
    xs = {tuple(np.round(t.candidate["x"], 10)) for t in after}
    assert len(xs) == budget  # no point evaluated twice
    for n, t in done_before.items():  # finished before the kill: kept, not re-run
        assert after[n].attempts == 1 and after[n].values == t.values
    for t in after:  # every trial's margins are in the store and give its accuracies back
        marg = arrays[t.number][1]
        assert sorted(marg) == [0, 1]
        assert [float((marg[j] > 0).mean()) for j in (0, 1)] == pytest.approx(t.values, abs=1e-7)
    assert len(state["M"]) == budget and all(m is not None and sorted(m) == [0, 1] for m in state["M"])
    st = Store.open(str(store), readonly=True)
    try:
        front = [t for t in st.trials(st.study("digits").id) if t.heldout]
    finally:
        st.close()
    assert front  # the held-out re-scoring finished after the resume


def test_resume_keeps_generation_margins_beside_an_objective_without(tiny_lm_zoo: Path, tmp_path: Path) -> None:
    """mobo on the tiny-lm zoo: exact-match generation with its teacher-forced margins (add)
    beside a perplexity (no margins); killed after a tell and resumed, every trial keeps its
    margins for the accuracy only and the resumed state models them."""
    (tmp_path / "text.txt").write_text("12+34=046\nrev:abc=cba\n07+45=052\n")
    cfg = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    cfg["objectives"] = [
        {"name": "add", "evaluator": "lm_eval", "direction": "maximize",
         "settings": {"tasks": ["tinylm_add"], "metric": "exact_match,none", "limit": 16}},
        {"name": "ppl", "evaluator": "perplexity", "direction": "minimize", "settings": {"path": "text.txt"}},
    ]
    cfg["merge"]["granularity"] = "global"
    cfg["strategy"] = {"name": "mobo", "budget": 8}
    cfg["store"] = str(tmp_path / "run.db")
    path = _write(tmp_path, cfg)
    _launch_and_crash(path, "told:5")
    assert resume("quickstart", store=str(tmp_path / "run.db")) == 0
    after, state, arrays = _read(tmp_path / "run.db", "quickstart")
    assert [t.number for t in after] == list(range(8)) and all(t.state == COMPLETE for t in after)
    for t in after:
        marg = arrays[t.number][1]
        assert sorted(marg) == [0] and len(marg[0]) == 16
        assert float((marg[0] > 0).mean()) == pytest.approx(t.values[0], abs=1e-7)
    assert len({t.values[0] for t in after}) > 1  # merges that differ in exact match
    assert all(m is not None and sorted(m) == [0] for m in state["M"])


@pytest.fixture(scope="module")
def uninterrupted(digits_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Any], Any]:
    """An uninterrupted single-worker mobo run on digits (30 trials; a snapshot after 25 tells)."""
    d = tmp_path_factory.mktemp("ref")
    assert launch(str(_write(d, _digits(d, 1, 30)))) == 0
    trials, state, _ = _read(d / "run.db", "digits")
    return trials, state


@pytest.mark.parametrize("point,budget", [("asked:5", None), ("told:27", None), ("told:6", 36)])
def test_single_worker_resume_after_kill_9_is_exact(point: str, budget: int | None, uninterrupted: tuple, tmp_path: Path) -> None:
    """One worker: the resumed run's trials are exactly the uninterrupted run's, values included:
    from the call log alone (early), from the snapshot after 25 tells plus the calls after it
    (late), and when the resume raises the budget (the calls replay with the first budget)."""
    expected, ref_state = uninterrupted
    path = _write(tmp_path, _digits(tmp_path, 1, 30))
    _launch_and_crash(path, point)
    assert resume("digits", store=str(tmp_path / "run.db"), budget=budget) == 0
    got, state, _ = _read(tmp_path / "run.db", "digits")
    assert [t.candidate["x"] for t in got[:30]] == [t.candidate["x"] for t in expected]
    assert [t.values for t in got[:30]] == [t.values for t in expected]
    if budget is None:
        assert np.array_equal(np.array(state["X"]), np.array(ref_state["X"])) and state["rng"] == ref_state["rng"]
    else:
        assert len(got) == budget and all(t.state == COMPLETE for t in got)


# ----------------------------------------------------------------------------- duplicates


class _Grid(Strategy):
    """Proposes each point of a 3-point grid twice in a row, round and round, then (after 12
    proposals) nothing more: most proposals are duplicates, some of running trials."""

    name = "grid3"

    def __init__(self, problem: Any, options: Any = None, seed: int = 0):
        super().__init__(problem, options, seed)
        self._i = 0
        self.told: list[tuple[int, tuple[float, ...] | None]] = []

    def ask(self, n: int) -> list[Candidate]:
        out = []
        for _ in range(min(n, 12 - self._i)):
            t = ((self._i // 2) % 3) / 2
            out.append(Candidate(self.problem.lower + t * (self.problem.upper - self.problem.lower), self._i))
            self._i += 1
        return out

    def tell(self, results: Any) -> None:
        self.told += [(r.candidate.id, None if r.values is None else tuple(r.values)) for r in results]


@pytest.fixture
def grid3():
    STRATEGIES.register("grid3", _Grid)
    yield
    STRATEGIES._entries.pop("grid3", None)


def _grid_cfg(toy_root: Path, tmp_path: Path, budget: int, workers: int) -> dict:
    cfg = toy_config(toy_root, name="dup", budget=budget, store=str(tmp_path / "dup.db"))
    cfg["merge"]["granularity"] = "global"
    cfg["strategy"] = {"name": "grid3", "budget": budget}
    cfg["workers"] = {"backend": "local", "count": workers}
    return cfg


def test_duplicates_are_told_the_earlier_result_and_never_evaluated_again(grid3: None, toy_root: Path, tmp_path: Path) -> None:
    """A strategy that repeats itself: 3 trials in the store, and every repeat (asked while its
    original runs, or after it finished) is told the original's values at no budget."""
    import search.controller as controller

    seen: list[_Grid] = []
    real = _Grid.tell

    def spy(self: _Grid, results: Any) -> None:  # observe the live instance, keep its behaviour
        if self not in seen:
            seen.append(self)
        real(self, results)

    _Grid.tell = spy  # type: ignore[method-assign]
    try:
        cfg = _grid_cfg(toy_root, tmp_path, budget=5, workers=2)
        assert controller.launch(str(_write(tmp_path, cfg))) == 0
    finally:
        _Grid.tell = real  # type: ignore[method-assign]
    trials, _, _ = _read(tmp_path / "dup.db", "dup")
    assert len(trials) == 3 and all(t.state == COMPLETE for t in trials)
    (s,) = seen
    assert sorted(cid for cid, _ in s.told) == list(range(12))  # every proposal told once ...
    value_of = {tuple(np.round(t.candidate["x"], 10)): tuple(t.values) for t in trials}
    for cid, v in s.told:  # ... with the values of the trial at its point
        assert v == value_of[tuple(np.round(np.full(len(trials[0].candidate["x"]), ((cid // 2) % 3) / 2), 10))]


def test_waiting_duplicates_survive_kill_9(toy_root: Path, tmp_path: Path) -> None:
    """Kill while duplicates wait on a running trial: after the resume they are told its result."""
    cfg = _grid_cfg(toy_root, tmp_path, budget=5, workers=2)
    path = _write(tmp_path, cfg)
    register = "from search.strategies import STRATEGIES\nfrom tests.test_resume import _Grid\nSTRATEGIES.register('grid3', _Grid)"
    # a proposal waits on its running original (slow trials: both workers are up before the first ends)
    _launch_and_crash(path, "waiting:1", extra=register, TOY_DELAY="3")
    st = Store.open(str(tmp_path / "dup.db"), readonly=True)
    events = st.events(st.study("dup").id)
    st.close()
    assert any("dup_of" in it for e in events if e.kind == "ask" for it in e.payload["items"])
    STRATEGIES.register("grid3", _Grid)
    try:
        assert resume("dup", store=str(tmp_path / "dup.db")) == 0
    finally:
        STRATEGIES._entries.pop("grid3", None)
    st = Store.open(str(tmp_path / "dup.db"), readonly=True)
    events = st.events(st.study("dup").id)
    trials = st.trials(st.study("dup").id)
    st.close()
    asked = {it["id"] for e in events if e.kind == "ask" for it in e.payload["items"]}
    told = [cid for e in events if e.kind == "tell" for cid, _ in e.payload["items"]]
    assert len(trials) == 3 and sorted(told) == list(range(12)) and asked == set(told)


# ----------------------------------------------------------------------------- a store is data


class _Evil:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_crafted_pickle_in_the_store_never_runs(toy_root: Path, tmp_path: Path) -> None:
    """Blobs anywhere a state lives (the old pickled-state table, the snapshot) never execute:
    on resume, status, front, or an older-schema store."""
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Evil(str(marker)))
    store = tmp_path / "s.db"
    cfg = toy_config(toy_root, name="ev", budget=4, strategy="random", store=str(store))
    path = _write(tmp_path, cfg)
    assert launch(str(path)) == 0
    con = sqlite3.connect(store)
    con.execute("UPDATE strategy_snapshots SET arrays = ?, state_json = ?", (evil, evil.decode("latin-1")))
    con.execute("CREATE TABLE strategy_state (study_id INTEGER, seq INTEGER, n_told INTEGER, blob BLOB, created_at FLOAT)")
    con.execute("INSERT INTO strategy_state VALUES (1, 1, 4, ?, 0)", (evil,))
    con.commit()
    con.close()
    assert launch(str(path), budget=6) == 0  # the bad snapshot is refused; the calls are replayed instead
    for cmd in (["status", "ev", "--store", str(store)], ["front", "ev", "--store", str(store)]):
        proc = subprocess.run([sys.executable, "-m", "search", *cmd], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    # an older store (schema 1) kept pickled states: never loaded, one line says how to go on
    con = sqlite3.connect(store)
    con.execute("UPDATE schema_info SET value = '1'")
    con.execute("DELETE FROM strategy_events")
    con.commit()
    con.close()
    proc = subprocess.run([sys.executable, "-m", "search", "launch", str(path), "--budget", "8"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("error")]
    assert proc.returncode == 2 and len(err) == 1 and "--replay" in err[0], proc.stderr
    assert resume("ev", store=str(store), budget=8, replay=True) == 0
    trials, _, _ = _read(store, "ev")
    assert [t.number for t in trials] == list(range(8)) and all(t.state == COMPLETE for t in trials)
    assert not marker.exists()


# ----------------------------------------------------------------------------- write volume


def test_state_writes_grow_linearly_with_the_run(toy_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bytes written for the strategy (call log + snapshots) per trial stay flat as a run grows:
    the log appends, and snapshots come at geometrically spaced points."""
    import search.controller as controller

    monkeypatch.setattr(controller, "SNAPSHOT_MIN_TELLS", 4)
    written: list[int] = []
    real_event, real_snap = Store._put_event, Store.save_snapshot

    def put_event(c: Any, study_id: int, ev: Any) -> None:
        written.append(len(str(ev.payload)))
        real_event(c, study_id, ev)

    def save_snapshot(self: Store, study_id: int, seq: int, n_told: int, text: str, arrays: bytes) -> None:
        written.append(len(text) + len(arrays))
        real_snap(self, study_id, seq, n_told, text, arrays)

    monkeypatch.setattr(Store, "_put_event", staticmethod(put_event))
    monkeypatch.setattr(Store, "save_snapshot", save_snapshot)
    per_trial = {}
    for n in (40, 160):
        written.clear()
        cfg = toy_config(toy_root, name=f"lin{n}", budget=n, strategy="mobo", store=str(tmp_path / f"{n}.db"))
        assert launch(str(_write(tmp_path, cfg, f"{n}.yaml"))) == 0
        per_trial[n] = sum(written) / n
    # mobo's snapshot holds every observation (O(n) bytes): one per trial would make the
    # per-trial volume grow 4x from 40 to 160 trials; geometric spacing keeps it nearly flat
    assert per_trial[160] < 1.6 * per_trial[40], per_trial
