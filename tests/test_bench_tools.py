"""The bench scripts' helpers that decide what a reported number is made of: the run files that
let several processes fill one pooled front (``bench_strategies.py --runs-dir``), and the
item-response fit of ``bench_value_models.py``."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    """Import a bench script as a module; what its top level sets for a bench process (thread
    and hub environment variables, sys.path) is put back, so later tests run as before."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    env, path = dict(os.environ), list(sys.path)
    sys.path.insert(0, str(BENCH))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path[:] = path
        os.environ.clear()
        os.environ.update(env)
    return mod


@pytest.fixture(scope="module")
def bs():
    return _load("bench_strategies")


def _run(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"X": rng.random((n, 4)), "V": rng.random((n, 2)), "failed": 1, "seconds": 2.5, "strategy_s": 0.5, "eval_s": 2.0}


def test_saved_runs_load_back_only_for_their_setup_and_join_the_pool(bs, tmp_path: Path) -> None:
    cfg = {"name": "p", "merge": {"method": "ties"}}
    setup = bs.run_setup(cfg, 30, 2)
    run = _run(30, 0)
    bs.save_run(tmp_path, "p", "optuna:sampler=tpe@schedule:2", 3, run, "optuna:sampler=tpe@schedule:2", "schedule:2", setup)
    assert not list(tmp_path.rglob("*.part"))  # written whole, then renamed
    back = bs.load_run(tmp_path, "p", "optuna:sampler=tpe@schedule:2", 3, setup)
    assert back is not None and back["cached"]
    np.testing.assert_array_equal(back["X"], run["X"])
    np.testing.assert_array_equal(back["V"], run["V"])
    assert (back["name"], back["gran"], back["seed"], back["failed"]) == ("optuna:sampler=tpe@schedule:2", "schedule:2", 3, 1)
    # another budget (mobo's and map's designs depend on it), config or worker count: not this run
    for other in (bs.run_setup(cfg, 20, 2), bs.run_setup({**cfg, "merge": {"method": "linear"}}, 30, 2), bs.run_setup(cfg, 30, 4)):
        assert bs.load_run(tmp_path, "p", "optuna:sampler=tpe@schedule:2", 3, other) is None
    assert bs.load_run(tmp_path, "p", "optuna:sampler=tpe@schedule:2", 4, setup) is None  # another seed
    assert bs.load_run(tmp_path, "q", "optuna:sampler=tpe@schedule:2", 3, setup) is None  # another problem
    # another process's runs: those of this setup not already in hand; a reference run of any budget
    bs.save_run(tmp_path, "p", "mobo@layer", 0, _run(30, 1), "mobo", "layer", setup)
    bs.save_run(tmp_path, "p", "mobo@layer", 1, _run(10, 2), "mobo", "layer", bs.run_setup(cfg, 10, 2))  # another budget
    bs.save_run(tmp_path, "p", "reference:nsga2@layer", 0, _run(80, 3), "reference:nsga2", "layer", bs.run_setup(cfg, 80, 2))
    (tmp_path / "p" / "broken_s0.npz").write_bytes(b"PK\x03\x04 not a whole file")  # a damaged file is skipped
    got = {(name, seed): (len(r["V"]), gran) for name, seed, r, gran in bs.other_runs(tmp_path, "p", {("mobo", 0)}, setup)}
    assert got == {("optuna:sampler=tpe@schedule:2", 3): (30, "schedule:2"), ("reference:nsga2", 0): (80, "layer")}


def test_item_response_fit_recovers_the_probabilities_it_was_drawn_from() -> None:
    vm = _load("bench_value_models")
    rng = np.random.default_rng(0)
    T, N, d = 120, 150, 2
    theta, a, b = rng.normal(size=(T, d)), rng.normal(size=(N, d)) * 1.5, rng.normal(size=N)
    P = 1.0 / (1.0 + np.exp(-(theta @ a.T + b)))
    Y = (rng.random((T, N)) < P).astype(np.float64)
    th, a_hat, b_hat = vm.fit_irt(Y, d=3)
    P_hat = 1.0 / (1.0 + np.exp(-(th @ a_hat.T + b_hat)))
    # the fitted probabilities track the true ones far better than the 0/1 draws do
    assert np.corrcoef(P_hat.ravel(), P.ravel())[0, 1] > 0.85
    assert np.abs(P_hat - P).mean() < 0.5 * np.abs(Y - P).mean()


