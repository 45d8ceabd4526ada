"""Multi-fidelity: nested seeded subsets, promotion of only new examples, the front rule,
validation, and kill -9 mid-promotion.

The end-to-end runs use the toy problem (tests/toy_problem.py) with ``example_closeness``
objectives: a closeness to each expert scored as an accuracy over 200 examples (python
evaluator with ``n_examples``), through real controllers, workers and SQLite stores.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from search.controller import launch, resume
from search.fidelity import (
    Examples,
    combine,
    epsilons,
    level_indices,
    level_sizes,
    new_indices,
    optimistic,
    paired_stop,
    promote,
    standard_error,
    stitch,
)
from search.pareto import front_numbers
from search.report import load_run
from search.store import COMPLETE, STOPPED, Store
from tests.toy_problem import fidelity_config

REPO = Path(__file__).resolve().parents[1]
LEVELS = [0.1, 0.3, 1.0]


def _write(tmp_path: Path, cfg: dict, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg))
    return p


# ----------------------------------------------------------------------------- subsets and maths


def test_subsets_are_nested_and_reproducible_for_a_seed() -> None:
    sizes = [37, 50, 13]
    for by_count, levels in ((False, [0.05, 0.1, 0.3, 0.7, 1.0]), (True, [5.0, 20.0, 60.0, math.inf])):
        prev: set[int] = set()
        for k, lv in enumerate(levels):
            idx = level_indices(lv, sizes, 7, "acc", by_count)
            assert np.array_equal(idx, level_indices(lv, sizes, 7, "acc", by_count))  # same seed, same subset
            assert np.all(np.diff(idx) > 0)  # sorted, no repeats
            assert prev <= set(idx.tolist())  # nested
            assert len(idx) == sum(level_sizes(lv, sizes, by_count))
            new = new_indices(levels, k, sizes, 7, "acc", by_count)
            assert set(new.tolist()) == set(idx.tolist()) - prev  # a level adds exactly what the one below lacks
            prev = set(idx.tolist())
        assert prev == set(range(sum(sizes)))  # the last level is everything
    # every group gets its share (and at least one example), so a task is never left out
    idx = level_indices(0.1, sizes, 7, "acc")
    assert [int(((idx >= a) & (idx < a + n)).sum()) for a, n in zip([0, 37, 87], sizes, strict=True)] == [4, 5, 2]
    # another seed or another objective: another subset
    assert not np.array_equal(level_indices(0.3, sizes, 8, "acc"), level_indices(0.3, sizes, 7, "acc"))
    assert not np.array_equal(level_indices(0.3, sizes, 7, "other"), level_indices(0.3, sizes, 7, "acc"))


def test_stitching_combining_and_the_promotion_rule() -> None:
    a = Examples.of([5, 1], [1.0, 0.0], margin=[0.3, -0.1])
    b = Examples.of([0, 3], [1.0, 1.0], margin=[0.2, 0.4])
    s = stitch([a, b])
    assert s.index.tolist() == [0, 1, 3, 5] and s.value.tolist() == [1.0, 0.0, 1.0, 1.0] and s.margin.tolist() == [0.2, -0.1, 0.4, 0.3]
    with pytest.raises(ValueError, match="twice"):
        stitch([a, Examples.of([5], [1.0])])
    # mean of group means; token-weighted mean and its exp; max
    g = Examples.of([0, 1, 2], [1.0, 0.0, 1.0], group=[0, 0, 1])
    assert combine(g) == pytest.approx(0.75)
    w = Examples.of([0, 1], [2.0, 4.0], weight=[1.0, 3.0], combine="exp_mean")
    assert combine(w) == pytest.approx(math.exp(3.5))
    assert combine(Examples.of([0, 1], [3.0, 9.0], combine="max")) == 9.0
    # the standard error shrinks to 0 once every example is scored (finite population)
    part = Examples.of(range(20), [1.0] * 15 + [0.0] * 5)
    assert standard_error(part, [200]) > standard_error(part, [40]) > 0
    assert standard_error(Examples.of(range(40), [1.0] * 30 + [0.0] * 10), [40]) == 0.0
    assert math.isinf(standard_error(Examples.of([3], [1.0]), [100]))
    up = optimistic(part, [200], "maximize", 2.0)
    down = optimistic(part, [200], "minimize", 2.0)
    assert down < 0.75 < up
    assert optimistic(Examples.of([0], [5.0], combine="max"), [9], "minimize", 2.0) == 5.0
    assert optimistic(Examples.of([0], [5.0], combine="max"), [9], "maximize", 2.0) == math.inf
    front = np.array([[0.9, 0.9], [0.95, 0.5]])
    dirs = ["maximize", "maximize"]
    assert not promote([0.8, 0.85], front, dirs)  # dominated even optimistically: stops
    assert promote([0.99, 0.2], front, dirs) and promote([0.9, 0.9], front, dirs)  # could join (a tie is not dominated)
    assert promote([0.1, 0.1], np.zeros((0, 0)), dirs)  # no full-fidelity front yet: promote
    assert not promote([0.2, 0.1], np.array([[0.1, 0.05]]), ["minimize", "minimize"])
    # epsilon-dominance: a candidate that could beat the front by at most eps counts as no better
    assert promote([0.91, 0.85], front, dirs) and not promote([0.91, 0.85], front, dirs, eps=[0.02, 0.02])
    assert epsilons(front, 0.1) == pytest.approx([0.005, 0.04])


def test_the_paired_rule_judges_on_the_same_examples() -> None:
    """Paired: a candidate is stopped when a full-fidelity trial beats it on the examples both
    scored, with confidence; differences on shared examples are far tighter than two intervals."""
    n, sizes = 400, [[400], [400]]
    rng = np.random.default_rng(0)
    base = (rng.random((2, n)) < 0.8).astype(float)
    full = [Examples.of(range(n), base[j]) for j in range(2)]
    vals = [float(base[j].mean()) for j in range(2)]
    idx = level_indices(0.1, [n], 0, "o")
    worse = base.copy()
    for j, k in ((0, 60), (1, 40)):  # 15 and 10 points worse, on examples the other trial gets right
        worse[j, rng.choice(np.flatnonzero(base[j] == 1), k, replace=False)] = 0.0
    cand = [Examples.of(idx, worse[j][idx]) for j in range(2)]
    dirs = ["maximize", "maximize"]
    assert paired_stop(cand, sizes, dirs, 2.0, [(vals, full)])
    # the independent rule cannot separate them on 40 examples: both intervals overlap
    opt = [optimistic(c, sz[0:1], d, 2.0) for c, sz, d in zip(cand, sizes, dirs, strict=True)]
    assert promote(opt, np.array([vals]), dirs)
    same = [Examples.of(idx, base[j][idx]) for j in range(2)]  # identical answers: it could still be (a little) better
    assert not paired_stop(same, sizes, dirs, 2.0, [(vals, full)])
    assert paired_stop(same, sizes, dirs, 2.0, [(vals, full)], eps=[0.05, 0.05])  # ... by less than eps
    better = base.copy()
    better[1, rng.choice(np.flatnonzero(base[1] == 0), 40, replace=False)] = 1.0
    assert not paired_stop([Examples.of(idx, better[j][idx]) for j in range(2)], sizes, dirs, 2.0, [(vals, full)])


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def fid_run(toy_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 24-trial random-search run with levels 0.1 / 0.3 / 1.0 (z = 1), every evaluator call logged."""
    d = tmp_path_factory.mktemp("fid")
    log = d / "examples.jsonl"
    os.environ["TOY_EXAMPLES_LOG"] = str(log)
    try:
        cfg = fidelity_config(toy_root, name="fid", budget=24, strategy="random", z=1.0, store=str(d / "run.db"))
        assert launch(str(_write(d, cfg))) == 0
    finally:
        del os.environ["TOY_EXAMPLES_LOG"]
    st = Store.open(str(d / "run.db"), readonly=True)
    try:
        sid = st.study("fid").id
        out = {"trials": st.trials(sid), "levels": st.trial_levels(sid), "arrays": st.trial_arrays(sid), "store": d / "run.db",
               "calls": [json.loads(ln) for ln in log.read_text().splitlines()]}
    finally:
        st.close()
    return out


