"""`search launch` end to end on the toy problem: local and Ray workers, faults, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from search.controller import launch, resume
from search.errors import StoreError
from search.store import COMPLETE, FAIL, Store
from tests.toy_problem import toy_config

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, cfg: dict, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg))
    return p


def _trials(store_path: Path, run: str):
    st = Store.open(str(store_path), readonly=True)
    try:
        return st.trials(st.study(run).id, with_metrics=True)
    finally:
        st.close()


def test_local_search_fills_the_store(toy_root: Path, tmp_path: Path) -> None:
    store = tmp_path / "toy.db"
    cfg = toy_config(toy_root, budget=10, store=str(store))
    assert launch(str(_write(tmp_path, cfg))) == 0
    trials = _trials(store, "toy")
    assert [t.number for t in trials] == list(range(10))
    assert all(t.state == COMPLETE for t in trials)
    assert all(len(t.values) == 2 and all(0 <= v <= 1 for v in t.values) for t in trials)
    assert all(t.materialize_s is not None and t.evaluate_s is not None for t in trials)
    # params are stored by coordinate name
    assert set(trials[0].params) == {f"{g}/{e}/weight" for g in ("layers.00", "layers.01") for e in ("a", "b")}
    # held-out values exist for front members (near_b has held-out settings; near_a has none -> None)
    with_heldout = [t for t in trials if t.heldout]
    assert with_heldout, "front members were not re-evaluated on held-out settings"
    for t in with_heldout:
        assert t.heldout[0] is None and t.heldout[1] == pytest.approx(t.values[1])


def test_failing_and_nan_evaluations_are_recorded_and_the_run_goes_on(toy_root: Path, tmp_path: Path) -> None:
    store = tmp_path / "flaky.db"
    cfg = toy_config(toy_root, name="flaky", budget=16, function_a="tests.toy_problem:flaky", store=str(store))
    assert launch(str(_write(tmp_path, cfg))) == 0
    trials = _trials(store, "flaky")
    assert len(trials) == 16
    failed = [t for t in trials if t.state == FAIL]
    done = [t for t in trials if t.state == COMPLETE]
    assert failed and done
    assert len(failed) + len(done) == 16
    assert {"raise" if "refused" in t.error else "nan" for t in failed} == {"raise", "nan"}
    assert all(t.values is None for t in failed) and all(t.values is not None for t in done)


def test_second_controller_on_the_same_run_refuses(toy_root: Path, tmp_path: Path) -> None:
    store = tmp_path / "lock.db"
    path = _write(tmp_path, toy_config(toy_root, name="locked", budget=2, store=str(store)))
    assert launch(str(path)) == 0
    st = Store.open(str(store))
    st.acquire(st.study("locked").id, owner=f"{os.uname().nodename}:{os.getppid()}")  # a live process holds it
    with pytest.raises(StoreError, match="already being searched by process"):
        launch(str(path), budget=4)
    assert len(_trials(store, "locked")) == 2  # nothing written by the refused launch


def test_changed_config_is_refused_but_budget_may_grow(toy_root: Path, tmp_path: Path) -> None:
    store = tmp_path / "grow.db"
    cfg = toy_config(toy_root, name="grow", budget=3, store=str(store))
    assert launch(str(_write(tmp_path, cfg))) == 0
    assert launch(str(_write(tmp_path, cfg)), budget=5) == 0
    assert [t.number for t in _trials(store, "grow")] == [0, 1, 2, 3, 4]
    cfg["merge"]["search"] = {"weight": [0.0, 2.0]}
    with pytest.raises(StoreError, match=r"different config \(changed: merge.search.weight"):
        launch(str(_write(tmp_path, cfg)))


@pytest.mark.parametrize("strategy,sig", [("random", signal.SIGKILL), ("nsga2", signal.SIGKILL), ("cmaes", signal.SIGKILL),
                                          ("m2n2", signal.SIGKILL), ("mobo", signal.SIGKILL), ("mobo", signal.SIGINT),
                                          ("turbo", signal.SIGKILL)])
def test_kill_9_controller_then_resume_continues_exactly(strategy: str, sig: int, toy_root: Path, tmp_path: Path) -> None:
    """SIGKILL (or Ctrl-C) the controller mid-run; `search resume` loses nothing, retries the
    running trial, continues numbering, and proposes exactly what an uninterrupted run proposes."""
    budget = 14
    ref_store = tmp_path / "ref.db"
    ref = toy_config(toy_root, name="kill", budget=budget, strategy=strategy, store=str(ref_store))
    assert launch(str(_write(tmp_path, ref, "ref.yaml"))) == 0
    expected = {t.number: t.candidate["x"] for t in _trials(ref_store, "kill")}

    store = tmp_path / "kill.db"
    cfg = toy_config(toy_root, name="kill", budget=budget, strategy=strategy, store=str(store))
    path = _write(tmp_path, cfg)
    env = dict(os.environ, TOY_DELAY="0.25")
    proc = subprocess.Popen([sys.executable, "-m", "search", "launch", str(path)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if store.exists():
                done = [t for t in _trials(store, "kill") if t.state == COMPLETE] if _has_run(store) else []
                if len(done) >= 5:
                    break
            time.sleep(0.1)
        else:
            pytest.fail("controller made no progress")
        os.kill(proc.pid, sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = {t.number: t for t in _trials(store, "kill")}
    complete_before = {n for n, t in before.items() if t.state == COMPLETE}
    assert any(t.state == "RUNNING" for t in before.values()) or len(before) < budget

    assert resume("kill", store=str(store)) == 0
    after = {t.number: t for t in _trials(store, "kill")}
    assert sorted(after) == list(range(budget))
    assert all(t.state == COMPLETE for t in after.values())
    assert complete_before <= set(after)  # no completed trial lost ...
    for n in complete_before:  # ... or re-run
        assert after[n].attempts == 1 and after[n].values == before[n].values
    for n, x in expected.items():
        assert np.allclose(after[n].candidate["x"], x), f"trial {n} differs from the uninterrupted run"


def _has_run(store: Path) -> bool:
    try:
        st = Store.open(str(store), readonly=True)
    except Exception:
        return False
    try:
        return st.find_study("kill") is not None
    finally:
        st.close()


def test_ray_backend_two_workers(ray_local: None, toy_root: Path, tmp_path: Path) -> None:
    store = tmp_path / "ray.db"
    cfg = toy_config(toy_root, name="ray", budget=10, backend="ray", count=2, store=str(store),
                     extra_workers={"runtime_env": {"env_vars": {"TOY_DELAY": "0.5"}}})
    assert launch(str(_write(tmp_path, cfg))) == 0
    trials = _trials(store, "ray")
    assert len(trials) == 10 and all(t.state == COMPLETE for t in trials)
    assert len({t.worker.split("@")[0] for t in trials}) == 2, "both workers should have run trials"


def test_ray_worker_killed_mid_trial_is_retried(ray_local: None, toy_root: Path, tmp_path: Path) -> None:
    store = tmp_path / "rkill.db"
    marker = tmp_path / "marker"
    cfg = toy_config(toy_root, name="rkill", budget=6, backend="ray", count=2, function_a="tests.toy_problem:kill_once",
                     store=str(store), extra_workers={"runtime_env": {"env_vars": {"TOY_MARKER": str(marker), "TOY_ROOT": str(toy_root)}}})
    import threading

    result: dict[str, int] = {}
    th = threading.Thread(target=lambda: result.setdefault("rc", launch(str(_write(tmp_path, cfg)))), daemon=True)
    th.start()
    deadline = time.time() + 120
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert marker.exists(), "no worker reached the hanging trial"
    time.sleep(0.3)
    os.kill(int(marker.read_text()), signal.SIGKILL)
    th.join(timeout=180)
    assert result.get("rc") == 0
    trials = _trials(store, "rkill")
    assert len(trials) == 6 and all(t.state == COMPLETE for t in trials)
    retried = [t for t in trials if t.attempts > 1]
    # the killed trial, and possibly the one queued behind it on the same actor (depth 2)
    assert 1 <= len(retried) <= 2 and all(t.attempts == 2 for t in retried)


def test_hanging_evaluator_times_out_and_the_run_finishes(toy_root: Path, tmp_path: Path) -> None:
    store = tmp_path / "hang.db"
    cfg = toy_config(toy_root, name="hang", budget=8, function_a="tests.toy_problem:hang_some", store=str(store),
                     extra_workers={"trial_timeout": 4})
    assert launch(str(_write(tmp_path, cfg))) == 0
    trials = _trials(store, "hang")
    assert len(trials) == 8
    timed_out = [t for t in trials if t.state == FAIL]
    assert timed_out and all(t.error == "timed out after 4s" for t in timed_out)
    assert sum(t.state == COMPLETE for t in trials) == 8 - len(timed_out)


def test_runtime_env_working_dir_goes_to_the_job_and_resolves_against_the_config(tmp_path: Path) -> None:
    from search.workers import _split_runtime_env

    job, actor = _split_runtime_env({"working_dir": ".", "env_vars": {"A": "1"}}, str(tmp_path))
    assert job == {"working_dir": str(tmp_path.resolve())} and actor == {"env_vars": {"A": "1"}}
    assert _split_runtime_env({"env_vars": {"A": "1"}}, str(tmp_path)) == (None, {"env_vars": {"A": "1"}})
    assert _split_runtime_env(None, None) == (None, None)


def test_mobo_gets_the_classifiers_margins_through_the_controller(digits_zoo: Path, tmp_path: Path) -> None:
    """The classification evaluator's per-example margins reach the strategy: they are in the
    saved mobo state, one row per finished trial, and give each trial's accuracies back."""
    from search import statedata

    cfg = yaml.safe_load((REPO / "configs" / "digits.yaml").read_text())
    cfg["strategy"] = {"name": "mobo", "budget": 8}
    cfg["store"] = str(tmp_path / "digits.db")
    path = _write(tmp_path, cfg)
    assert launch(str(path)) == 0
    trials = _trials(tmp_path / "digits.db", "digits")
    st = Store.open(str(tmp_path / "digits.db"), readonly=True)
    try:
        snap = st.latest_snapshot(st.study("digits").id)
        state = statedata.decode(snap[2], snap[3])  # data only: JSON + arrays
    finally:
        st.close()
    assert len(state["M"]) == len(trials) == 8
    by_x = {tuple(np.round(t.candidate["x"], 12)): t.values for t in trials}
    for x, m in zip(state["X"], state["M"], strict=True):
        values = by_x[tuple(np.round(x, 12))]
        assert sorted(m) == [0, 1] and len(m[0]) + len(m[1]) == 359  # the validation split's 0-4s and 5-9s
        assert [float((m[j] > 0).mean()) for j in (0, 1)] == pytest.approx(values, abs=1e-7)