def test_fidelity_bench_tinylm_problem_has_n_new_prompts_per_task_and_validates(tmp_path: Path) -> None:
    """``bench_fidelity.py --tinylm N``: N distinct generated prompts per task, none of them a
    shipped validation or test prompt (the held-out split stays unseen), the same bytes when
    written again, and a config that `search validate` accepts with fidelity on."""
    import json

    from search.config import parse_config
    from search.validation import check_config
    from search.zoo.tiny_lm import _heldout_prompts

    bf = _load("bench_fidelity")
    path, cfg = bf.tinylm_problem(60, tmp_path / "t60")
    shipped = _heldout_prompts()
    for o in cfg["objectives"]:
        rows = [json.loads(x) for x in (tmp_path / "t60" / f"{o['name']}_validation.jsonl").read_text().splitlines()]
        prompts = [r["prompt"] for r in rows]
        assert len(prompts) == 60 == len(set(prompts))
        assert not set(prompts) & shipped
        assert o["settings"]["tasks"] == [f"tinylm60_{o['name']}"] and o["settings"]["limit"] is None
        assert o["heldout"]["tasks"] == [f"tinylm_{o['name']}_test"]
    before = {p.name: p.read_bytes() for p in (tmp_path / "t60").iterdir()}
    bf.tinylm_problem(60, tmp_path / "t60")
    assert {p.name: p.read_bytes() for p in (tmp_path / "t60").iterdir()} == before
    cfg["fidelity"] = {"levels": [0.1, 0.3, 1.0]}
    issues = check_config(parse_config(cfg).with_base_dir(path.parent))
    assert issues == [], issues
    with pytest.raises(SystemExit, match="add task has only about"):  # two-digit additions: 10,000 prompts
        bf.tinylm_problem(12000, tmp_path / "too-many")


def test_fidelity_bench_reuses_a_store_only_for_the_same_finished_run(tmp_path: Path, monkeypatch) -> None:
    """``bench_fidelity.py --reuse``: a finished run with the same config identity and budget is
    read back (trial for trial). Another seed, budget, fidelity section, objective or strategy
    option, or a run that did not finish, stops the bench with one line naming the store, and
    the store is left as it was (never replaced)."""
    import copy

    import yaml

    bf = _load("bench_fidelity")
    root = Path(__file__).resolve().parents[1] / "configs"
    cfg = yaml.safe_load((root / "digits3.yaml").read_text())
    cfg.update(name="reuse", strategy={"name": "random", "budget": 4, "options": {}},
               workers={"backend": "local", "count": 1}, fidelity={"levels": [0.3, 1.0], "z": 1.0, "rule": "paired", "epsilon": 0.0})
    store = tmp_path / "reuse.db"
    first = bf.run_store(cfg, root, store)
    assert len(first) == 4

    import search.controller

    def no_launch(*a, **k):
        raise AssertionError("launched again")

    monkeypatch.setattr(search.controller, "launch", no_launch)
    again = bf.run_store(cfg, root, store, reuse=True)
    assert [(t.number, t.state, t.values) for t in again] == [(t.number, t.state, t.values) for t in first]
    held = store.read_bytes()
    other_obj = copy.deepcopy(cfg["objectives"])
    other_obj[0]["settings"]["labels"] = [0, 1, 2]
    for change, says in (({"seed": 1}, "another config"),
                         ({"strategy": {"name": "random", "budget": 5, "options": {}}}, "budget 4, not 5"),
                         ({"strategy": {"name": "random", "budget": 4, "options": {"include_seeds": True}}}, "another config"),
                         ({"fidelity": {"levels": [0.5, 1.0], "z": 1.0, "rule": "paired", "epsilon": 0.0}}, "another config"),
                         ({"objectives": other_obj}, "another config")):
        other = {**copy.deepcopy(cfg), **change}
        with pytest.raises(SystemExit) as e:
            bf.run_store(other, root, store, reuse=True)
        assert str(store) in str(e.value) and says in str(e.value), (change, str(e.value))
    from search.store import Store

    st = Store.open(str(store))
    st.set_status(st.study("reuse").id, "interrupted")
    st.close()
    with pytest.raises(SystemExit, match="status 'interrupted'"):
        bf.run_store(cfg, root, store, reuse=True)
    assert store.exists() and len(store.read_bytes()) == len(held)


def test_fidelity_estimators_anchor_is_exact_when_examples_repeat_the_same_patterns() -> None:
    """``bench_fidelity_estimators.py``: when every example behaves like one of a few kinds
    across the trials, one anchor per kind (weighted by the kind's share) gives every later
    trial's full-set accuracy exactly; the seeded subset mean does not."""
    be = _load("bench_fidelity_estimators")
    rng = np.random.default_rng(0)
    kinds = rng.integers(0, 4, size=200)  # 4 kinds of example, in unequal shares
    T = 30
    per_kind = rng.random((T, 4)) < np.array([0.2, 0.5, 0.7, 0.9])
    Y = per_kind[:, kinds].astype(np.float64)
    idx, w = be.anchors(Y[:10], 8, seed=0)
    assert len(idx) <= 8 and abs(w.sum() - 1.0) < 1e-12
    err = be.estimate_run(Y, [0.04], history=10, refit=5, neighbours=3, seed=0, irt_dim=1)["0.04"]
    assert len(err["anchor"]) == len(err["subset"]) == T - 10
    assert max(err["anchor"]) < 1e-12 < np.mean(err["subset"])