def test_a_promotion_scores_only_new_examples_and_stitches_them_in_order(fid_run: dict[str, Any]) -> None:
    trials, levels = fid_run["trials"], fid_run["levels"]
    states = {t.state for t in trials}
    assert states == {COMPLETE, STOPPED}, states  # some stopped at a low level, some reached the full set
    assert any(t.level == 2 for t in trials) and any(t.state == STOPPED and t.level == 0 for t in trials)
    per_obj_rows = {0: 0, 1: 0}
    for t in trials:
        rows = levels[t.number]
        assert sorted({r.level for r in rows}) == list(range(t.level + 1))  # every level it reached, no other
        for j, name in enumerate(("near_a", "near_b")):
            mine = [r for r in rows if r.objective_idx == j]
            seen: set[int] = set()
            for r in sorted(mine, key=lambda r: r.level):
                idx = r.array[:, 0].astype(int)
                assert not seen & set(idx.tolist())  # a promotion scores only examples not scored before
                seen |= set(idx.tolist())
                assert seen == set(level_indices(LEVELS[r.level], [200], 0, name).tolist())
                per_obj_rows[j] += len(idx)
            assert t.examples[j] == len(seen)
            ex = stitch([Examples.from_array(r.array, r.combine) for r in mine])
            assert ex.index.tolist() == sorted(seen)  # stitched in dataset order
            values = t.values if t.state == COMPLETE else t.low_values
            assert values[j] == combine(ex)
            if t.state == COMPLETE:  # the full set: per-example scores and margins in dataset order
                ps = fid_run["arrays"][t.number][0][f"{name}/examples"]
                assert len(ps) == 200 and np.array_equal(ps, ex.value.astype(np.float32))
                assert np.array_equal(fid_run["arrays"][t.number][1][j], ex.margin)
    # the evaluator was called with exactly those examples, each once per trial (held-out calls score 400)
    called = {"expert_a": 0, "expert_b": 0}
    for c in fid_run["calls"]:
        if c["n"] == 200:
            called[c["expert"]] += len(c["examples"])
    assert called == {"expert_a": per_obj_rows[0], "expert_b": per_obj_rows[1]}
    assert sum(per_obj_rows.values()) < 2 * 200 * len(trials)  # fidelity saved examples


def test_a_stopped_candidate_never_enters_the_front(fid_run: dict[str, Any]) -> None:
    trials = fid_run["trials"]
    stopped = [t for t in trials if t.state == STOPPED]
    assert stopped and all(t.values is None and t.low_values is not None and t.heldout is None for t in stopped)
    data = load_run("fid", str(fid_run["store"]))
    on_front = set(data.front) | set(front_numbers(trials, ["maximize", "maximize"]))
    assert on_front and not on_front & {t.number for t in stopped}
    assert all(t.heldout for t in trials if t.number in data.front)  # held-out re-scoring as before
    con = sqlite3.connect(fid_run["store"])
    splits = dict(con.execute("SELECT t.state, GROUP_CONCAT(DISTINCT v.split) FROM trials t JOIN trial_values v ON v.trial_id = t.id "
                              "GROUP BY t.state").fetchall())
    con.close()
    assert splits[STOPPED] == "low" and "low" not in splits[COMPLETE]


def test_subset_values_better_than_the_whole_front_stay_off_it(fid_run: dict[str, Any], tmp_path: Path) -> None:
    """A stopped trial whose subset values beat every full-fidelity trial: not on the front
    (report, `search front --json`), and not in the front promotion compares with."""
    import shutil

    from search.promotion import full_front
    from search.strategies import Candidate, TrialResult

    store = tmp_path / "copy.db"
    shutil.copy(fid_run["store"], store)
    st = Store.open(str(store))
    try:
        sid = st.study("fid").id
        n = max(t.number for t in st.trials(sid)) + 1
        tid = st.add_trial(sid, n, {"x": [0.5] * 4, "id": 10_000}, {}, "random")
        st.finish_trial(tid, STOPPED, values=[1.0, 1.0], level=0, examples_=[20, 20])
    finally:
        st.close()
    data = load_run("fid", str(store))
    assert data.trial(n).low_values == [1.0, 1.0] and n not in data.front and data.front
    proc = subprocess.run([sys.executable, "-m", "search", "front", "fid", "--store", str(store), "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and n not in [m["number"] for m in json.loads(proc.stdout)["front"]]
    c = Candidate(np.zeros(4), 0)
    results = {0: TrialResult(c, np.array([0.5, 0.5])), 1: TrialResult(c, np.array([1.0, 1.0]), fidelity=0.1, value_se=np.zeros(2))}
    assert full_front(results).tolist() == [[0.5, 0.5]]


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("fidelity,where,what", [
    ({"levels": [0.3, 0.1, 1.0]}, "fidelity.levels", "must increase"),
    ({"levels": [0.1, 1.5]}, "fidelity.levels", "above 1"),
    ({"levels": [0.0, 0.5]}, "fidelity.levels", "above 0"),
    ({"counts": [50, 20]}, "fidelity.counts", "must increase"),
    ({"levels": [0.1], "counts": [10]}, "fidelity", "exactly one of"),
    ({"levels": [0.1], "z": -1}, "fidelity.z", "greater than or equal to 0"),
    ({"levels": [0.1], "rule": "pairs"}, "fidelity.rule", "'paired' or 'independent'"),
])
def test_bad_fidelity_settings_give_one_line(fidelity: dict, where: str, what: str, toy_root: Path, tmp_path: Path) -> None:
    cfg = fidelity_config(toy_root, name="bad")
    cfg["fidelity"] = fidelity
    _assert_one_line(_write(tmp_path, cfg), where, what)


def test_fidelity_with_an_evaluator_that_cannot_subset_is_refused(toy_root: Path, tmp_path: Path) -> None:
    cfg = fidelity_config(toy_root, name="bad")
    del cfg["objectives"][1]["settings"]["n_examples"]
    _assert_one_line(_write(tmp_path, cfg), "objectives[1].settings.n_examples", "fidelity needs the number of examples")


def _assert_one_line(path: Path, where: str, what: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "search", "validate", str(path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if where + ":" in ln]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(lines) == 1 and what in lines[0], proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- resume


def _store_rows(store: Path) -> dict[str, list[Any]]:
    """What must match between two stores: trials (state, candidate, level, examples), their
    values, per-level per-example results, per-example scores, margins and the strategy log."""
    con = sqlite3.connect(store)
    try:
        q = {
            "trials": "SELECT number, state, candidate_json, level, examples_json, error FROM trials ORDER BY number",
            "values": "SELECT t.number, v.objective_idx, v.split, v.value FROM trial_values v JOIN trials t ON t.id = v.trial_id "
                      "ORDER BY 1, 2, 3",
            "levels": "SELECT t.number, e.objective_idx, e.level, e.combine, e.sizes_json, e.blob FROM trial_examples e "
                      "JOIN trials t ON t.id = e.trial_id ORDER BY 1, 2, 3",
            "per_sample": "SELECT t.number, p.name, p.blob FROM per_sample p JOIN trials t ON t.id = p.trial_id ORDER BY 1, 2",
            "margins": "SELECT t.number, m.objective_idx, m.blob FROM margins m JOIN trials t ON t.id = m.trial_id ORDER BY 1, 2",
            "events": "SELECT seq, kind, payload_json FROM strategy_events ORDER BY seq",
        }
        return {k: con.execute(v).fetchall() for k, v in q.items()}
    finally:
        con.close()


@pytest.mark.parametrize("strategy,point", [("nsga2", "promoted:3"), ("mobo", "promoted:7")])
def test_kill_9_during_a_promotion_then_resume_gives_the_uninterrupted_store(strategy: str, point: str, toy_root: Path,
                                                                            tmp_path: Path) -> None:
    """One worker: a controller SIGKILLed right after recording a promotion (its next level not
    yet run) resumes without losing or repeating a per-example result, and ends with the store
    an uninterrupted run writes (trials, levels, per-example results, values, strategy log)."""
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    ref_dir.mkdir()
    cut_dir.mkdir()
    kw = dict(name="fr", budget=14, strategy=strategy, z=1.0)
    assert launch(str(_write(ref_dir, fidelity_config(toy_root, store=str(ref_dir / "run.db"), **kw)))) == 0
    path = _write(cut_dir, fidelity_config(toy_root, store=str(cut_dir / "run.db"), **kw))
    code = f"import sys\nfrom search.cli import main\nsys.exit(main(['launch', {str(path)!r}]))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, MERGESEARCH_CRASH_AT=point),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == -9, proc.stderr[-3000:]
    st = Store.open(str(cut_dir / "run.db"), readonly=True)
    try:
        sid = st.study("fr").id
        mid = [t for t in st.trials(sid) if t.state == "RUNNING" and t.level is not None]
        levels_before = st.trial_levels(sid)
    finally:
        st.close()
    assert mid, "the kill did not land in a promotion"
    assert resume("fr", store=str(cut_dir / "run.db")) == 0
    got, want = _store_rows(cut_dir / "run.db"), _store_rows(ref_dir / "run.db")
    for key in want:
        assert got[key] == want[key], key
    st = Store.open(str(cut_dir / "run.db"), readonly=True)
    try:
        after = st.trial_levels(st.study("fr").id)
    finally:
        st.close()
    for t in mid:  # the levels recorded before the kill were kept, and the next one was added once
        n_before = len(levels_before[t.number])
        assert [(r.level, r.objective_idx) for r in after[t.number][:n_before]] == [(r.level, r.objective_idx) for r in levels_before[t.number]]


# ----------------------------------------------------------------------------- older stores


def test_a_schema_2_store_is_read_and_upgraded_when_continued(toy_root: Path, tmp_path: Path) -> None:
    from tests.toy_problem import toy_config

    store = tmp_path / "old.db"
    cfg = toy_config(toy_root, name="old", budget=4, strategy="random", store=str(store))
    path = _write(tmp_path, cfg)
    assert launch(str(path)) == 0
    con = sqlite3.connect(store)  # what a schema-2 store looks like: no fidelity columns or table
    con.execute("DROP TABLE trial_examples")
    con.execute("ALTER TABLE trials DROP COLUMN level")
    con.execute("ALTER TABLE trials DROP COLUMN examples_json")
    con.execute("UPDATE schema_info SET value = '2'")
    con.execute("PRAGMA user_version = 2")
    con.commit()
    con.close()
    for cmd in (["status", "old", "--store", str(store)], ["front", "old", "--store", str(store)]):
        proc = subprocess.run([sys.executable, "-m", "search", *cmd], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    data = load_run("old", str(store))
    assert len(data.trials) == 4 and all(t.level is None and t.examples is None for t in data.trials)
    assert launch(str(path), budget=6) == 0  # continued exactly: the store is upgraded in place
    st = Store.open(str(store), readonly=True)
    try:
        assert st.version == 3
        trials = st.trials(st.study("old").id)
    finally:
        st.close()
    assert [t.number for t in trials] == list(range(6)) and all(t.state == COMPLETE for t in trials)
    assert [t.examples for t in trials[4:]] == [[None, None]] * 2  # the toy's python objectives count no examples


def test_status_shows_the_cost(fid_run: dict[str, Any]) -> None:
    trials = fid_run["trials"]
    proc = subprocess.run([sys.executable, "-m", "search", "status", "fid", "--store", str(fid_run["store"])], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, COLUMNS="250"))
    assert proc.returncode == 0, proc.stderr
    n_stopped = sum(t.state == STOPPED for t in trials)
    ex = [sum(t.examples[j] for t in trials) for j in (0, 1)]
    assert f"{n_stopped} stopped at a low fidelity level" in proc.stdout
    assert f"examples evaluated near_a={ex[0]}, near_b={ex[1]}" in proc.stdout
    per_level = {lv: sum(1 for t in trials if t.level == lv) for lv in (0, 1, 2)}
    assert "finished at fidelity level " + ", ".join(f"{k}: {n}" for k, n in per_level.items() if n) in proc.stdout


def test_fidelity_with_an_lm_eval_perplexity_is_refused(tmp_path: Path) -> None:
    """A token-aggregated lm-eval metric has no per-document scores in [0, 1]: refused before the run."""
    import json

    import yaml

    from search.config import parse_config
    from search.validation import check_config

    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ("12+34=46", "rev:ab=ba")))
    (tmp_path / "rolling.yaml").write_text(yaml.safe_dump({
        "task": "ms_rolling_probe", "dataset_path": "json", "validation_split": "validation",
        "dataset_kwargs": {"data_files": {"validation": str(tmp_path / "docs.jsonl")}},
        "output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "{{text}}",
        "metric_list": [{"metric": "word_perplexity"}, {"metric": "byte_perplexity"}, {"metric": "bits_per_byte"}],
    }))
    raw = {"name": "ppl", "models": {"base": "zoo:tiny-lm/base", "experts": [{"name": "add", "path": "zoo:tiny-lm/add"}]},
           "merge": {"method": "task_arithmetic", "search": {"weight": [0, 1]}},
           "objectives": [{"name": "ppl", "evaluator": "lm_eval", "direction": "minimize",
                           "settings": {"tasks": ["ms_rolling_probe"], "metric": "word_perplexity,none",
                                        "include_path": [str(tmp_path)]}}],
           "fidelity": {"levels": [0.3, 1.0]}}
    issues = [str(i) for i in check_config(parse_config(raw).with_base_dir(tmp_path), check_files=False)]
    assert issues == [
        "objectives[0].settings.metric: 'word_perplexity' has no per-document scores in [0, 1], so it cannot be scored on "
        "example subsets; remove the fidelity section or use an accuracy-like metric (acc, exact_match)"]
    del raw["fidelity"]
    assert check_config(parse_config(raw).with_base_dir(tmp_path), check_files=False) == []


def test_the_cluster_simulator_refuses_fidelity(toy_root: Path, tmp_path: Path) -> None:
    from search.config import parse_config
    from search.simulate import SimSettings, simulate

    cfg = parse_config(fidelity_config(toy_root, name="sim"))
    with pytest.raises(ValueError, match="does not model fidelity levels"):
        simulate(cfg, SimSettings(workers=2), str(tmp_path / "s.db"))
