"""Search strategies: one conformance suite over every registered strategy, plus per-strategy
checks on a cheap analytic two-objective problem with a known Pareto front.

The analytic problem ("two accuracies"): ``acc_i(x) = sigmoid(c - k (x - a_i)' W_i (x - a_i))``
in 4 dimensions on the box [0, 1.5]^4, maximised. Both are accuracy-like values in [0, 1].
The Pareto set is the curve ``x(t) = (t W_1 + (1-t) W_2)^-1 (t W_1 a_1 + (1-t) W_2 a_2)``;
the true hypervolume (reference point 0) comes from 4001 points on it.

Runs are driven like the controller drives them: a few workers, results coming back in a
random order, each free worker asking for one candidate.
"""

from __future__ import annotations

import dataclasses
import pickle
from types import SimpleNamespace

import numpy as np
import pytest

from search import statedata
from search.pareto import hypervolume, igd_plus, non_dominated_ranks, pareto_mask, to_minimization
from search.replay import clip_candidates, digest, replay
from search.strategies import STRATEGIES, Candidate, Objective, Problem, TrialResult, validate_options

ALL = STRATEGIES.names()
VALUE_BLIND = {"random", "sobol"}  # ignore results by design

# ----------------------------------------------------------------------------- problems

D = 4
_rng = np.random.default_rng(123)
A1 = _rng.uniform(0.1, 0.7, D)
A2 = _rng.uniform(0.8, 1.4, D)
A1[0], A2[0] = 1.2, 0.2
_Q1, _ = np.linalg.qr(_rng.normal(size=(D, D)))
_Q2, _ = np.linalg.qr(_rng.normal(size=(D, D)))
W1 = _Q1 @ np.diag(np.geomspace(1, 2, D)) @ _Q1.T
W2 = _Q2 @ np.diag(np.geomspace(1, 2, D)) @ _Q2.T


def _sig(t):
    return 1.0 / (1.0 + np.exp(-t))


def two_accuracies(x: np.ndarray) -> np.ndarray:
    q1 = (x - A1) @ W1 @ (x - A1)
    q2 = (x - A2) @ W2 @ (x - A2)
    return np.array([_sig(3 - 2 * q1), _sig(3 - 2 * q2)])


def _true_hv() -> float:
    ts = np.linspace(0, 1, 4001)
    P = [np.linalg.solve(t * W1 + (1 - t) * W2, t * W1 @ A1 + (1 - t) * W2 @ A2) for t in ts]
    return hypervolume(np.array([two_accuracies(x) for x in P]), ["maximize", "maximize"], [0, 0])


TRUE_HV = _true_hv()


def problem(budget: int = 60, objectives=None, lower=None, upper=None, dim: int = D) -> Problem:
    lo = np.zeros(dim) if lower is None else np.asarray(lower, dtype=float)
    hi = np.full(dim, 1.5) if upper is None else np.asarray(upper, dtype=float)
    experts = ["a", "b"]
    groups = dim // 2
    names = tuple(f"g{g}/{e}/weight" for g in range(groups) for e in experts)
    seeds = (
        ("expert:a", np.clip(np.tile([1.0, 0.0], groups), lo, hi)),
        ("expert:b", np.clip(np.tile([0.0, 1.0], groups), lo, hi)),
        ("base", np.clip(np.zeros(dim), lo, hi)),
        ("uniform", np.clip(np.full(dim, 0.5), lo, hi)),
    )
    return Problem(
        lower=lo,
        upper=hi,
        objectives=tuple(objectives or (Objective("acc_a"), Objective("acc_b"))),
        budget=budget,
        names=names,
        coord_group=np.repeat(np.arange(groups), 2),
        seeds=seeds,
        n_experts=2,
    )


# Unequal widths and a negative lower bound exercise per-coordinate scaling.
UNEVEN = dict(lower=[-0.5, 0.0, 0.2, 0.0], upper=[1.5, 1.0, 2.0, 1.5])

FAST = {"optuna": {}, "map": {"ea_gens": 15, "ea_pop": 24}}


def make(name: str, prob: Problem, seed: int = 0, **opts):
    return STRATEGIES.get(name)(prob, {**FAST.get(name, {}), **opts}, seed=seed)


def result(c: Candidate, f=two_accuracies) -> TrialResult:
    v = f(c.x)
    return TrialResult(c, v, per_sample=None)


def drive(strategy, f, n_evals: int, workers: int = 2, seed: int = 0, fail_every: int = 0):
    """Controller-like loop; returns (candidates, values) in completion order."""
    rng = np.random.default_rng(seed)
    pending = strategy.ask(workers)
    done_c, done_v = [], []
    while len(done_c) < n_evals:
        c = pending.pop(int(rng.integers(len(pending))))
        if fail_every and len(done_c) % fail_every == fail_every - 1:
            r = TrialResult(c, None, error="boom")
            v = np.full(strategy.problem.n_obj, np.nan)
        else:
            v = f(c.x)
            r = TrialResult(c, v)
        strategy.tell([r])
        done_c.append(c)
        done_v.append(v)
        if len(done_c) + len(pending) < n_evals:
            pending += strategy.ask(1)
    return done_c, np.array(done_v)


def assert_candidates(cands, prob: Problem):
    for c in cands:
        assert isinstance(c, Candidate)
        assert c.x.shape == (prob.dim,)
        assert np.all(np.isfinite(c.x))
        assert np.all(c.x >= prob.lower - 1e-12) and np.all(c.x <= prob.upper + 1e-12), (c.x, c.meta)


def same(a, b) -> bool:
    return len(a) == len(b) and all(
        x.id == y.id and np.array_equal(x.x, y.x) and x.parents == y.parents and x.generation == y.generation for x, y in zip(a, b, strict=True)
    )


# ----------------------------------------------------------------------------- conformance


@pytest.mark.parametrize("name", ALL)
def test_defaults_validate(name: str) -> None:
    assert validate_options(name, {}) == []
    issues = validate_options(name, {"no_such_option": 1})
    assert issues and "no_such_option" in str(issues[0])


@pytest.mark.parametrize("name", ALL)
def test_in_bounds_respects_n_and_unique_increasing_ids(name: str) -> None:
    prob = problem(**UNEVEN)
    s = make(name, prob)
    ids: list[int] = []
    for n in [3, 1, 0, 7, 2, 5, 1, 9]:
        cands = s.ask(n)
        assert len(cands) == n
        assert_candidates(cands, prob)
        ids += [c.id for c in cands]
        s.tell([result(c) for c in cands[: max(1, n - 1)]])  # leave one running now and then
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


@pytest.mark.parametrize("name", ALL)
def test_deterministic_for_a_seed(name: str) -> None:
    prob = problem(**UNEVEN)
    runs = [drive(make(name, prob, seed=s), two_accuracies, 30, seed=1)[0] for s in (7, 7, 8)]
    assert same(runs[0], runs[1])
    assert not same(runs[0], runs[2])


class _Logged:
    """Drives a strategy and logs its calls the way the controller does (each candidate is its
    own trial, numbered by its id), so a new instance can be rebuilt by :func:`replay`."""

    def __init__(self, strategy):
        self.s, self.events, self.results, self.cands = strategy, [], {}, {}
        self.problem = strategy.problem

    def ask(self, n):
        got = self.s.ask(n)
        clip_candidates(got, self.s.problem.lower, self.s.problem.upper)
        self.cands.update({c.id: c for c in got})
        self.events.append(SimpleNamespace(seq=len(self.events) + 1, kind="ask", payload={
            "n": n, "items": [{"id": c.id, "h": digest(c.x), "number": c.id} for c in got]}))
        return got

    def tell(self, results):
        self.s.tell(results)
        self.results.update({r.candidate.id: r for r in results})
        self.events.append(SimpleNamespace(seq=len(self.events) + 1, kind="tell", payload={
            "items": [[r.candidate.id, r.candidate.id] for r in results]}))

    def rebuild(self, fresh, after: int = 0):
        """Replay the calls after event ``after`` into ``fresh``; the candidates still running."""
        def candidate_of(cid):
            c = self.cands[cid]
            return Candidate(c.x.copy(), c.id, c.generation, c.parents, dict(c.meta))

        def result_of(cand, number):  # as the controller does: the stored result, fidelity flag included
            return dataclasses.replace(self.results[number], candidate=cand)

        asked, diverged = replay(fresh, self.events[after:], fresh.problem.lower, fresh.problem.upper, candidate_of, result_of)
        assert diverged is None
        return asked


@pytest.mark.parametrize("name", ALL)
def test_replay_of_the_logged_calls_continues_exactly(name: str) -> None:
    """What a resumed controller does: a new instance with the same seed, fed the logged asks and
    tells, proposes what the live one proposes next (running candidates' results included)."""
    prob = problem(**UNEVEN)
    live = _Logged(make(name, prob, seed=3))
    drive(live, two_accuracies, 25, workers=3, seed=2)
    running = live.ask(3)  # asked, not yet told, when the controller dies
    restored = make(name, prob, seed=3)
    asked = live.rebuild(restored)
    assert sorted(asked) == sorted(c.id for c in running)
    for step in range(6):
        if step == 1:  # results of candidates asked before the crash arrive after it
            live.s.tell([result(c) for c in running])
            restored.tell([result(asked[c.id]) for c in running])
        a, b = live.s.ask(2), restored.ask(2)
        assert same(a, b), (step, a, b)
        live.s.tell([result(c) for c in reversed(a)])
        restored.tell([result(c) for c in reversed(b)])


@pytest.mark.parametrize("name", [n for n in ALL if STRATEGIES.get(n).snapshots])
def test_data_snapshot_plus_replay_continues_exactly(name: str) -> None:
    """Strategies with snapshots: state_dict() is plain data (JSON + arrays, no pickle), and a
    snapshot plus the calls logged after it rebuilds the live state exactly."""
    prob = problem(**UNEVEN)
    live = _Logged(make(name, prob, seed=3))
    drive(live, two_accuracies, 20, workers=3, seed=2)
    text, blob = statedata.encode(live.s.state_dict())
    at = len(live.events)
    drive(live, two_accuracies, 8, workers=2, seed=5)
    restored = make(name, prob, seed=3)
    restored.load_state_dict(statedata.decode(text, blob))
    live.rebuild(restored, after=at)
    for _ in range(4):
        a, b = live.s.ask(2), restored.ask(2)
        assert same(a, b)
        live.s.tell([result(c) for c in a])
        restored.tell([result(c) for c in b])


def test_state_data_refuses_objects_and_never_unpickles(tmp_path) -> None:
    with pytest.raises(statedata.StateDataError, match=r"state.a\[1\]: object is not plain data"):
        statedata.encode({"a": [1, object()]})
    with pytest.raises(statedata.StateDataError, match="dtype object"):
        statedata.encode({"a": np.array([None, 1], dtype=object)})
    marker = tmp_path / "ran"
    evil = pickle.dumps(_Evil(str(marker)))
    for text, blob in [('{"format": "mergesearch-state/1", "state": 1}', evil), (evil.decode("latin-1"), b"")]:
        with pytest.raises(statedata.StateDataError):
            statedata.decode(text, blob)
    import io
    buf = io.BytesIO()
    np.save(buf, np.array([_Evil(str(marker))], dtype=object), allow_pickle=True)
    import zipfile
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("a0.npy", buf.getvalue())
    with pytest.raises(statedata.StateDataError):
        statedata.decode('{"format": "mergesearch-state/1", "state": {"__array__": 0}}', zbuf.getvalue())
    assert not marker.exists()
    state = {"rng": np.random.default_rng(5).bit_generator.state, "x": [np.arange(3.0), (1, "a")], "m": {3: np.ones(2, np.float32)},
             "f": [float("nan"), float("inf"), 0.1 + 0.2], "n": None, "b": True, "i": np.int64(7)}
    back = statedata.decode(*statedata.encode(state))
    assert back["rng"] == state["rng"] and back["x"][1] == (1, "a") and back["m"][3].dtype == np.float32
    assert np.isnan(back["f"][0]) and back["f"][1:] == [float("inf"), 0.1 + 0.2] and back["i"] == 7


class _Evil:
    """Unpickling this creates a file: the proof that something ran."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("name", ALL)
def test_failed_and_non_finite_results_are_tolerated(name: str) -> None:
    prob = problem()
    s = make(name, prob)
    for i in range(40):
        c = s.ask(1)[0]
        kind = i % 4
        if kind == 0:
            r = TrialResult(c, None, error="worker died")
        elif kind == 1:
            r = TrialResult(c, np.array([np.nan, 0.5]))
        elif kind == 2:
            r = TrialResult(c, np.array([np.inf, -np.inf]))
        else:
            r = result(c)
        s.tell([r])
    cands = s.ask(4)
    assert len(cands) == 4
    assert_candidates(cands, prob)
    # everything failing is survivable too
    s2 = make(name, prob)
    for _ in range(12):
        s2.tell([TrialResult(c, None, error="x") for c in s2.ask(2)])
    assert_candidates(s2.ask(3), prob)


@pytest.mark.parametrize("name", ALL)
def test_results_out_of_order(name: str) -> None:
    prob = problem()
    s = make(name, prob, seed=5)
    rng = np.random.default_rng(0)
    outstanding: list[Candidate] = []
    n_told = 0
    while n_told < 45:
        outstanding += s.ask(int(rng.integers(1, 6)))
        rng.shuffle(outstanding)
        k = int(rng.integers(1, len(outstanding) + 1))
        batch, outstanding = outstanding[:k], outstanding[k:]
        s.tell([result(c) for c in batch[::-1]])
        n_told += k
    s.tell([result(c) for c in outstanding])
    assert_candidates(s.ask(5), prob)


@pytest.mark.parametrize("name", ALL)
def test_mixed_directions(name: str) -> None:
    """Objective 0 (maximised) depends on x[:2], objective 1 (minimised) on x[2:]. Flipping
    both directions must flip where the strategy goes, for every strategy that reads values."""

    a, b = np.array([1.2, 0.3]), np.array([0.4, 1.1])

    def f(x):
        return np.array([_sig(2 - 4 * np.sum((x[:2] - a) ** 2)), float(np.sum((x[2:] - b) ** 2))])

    right = problem(objectives=(Objective("acc", "maximize"), Objective("loss", "minimize")))
    wrong = problem(objectives=(Objective("acc", "minimize"), Objective("loss", "maximize")))
    cr, vr = drive(make(name, right, seed=0), f, 60)
    cw, vw = drive(make(name, wrong, seed=0), f, 60)
    assert_candidates(cr, right)
    if name in VALUE_BLIND:
        assert same(cr, cw)
        return
    late_r, late_w = vr[30:], vw[30:]
    assert late_r[:, 0].mean() > late_w[:, 0].mean() + 0.2
    assert late_r[:, 1].mean() < late_w[:, 1].mean() - 0.2
    # and the Pareto helpers agree on the directions
    mask = pareto_mask(vr, ["maximize", "minimize"])
    assert mask.any()
    best = vr[mask]
    assert best[:, 0].max() >= vr[:, 0].max() - 1e-12 and best[:, 1].min() <= vr[:, 1].min() + 1e-12


# ----------------------------------------------------------------------------- quality per strategy

# Fraction of the true hypervolume reached within the budget (80 evaluations, 2 workers,
# seed 0). Thresholds sit below the worst of 5 seeds measured when they were set
# (random 0.44, sobol 0.45, cmaes 0.52, nsga2 0.58, map 0.95, m2n2 0.71, optuna/TPE 0.76,
# mobo 0.95, turbo 0.93).
HV_FRACTION = {
    "random": 0.35,
    "sobol": 0.35,
    "cmaes": 0.45,
    "nsga2": 0.50,
    "map": 0.85,
    "m2n2": 0.60,
    "optuna": 0.65,
    "mobo": 0.88,
    "turbo": 0.88,
}


def test_every_strategy_has_a_quality_threshold() -> None:
    assert set(HV_FRACTION) == set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_reaches_hypervolume_fraction(name: str) -> None:
    prob = problem(budget=80)
    _, V = drive(make(name, prob, seed=0), two_accuracies, 80)
    frac = hypervolume(V, ["maximize", "maximize"], [0, 0]) / TRUE_HV
    assert frac >= HV_FRACTION[name], f"{name}: {frac:.3f} of the true hypervolume"
    assert frac <= 1.0 + 1e-9


# ----------------------------------------------------------------------------- strategy specifics


def test_cmaes_asks_ahead_and_feeds_cma_exact_generations() -> None:
    prob = problem(objectives=(Objective("acc_a", weight=1.0), Objective("acc_b", weight=1.0)))
    s = make("cmaes", prob, seed=0)
    lam = s.popsize
    first = s.ask(lam + 5)  # more than a generation before anything is told
    assert len(first) == lam + 5
    assert sum(c.meta["kind"] == "extra" for c in first) == 5
    assert {c.generation for c in first} == {0}
    # lambda results (some of them extras) complete generation 0 in cma
    s.tell([result(c) for c in first[5:]])
    assert s._es.countiter == 1
    # the other 5 are stragglers: the best of them are injected into generation 1
    s.tell([result(c) for c in first[:5]])
    nxt = s.ask(lam)
    assert s._n_injected >= 1
    assert all(c.generation == 1 for c in nxt)
    s.tell([result(c) for c in nxt])
    assert s._es.countiter == 2


def test_cmaes_weights_and_separable_and_start() -> None:
    prob = problem()
    s = make("cmaes", prob, weights=[1.0, 0.0], x0="uniform")
    assert np.allclose(s._w, [1.0, 0.0])
    assert np.allclose(s._es.mean, 0.5 / 1.5, atol=1e-5)
    big = problem(dim=60, lower=np.zeros(60), upper=np.ones(60))
    assert make("cmaes", big)._separable
    assert not make("cmaes", prob)._separable
    assert validate_options("cmaes", {"weights": [1, 2, 3]}) == []  # no config: objectives unknown
    assert STRATEGIES.get("cmaes").check(STRATEGIES.get("cmaes").Options(weights=[1.0]), {"n_objectives": 2})
    with pytest.raises(ValueError, match="x0"):
        make("cmaes", prob, x0="nope")


def test_nsga2_breeds_from_current_population_while_stragglers_run() -> None:
    prob = problem(budget=200)
    s = make("nsga2", prob, seed=0, pop_size=8)
    init = s.ask(8)
    assert [c.meta["kind"] for c in init][:4] == ["initial"] * 4
    assert {tuple(np.round(c.x, 6)) for c in init[:4]} == {tuple(np.round(x, 6)) for _, x in prob.seeds}
    extra = s.ask(3)  # initial population out, nothing told: more initial points
    assert all(c.meta["kind"] == "initial-extra" for c in extra)
    s.tell([result(c) for c in init + extra])
    assert s.counts["generations"] == 1
    kids = s.ask(8)
    assert all(len(c.parents) == 2 and c.generation == 1 for c in kids)
    more = s.ask(5)  # generation barrier: bred from the current population
    assert all(len(c.parents) == 2 for c in more)
    s.tell([result(c) for c in kids])  # 8 results -> survival, stragglers still out
    assert s.counts["generations"] == 2
    s.tell([result(c) for c in more])  # stragglers join the next survival
    assert s.counts["told"] == 24 and s.counts["ok"] == 24


def test_m2n2_archive_parents_and_per_sample() -> None:
    prob = problem(budget=100)
    s = make("m2n2", prob, seed=0, archive_size=6, min_init=4)
    assert STRATEGIES.get("m2n2").needs_per_sample
    seeds = s.ask(4)
    assert [c.meta.get("seed") for c in seeds] == [n for n, _ in prob.seeds]

    def with_rows(c):
        v = two_accuracies(c.x)
        rows = np.concatenate([np.full(10, v[0]) > np.linspace(0, 1, 10), np.full(10, v[1]) > np.linspace(0, 1, 10)])
        return TrialResult(c, v, per_sample=rows.astype(float))

    s.tell([with_rows(c) for c in seeds])
    ids = {c.id for c in seeds}
    for _ in range(30):
        c = s.ask(1)[0]
        assert len(c.parents) == 2 and c.parents[0] != c.parents[1] and c.generation >= 1
        assert set(c.parents) <= ids | {m["cid"] for m in s.archive}
        ids.add(c.id)
        s.tell([with_rows(c)])
    assert len(s.archive) == 6
    assert not s._used_fallback
    # the archive keeps the fittest under resource competition: never the worst newcomer
    s2 = make("m2n2", prob, seed=0, archive_size=3, min_init=4)
    cs = s2.ask(4)
    s2.tell([TrialResult(c, np.array([0.9, 0.9]), np.ones(4)) for c in cs[:3]])
    s2.tell([TrialResult(cs[3], np.array([0.1, 0.1]), np.zeros(4))])
    assert cs[3].id not in {m["cid"] for m in s2.archive} and s2._n_rejected == 1


def test_m2n2_falls_back_to_objective_values() -> None:
    prob = problem()
    s = make("m2n2", prob, seed=0)
    cands, _ = drive(s, two_accuracies, 30)
    first = sorted(cands, key=lambda c: c.id)[:20]
    assert all(c.meta["kind"] != "child" for c in first)  # seeds + random points fill the archive first
    assert s._used_fallback


def test_map_design_surrogate_and_nested() -> None:
    from search.strategies.map_surrogate import (
        QuadSurrogate,
        auto_link,
        fit_quadratic,
        n_quad_params,
        quad_features,
    )

    # the surrogate recovers a sigmoid-quadratic exactly enough from a linear start
    rng = np.random.default_rng(0)
    U = rng.random((40, 3))
    theta = rng.normal(size=n_quad_params(3))
    y = QuadSurrogate(theta, "sigmoid").predict(U)
    fit = fit_quadratic(U, y, auto_link(y))
    assert fit.link == "sigmoid" and np.max(np.abs(fit.predict(U) - y)) < 1e-3
    assert quad_features(U).shape == (40, 10)
    assert auto_link(np.array([0.5, 3.0])) == "softplus" and auto_link(np.array([-1.0, 2.0])) == "identity"

    # design: the experts one-hot first, then (d+1)(d+2) points in total before any surrogate
    prob = problem(budget=80)
    s = make("map", prob, seed=0)
    design = s.ask(30)
    assert [c.meta.get("seed") for c in design[:2]] == ["a", "b"]
    assert sum(c.meta["kind"].startswith("design") for c in design) == 30  # nothing measured yet
    s.tell([result(c) for c in design])
    nxt = s.ask(8)
    kinds = {c.meta["kind"] for c in nxt}
    assert kinds <= {"front", "refine"} and "front" in kinds
    assert all("surrogate_prediction" in c.meta for c in nxt)

    # nested MAP with 6 experts: experts first, then pairwise 2-D stages
    n = 6
    lo, hi = np.zeros(n), np.full(n, 1.5)
    centers = rng.uniform(0.2, 1.0, (2, n))
    nested = Problem(lo, hi, (Objective("f0"), Objective("f1")), budget=150, n_experts=n)
    s = STRATEGIES.get("map")(nested, {"ea_gens": 10, "ea_pop": 16}, seed=0)
    assert s._nested

    def g(x):
        return np.array([_sig(2 - np.sum((x - centers[0]) ** 2)), _sig(2 - np.sum((x - centers[1]) ** 2))])

    cands, V = drive(s, g, 120)
    stages = [c.meta["stage"] for c in cands]
    assert stages[0] == "experts" and any(st.startswith("pair:") for st in stages)
    assert len(s._stages) >= 4
    assert_candidates(cands, nested)


def test_map_refuses_spaces_its_budget_cannot_fit() -> None:
    cls = STRATEGIES.get("map")
    msgs = cls.check(cls.Options(), {"dim": 12, "budget": 100, "n_experts": 2})
    assert msgs and "d = 12" in msgs[0] and "budget is 100" in msgs[0] and "granularity" in msgs[0] and "block:K" in msgs[0]
    assert cls.check(cls.Options(), {"dim": 3, "budget": 100, "n_experts": 3}) == []
    from search.errors import ConfigError

    with pytest.raises(ConfigError, match="d = 10"):
        make("map", problem(budget=60, dim=10, lower=np.zeros(10), upper=np.ones(10)))
    # nested mode needs enough budget for its stages
    assert cls.check(cls.Options(), {"dim": 8, "budget": 50, "n_experts": 8})


def test_optuna_samplers() -> None:
    prob = problem()
    for sampler in ["tpe", "nsga2", "random"]:
        s = make("optuna", prob, sampler=sampler)
        drive(s, two_accuracies, 12)
    gp = make("optuna", prob, sampler="gp", sampler_kwargs={"n_startup_trials": 4})
    c, _ = drive(gp, two_accuracies, 6)
    assert_candidates(c, prob)
    single = problem(objectives=(Objective("acc_a"),))
    cm = make("optuna", single, sampler="cmaes")
    c, _ = drive(cm, lambda x: two_accuracies(x)[:1], 12)
    assert_candidates(c, single)
    cls = STRATEGIES.get("optuna")
    assert cls.check(cls.Options(sampler="cmaes"), {"n_objectives": 2})
    with pytest.raises(ValueError, match="CmaEsSampler"):
        make("optuna", prob, sampler="cmaes")
    # failed trials are FAIL in the private study
    s = make("optuna", prob)
    c = s.ask(2)
    s.tell([TrialResult(c[0], None), result(c[1])])
    states = [t.state.name for t in s._study.get_trials()]
    assert states == ["FAIL", "COMPLETE"]


def test_replayed_results_from_another_instance_are_accepted() -> None:
    """A resumed controller may replay stored trials through tell(): ids never asked here."""
    prob = problem()
    src = make("random", prob, seed=1)
    cands, V = drive(src, two_accuracies, 20)
    for name in ALL:
        s = make(name, prob)
        s.tell([TrialResult(c, v) for c, v in zip(cands, V, strict=True)])
        nxt = s.ask(3)
        assert_candidates(nxt, prob)
        assert min(c.id for c in nxt) > max(c.id for c in cands)


# ----------------------------------------------------------------------------- pareto helpers


def test_pareto_mask_and_ranks_with_directions() -> None:
    V = np.array([[0.9, 0.5], [0.8, 0.2], [0.7, 0.6], [0.9, 0.5], [np.nan, 0.0], [0.5, 0.9]])
    m = pareto_mask(V, ["maximize", "minimize"])
    # maximize acc, minimize loss: (0.9, 0.5) and (0.8, 0.2) are both on the front, duplicates kept
    assert m.tolist() == [True, True, False, True, False, False]
    r = non_dominated_ranks(V, ["maximize", "minimize"])
    assert r[4] == -1 and r[0] == r[1] == r[3] == 0 and r[2] == 1 and r[5] == 2
    assert pareto_mask(V, ["maximize", "maximize"]).tolist() == [True, False, True, True, False, True]
    assert np.allclose(to_minimization([[1, 2]], ["maximize", "minimize"]), [[-1, 2]])
    with pytest.raises(ValueError):
        pareto_mask(V, ["up", "down"])


@pytest.mark.parametrize("n_obj", [2, 3])
def test_pareto_mask_sweep_of_many_points_equals_the_pairwise_check(n_obj: int) -> None:
    """Past one block the mask comes from a sorted sweep; it must be the pairwise check's mask,
    with ties, duplicated front points and non-finite rows."""
    from search.pareto import _SWEEP_BLOCK, _dominated_by_any

    rng = np.random.default_rng(n_obj)
    V = np.round(rng.random((5 * _SWEEP_BLOCK + 17, n_obj)), 2)  # coarse values: many ties
    V[::97] = V[3]  # duplicates of one point
    V[11, 0], V[12, -1] = np.nan, np.inf
    V[40:60] = 1.0  # a run of equal rows
    dirs = ["maximize", "minimize", "maximize"][:n_obj]
    F = to_minimization(V, dirs)
    finite = np.all(np.isfinite(F), axis=1)
    want = np.zeros(len(V), dtype=bool)
    want[finite] = ~_dominated_by_any(F[finite], F[finite])
    got = pareto_mask(V, dirs)
    assert got.sum() > 1 and got.tolist() == want.tolist()
    # a front spanning several blocks (an anti-diagonal), duplicated across a block boundary
    line = rng.random(3 * _SWEEP_BLOCK)
    A = np.column_stack([line, 1.0 - line + 0.01 * rng.random(len(line))] + [rng.random(len(line))] * (n_obj - 2))
    order = np.lexsort(A.T[::-1])
    A[order[_SWEEP_BLOCK - 2 : _SWEEP_BLOCK + 2]] = A[order[_SWEEP_BLOCK - 1]]
    want = ~_dominated_by_any(A, A)
    got = pareto_mask(A, ["minimize"] * n_obj)
    blocks = {int(np.flatnonzero(order == i)[0]) // _SWEEP_BLOCK for i in np.flatnonzero(want)}
    assert len(blocks) == 3 and got.tolist() == want.tolist()


def test_hypervolume_reference_point_convention() -> None:
    # maximised accuracies, reference 0: the union of the rectangles [0, a] x [0, b]
    V = np.array([[0.5, 0.5], [0.8, 0.2], [0.2, 0.8], [0.1, 0.1], [np.nan, 1.0]])
    hv = hypervolume(V, ["maximize", "maximize"], [0, 0])
    assert np.isclose(hv, 0.25 + 0.3 * 0.2 + 0.3 * 0.2)
    # the same front as (accuracy, error = 1 - accuracy) with reference (0, 1)
    W = np.column_stack([V[:, 0], 1 - V[:, 1]])
    assert np.isclose(hypervolume(W, ["maximize", "minimize"], [0, 1]), hv)
    # points not strictly better than the reference add nothing; three objectives via pymoo
    assert hypervolume(np.array([[-0.1, 0.9]]), ["maximize", "maximize"], 0) == 0.0
    assert np.isclose(hypervolume(np.array([[1.0, 1.0, 1.0], [0.5, 0.5, 2.0]]), ["maximize"] * 3, 0), 1.0 + 0.25)
    assert hypervolume(np.zeros((0, 2)), ["maximize", "maximize"], 0) == 0.0
    assert igd_plus(V[:3], ["maximize", "maximize"], V[:3]) == 0.0


# ----------------------------------------------------------------------------- mobo and its parts


def test_gp_gradient_fit_and_uncertainty() -> None:
    from search.strategies.gp import GaussianProcess

    rng = np.random.default_rng(0)
    X = rng.random((40, 3))
    y = np.sin(6 * X[:, 0]) + X[:, 1] ** 2
    gp = GaussianProcess(3)
    ys = gp._standardise(y)
    th = gp.theta + 0.3 * rng.standard_normal(5)
    _, g = gp._nll(th, X, ys)
    num = [(gp._nll(th + 1e-6 * e, X, ys)[0] - gp._nll(th - 1e-6 * e, X, ys)[0]) / 2e-6 for e in np.eye(5)]
    assert np.allclose(g, num, rtol=1e-4, atol=1e-5)
    gp.fit(X, y)
    Xt = rng.random((300, 3))
    mu, sd = gp.predict(Xt)
    assert np.sqrt(np.mean((mu - (np.sin(6 * Xt[:, 0]) + Xt[:, 1] ** 2)) ** 2)) < 0.1 * np.std(y)
    _, sd_data = gp.predict(X[:5])
    _, sd_far = gp.predict(np.array([[3.0, 3.0, 3.0]]))
    assert sd_data.max() < 0.05 * np.std(y) < sd_far[0]


def test_hv_improvement_exact_in_2d_and_close_in_3d() -> None:
    from search.pareto import hv_improvement

    rng = np.random.default_rng(1)
    for m, tol in ((2, 1e-12), (3, 0.01)):
        F = rng.random((12, m))
        ref = np.full(m, 1.2)
        Y = rng.random((40, m))
        base = hypervolume(F, ["minimize"] * m, ref)
        exact = np.array([hypervolume(np.vstack([F, y]), ["minimize"] * m, ref) - base for y in Y])
        est = hv_improvement(F, Y, ref, rng=rng, n_samples=100_000)
        assert np.abs(est - exact).max() <= tol * max(1.0, exact.max()), m
        assert np.all(est >= 0)
    # one objective: how far below the best
    assert np.allclose(hv_improvement(np.array([[0.3], [0.5]]), np.array([[0.1], [0.4], [0.9]]), np.array([1.0])), [0.2, 0.0, 0.0])
    # no front yet: the box each candidate dominates
    assert np.allclose(hv_improvement(np.zeros((0, 2)), np.array([[0.2, 0.5]]), np.array([1.0, 1.0])), [0.8 * 0.5])
    with pytest.raises(ValueError, match="rng"):
        hv_improvement(np.ones((2, 3)) * 0.5, np.zeros((1, 3)), np.ones(3))


def test_mobo_phases_fantasies_and_failures() -> None:
    prob = problem(budget=60)
    s = make("mobo", prob, seed=0, local_after=20)
    cands, V = drive(s, two_accuracies, 40, workers=3, fail_every=7)
    by_id = sorted(cands, key=lambda c: c.id)
    assert [c.meta.get("seed") for c in by_id[:4]] == ["expert:a", "expert:b", "base", "uniform"]  # seeds first
    phases = [c.meta["phase"] for c in by_id]
    assert phases[:5] == ["init"] * 5 and phases[5] != "init"  # the 4 seeds and one Sobol point
    assert "model" in phases and "local" in phases
    assert all(c.meta["phase"] != "local" for c in cands[:20])
    assert all("predicted" in c.meta and len(c.meta["predicted"]) == 2 for c in cands if c.meta["phase"] == "model")
    # outstanding proposals are fantasised: a batch holds distinct points
    batch = s.ask(3)
    X = np.array([c.x for c in batch] + [c.x for c in cands])
    assert len(np.unique(np.round(X, 9), axis=0)) == len(X)
    assert sum(y is None for y in s._Y) == len(cands) // 7  # failed trials recorded (and never proposed again)
    # model proposals beat the initial design on the front
    init_hv = hypervolume(V[:5][np.all(np.isfinite(V[:5]), axis=1)], ["maximize", "maximize"], [0, 0])
    assert hypervolume(V[np.all(np.isfinite(V), axis=1)], ["maximize", "maximize"], [0, 0]) > init_hv + 0.1 * TRUE_HV


def test_mobo_refuses_large_spaces_and_names_the_fix() -> None:
    cls = STRATEGIES.get("mobo")
    msgs = cls.check(cls.Options(), {"dim": 300})
    assert msgs and "max_dim" in msgs[0] and "granularity" in msgs[0]
    assert not cls.check(cls.Options(max_dim=400), {"dim": 300})
    with pytest.raises(ValueError, match="max_dim"):
        make("mobo", problem(dim=80))


def test_mobo_local_moves_aim_at_the_fronts_gaps() -> None:
    s = make("mobo", problem(budget=60), seed=0)
    # a 2-objective front (minimised) with one big empty rectangle, between members 1 and 2
    F = np.array([[0.0, 1.0], [0.05, 0.95], [0.9, 0.1], [0.95, 0.05], [1.0, 0.0]])
    U = np.array([[0.1, 0, 0, 0], [0.2, 0, 0, 0], [0.7, 0, 0, 0], [0.8, 0, 0, 0], [0.9, 0, 0, 0]])
    C = np.array([s._gap_center(U, F) for _ in range(400)])
    assert np.mean((C[:, 0] >= 0.2 - 1e-12) & (C[:, 0] <= 0.7 + 1e-12)) > 0.95
    assert np.mean((C[:, 0] > 0.2 + 1e-9) & (C[:, 0] < 0.7 - 1e-9)) > 0.3  # blends fill the gap
    # three objectives: crowding distance; every member can be drawn, the ends most often
    F3 = np.array([[0.0, 1.0, 0.5], [0.5, 0.5, 0.5], [0.52, 0.48, 0.5], [1.0, 0.0, 0.5]])
    U3 = np.eye(4)
    picks = np.array([np.argmax(s._gap_center(U3, F3)) for _ in range(400)])
    counts = np.bincount(picks, minlength=4)
    assert counts.min() > 0 and counts[0] > counts[2] and counts[3] > counts[1]


#: digests of every proposal of the scenarios below, recorded from the code before mobo's batch
#: step (commit eb3d070, run with OMP_NUM_THREADS=1) and equal to what the batch-step code
#: proposes with its default one BLAS thread; exact only under these library versions and BLAS kernels
_SMALL_ASK_DIGESTS = {
    "mobo": "285cab083edbbaa7", "mobo-margins": "c74100c3961af0d9", "mobo-logit": "db96ccd4e74234ca",
    "mobo-screen0": "a59aff192b4c7251", "turbo": "fa3e966cdac13f0f", "turbo-margins": "78db49a30f465735",
}
_SMALL_ASK_VERSIONS = ("2.4.6", "1.17.1")  # numpy, scipy
_SMALL_ASK_BLAS = [("0.3.30", "Haswell"), ("0.3.31.188.0", "Haswell")]  # OpenBLAS builds and kernels (threadpoolctl)


@pytest.mark.parametrize("key", sorted(_SMALL_ASK_DIGESTS))
def test_asks_of_one_to_three_propose_what_they_did_before_the_batch_step(key: str) -> None:
    """Asks below ``batch_from`` keep the per-member fantasy path bit for bit (the sample-
    efficiency benches run that path): asks of 3, 1, 2, ... over 45 results of each scenario."""
    import hashlib

    import scipy
    from threadpoolctl import threadpool_info

    if (np.__version__, scipy.__version__) != _SMALL_ASK_VERSIONS:
        pytest.skip(f"digests recorded with numpy/scipy {_SMALL_ASK_VERSIONS}; here {np.__version__}/{scipy.__version__}")
    blas = sorted((str(b.get("version")), str(b.get("architecture"))) for b in threadpool_info()
                  if b["user_api"] == "blas" and "scipy_openblas" in b["filepath"])  # numpy's and scipy's own
    if blas != _SMALL_ASK_BLAS:  # single-thread BLAS results can differ bitwise between CPU kernels
        pytest.skip(f"digests recorded with BLAS {_SMALL_ASK_BLAS}; here {blas}")
    name, opts, f, margins = {
        "mobo": ("mobo", {"local_after": 20}, two_accuracies, None),
        "mobo-margins": ("mobo", {"local_after": 20}, ball_accuracies, ball_margins),
        "mobo-logit": ("mobo", {"local_after": 20, "margins": False}, ball_accuracies, None),
        "mobo-screen0": ("mobo", {"local_after": 20, "screen": 0}, two_accuracies, None),
        "turbo": ("turbo", {}, two_accuracies, None),
        "turbo-margins": ("turbo", {}, ball_accuracies, ball_margins),
    }[key]
    s = STRATEGIES.get(name)(problem(budget=60), opts, seed=3)
    sizes, pending, told, out = [3, 1, 2, 1, 3, 2, 1, 1, 2, 3], [], 0, []
    while told < 45:
        if len(pending) < 3:
            new = s.ask(sizes[len(out) % len(sizes)])  # out: one list per ask
            out.append([digest(c.x) for c in new])
            pending += new
        c = pending.pop(0)
        s.tell([TrialResult(c, f(c.x), margins=margins(c.x) if margins else None)])
        told += 1
    assert hashlib.sha1("".join(d for ask in out for d in ask).encode()).hexdigest()[:16] == _SMALL_ASK_DIGESTS[key]


def test_mobo_limits_blas_threads_only_while_it_proposes() -> None:
    """The model step runs with ``blas_threads`` BLAS threads; the process's setting is back
    after the ask, also when the step raises."""
    from threadpoolctl import threadpool_info

    def blas() -> list[int]:
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    before = blas()
    s = make("mobo", problem())
    drive(s, two_accuracies, 8, workers=1)
    seen: list[list[int]] = []
    real = s._model_step

    def step(k: int, fail: bool = False):
        seen.append(blas())
        if fail:
            raise RuntimeError("boom")
        return real(k)

    s._model_step = step
    assert len(s.ask(1)) == 1 and blas() == before
    s._model_step = lambda k: step(k, fail=True)
    with pytest.raises(RuntimeError, match="boom"):
        s.ask(1)
    assert blas() == before
    assert seen and all(t and all(n == 1 for n in t) for t in seen), seen


def test_mobo_batches_mixing_local_and_model_proposals() -> None:
    """Large asks late in a run: local moves start from the measured front (not the fantasised
    one), are screened by the model, and every proposal is distinct and in bounds."""
    prob = problem(budget=200, **UNEVEN)
    for screen in (16, 0):
        s = make("mobo", prob, seed=1, local_after=10, screen=screen)
        drive(s, two_accuracies, 30, workers=1)
        batch = s.ask(8) + s.ask(8)
        assert len(batch) == 16
        assert_candidates(batch, prob)
        phases = {c.meta["phase"] for c in batch}
        assert phases == {"local", "model"}
        assert all(c.meta.get("screened") == (screen or None) for c in batch if c.meta["phase"] == "local")
        X = np.array([c.x for c in batch])
        assert len(np.unique(np.round(X, 9), axis=0)) == 16


def test_mobo_batch_ask_is_one_model_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """An ask for 16 conditions each GP as often as an ask for 1 (once, pending points as
    fantasies), where one kriging-believer fantasy per member re-conditions them 15 more
    times; the 16 proposals are distinct, new and in the box."""
    from search.strategies.gp import GaussianProcess

    prob = problem(budget=200, **UNEVEN)
    live = make("mobo", prob, seed=4, local_after=1000)  # model proposals only
    drive(live, two_accuracies, 24, workers=3)
    state = statedata.decode(*statedata.encode(live.state_dict()))
    calls = {"n": 0}
    real = GaussianProcess.factorise

    def counting(self, *a, **kw):  # the real factorisation, counted
        calls["n"] += 1
        return real(self, *a, **kw)

    monkeypatch.setattr(GaussianProcess, "factorise", counting)
    asked, used = {}, {}
    for label, k, opts in [("one", 1, {}), ("batch", 16, {}), ("fantasies", 16, {"batch_from": None})]:
        s = make("mobo", prob, seed=4, local_after=1000, **opts)
        s.load_state_dict(state)
        calls["n"] = 0
        asked[label] = s.ask(k)
        used[label] = calls["n"]
    assert used["batch"] == used["one"] < used["fantasies"]
    batch = asked["batch"]
    assert len(batch) == 16 and all(c.meta["phase"] == "model" and c.meta["batch"] == 16 for c in batch)
    assert_candidates(batch, prob)
    X = np.array([c.x for c in batch] + [x for x in live._X] + list(live._pending.values()))
    assert len(np.unique(np.round(X, 9), axis=0)) == len(X)
    # each chosen point's optimistic prediction joins the front: the batch spreads out
    assert np.ptp(np.array([c.meta["predicted"] for c in batch])[:, 0]) > 0.05


@pytest.mark.parametrize("name", ["mobo", "turbo"])
def test_batch_asks_replay_and_restore_exactly(name: str) -> None:
    """Batch asks (8 at a time, local moves among them) are rebuilt exactly from the call log
    alone and from a snapshot plus the calls after it, as a resumed controller does."""
    prob = problem(budget=200, **UNEVEN)
    live = _Logged(make(name, prob, seed=5, local_after=20))
    drive(live, two_accuracies, 12, workers=3, seed=1)
    text, blob, at = None, None, 0
    for step in range(5):
        got = live.ask(8)
        assert len(got) == 8 and (step == 0 or all(c.meta.get("batch") == 8 for c in got))
        live.tell([result(c) for c in reversed(got[:6])])  # two stay running
        if step == 2:
            text, blob = statedata.encode(live.s.state_dict())
            at = len(live.events)
    from_log = make(name, prob, seed=5, local_after=20)
    live.rebuild(from_log)
    from_snap = make(name, prob, seed=5, local_after=20)
    from_snap.load_state_dict(statedata.decode(text, blob))
    live.rebuild(from_snap, after=at)
    for _ in range(3):
        a, b, c = live.s.ask(8), from_log.ask(8), from_snap.ask(8)
        assert same(a, b) and same(a, c)
        for s, got in ((live.s, a), (from_log, b), (from_snap, c)):
            s.tell([result(x) for x in got])


def test_mobo_single_objective_finds_the_optimum() -> None:
    prob = problem(budget=60, objectives=(Objective("acc_a"),))
    _, V = drive(make("mobo", prob, seed=0, local_after=15), lambda x: two_accuracies(x)[:1], 40)
    assert V.max() >= 0.99 * _sig(3)  # the best accuracy of acc_a is sigmoid(3), at x = A1


# ----------------------------------------------------------------------------- mobo on margins

_mrng = np.random.default_rng(7)
#: per objective, 150 examples; example e is right inside a ball around its own centre near
#: A1 (objective 0) or A2 (objective 1): an accuracy that is a step function of x
_CENTRES = [a + _mrng.normal(0, 0.35, (150, D)) for a in (A1, A2)]
_RADII = [_mrng.uniform(0.7, 1.3, 150) for _ in range(2)]


def ball_margins(x: np.ndarray) -> dict[int, np.ndarray]:
    return {j: _RADII[j] ** 2 - ((x - _CENTRES[j]) ** 2).sum(1) for j in range(2)}


def ball_accuracies(x: np.ndarray) -> np.ndarray:
    return np.array([(m > 0).mean() for m in ball_margins(x).values()])


def drive_margins(strategy, n_evals: int, margins=ball_margins) -> np.ndarray:
    pending, V = strategy.ask(2), []
    while len(V) < n_evals:
        c = pending.pop(0)
        V.append(ball_accuracies(c.x))
        strategy.tell([TrialResult(c, V[-1], margins=margins(c.x))])
        if len(V) + len(pending) < n_evals:
            pending += strategy.ask(1)
    return np.array(V)


def test_mobo_predicts_accuracies_from_margins() -> None:
    """Per-example margins make the accuracy's steps predictable: the margin model finds a
    better front than the plain value GPs (by 10 %) and than the logit value model with the
    same seed and budget, and its predictions are fractions of examples."""
    prob = problem(budget=60)
    hv = {}
    for key, opts in (("margins", {}), ("plain", {"margins": False, "value_warp": False}), ("logit", {"margins": False})):
        s = make("mobo", prob, seed=0, **opts)
        V = drive_margins(s, 40)
        hv[key] = hypervolume(V, ["maximize", "maximize"], [0, 0])
        assert sorted(s._margin_data()) == ([0, 1] if key == "margins" else [])
    assert hv["margins"] > hv["plain"] * 1.1 and hv["margins"] > hv["logit"], hv
    # the model's predictions are fractions of the 150 examples
    s = make("mobo", prob, seed=0)
    drive_margins(s, 20)
    c = s.ask(1)[0]
    assert c.meta["phase"] == "model"
    assert all(abs(v * 150 - round(v * 150)) < 1e-9 for v in c.meta["predicted"])


def test_mobo_ignores_margins_that_do_not_give_the_value_back() -> None:
    s = make("mobo", problem(budget=40), seed=0)
    # margins of objective 0 flipped: mean(m > 0) is not its value; objective 1 has none at first
    drive_margins(s, 12, margins=lambda x: {0: -ball_margins(x)[0], 1: ball_margins(x)[1]})
    assert sorted(s._margin_data()) == [1]
    s2 = make("mobo", problem(budget=40), seed=0)
    drive_margins(s2, 12, margins=lambda x: {1: ball_margins(x)[1][: 100 + int(x[0] > 0.7)]})  # ragged
    assert s2._margin_data() == {} and s2.ask(1)


def test_mobo_state_round_trip_with_margins() -> None:
    prob = problem(budget=60)
    s = make("mobo", prob, seed=3)
    drive_margins(s, 25)
    state = statedata.decode(*statedata.encode(s.state_dict()))
    s2 = make("mobo", prob, seed=3)
    s2.load_state_dict(state)
    assert same(s.ask(2), s2.ask(2))


def mixed_values(x: np.ndarray) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Objective 0: an accuracy with its margins; 1: an accuracy on 150 examples, value only;
    2: a continuous loss (minimised)."""
    acc = ball_accuracies(x)
    return np.array([acc[0], acc[1], float(((x - 0.7) ** 2).sum())]), {0: ball_margins(x)[0]}


def drive_mixed(strategy, n_evals: int) -> list[Candidate]:
    pending, asked = strategy.ask(2), []
    while len(asked) < n_evals:
        c = pending.pop(0)
        asked.append(c)
        v, m = mixed_values(c.x)
        strategy.tell([TrialResult(c, v, margins=m)])
        if len(asked) + len(pending) < n_evals:
            pending += strategy.ask(1)
    return asked


def test_mobo_mixes_objectives_with_and_without_margins() -> None:
    """One accuracy modelled from its margins, one from its values k/150 on the empirical-logit
    scale (the count found from the values), a loss by the plain value GP; the value model is
    wired in (proposals differ without it) and a state round trip keeps all of it."""
    objs = (Objective("acc_a"), Objective("acc_b"), Objective("loss", "minimize"))
    prob = problem(budget=40, objectives=objs)
    s = make("mobo", prob, seed=1, n_candidates=128)
    asked = drive_mixed(s, 16)
    assert_candidates(asked, prob)
    assert sorted(s._margin_data()) == [0]
    V = np.array([y for y in s._Y])
    assert s._example_count(1, V[:, 1]) == 150 and s._example_count(2, V[:, 2]) is None
    c = s.ask(1)[0]
    assert c.meta["phase"] == "model"
    assert abs(c.meta["predicted"][0] * 150 - round(c.meta["predicted"][0] * 150)) < 1e-9  # from the margins
    plain = make("mobo", prob, seed=1, n_candidates=128, value_warp=False)
    assert not same(drive_mixed(plain, 16), asked)
    s = make("mobo", prob, seed=1, n_candidates=128)
    drive_mixed(s, 16)
    s2 = make("mobo", prob, seed=1, n_candidates=128)
    s2.load_state_dict(statedata.decode(*statedata.encode(s.state_dict())))
    assert same(s.ask(2), s2.ask(2))


def deep_accuracies(x: np.ndarray) -> np.ndarray:
    """The analytic problem on 200 coordinates: the two accuracies of the 4-d problem at the
    mean of the 50 blocks of 4 coordinates (every coordinate matters a little)."""
    return two_accuracies(np.asarray(x).reshape(-1, D).mean(0))


def test_turbo_runs_200_coordinates_that_mobo_refuses() -> None:
    prob = problem(budget=60, dim=200)
    with pytest.raises(ValueError, match="max_dim=64"):
        make("mobo", prob)
    s = make("turbo", prob, seed=0)
    cands, V = drive(s, deep_accuracies, 60, workers=3)
    assert_candidates(cands, prob)
    assert len({tuple(c.x) for c in cands}) == 60
    assert any(c.meta.get("phase") == "model" and "tr_length" in c.meta for c in cands)
    ids = [c.id for c in cands]
    assert len(set(ids)) == len(ids)
    # the model's proposals beat uniform random points of the same budget
    rnd = np.random.default_rng(0).uniform(prob.lower, prob.upper, (60, 200))
    hv = lambda V: hypervolume(V, ["maximize", "maximize"], [0, 0])  # noqa: E731
    assert hv(V) > hv(np.array([deep_accuracies(x) for x in rnd]))
    # resumable: the state round-trips and the next proposals are the same
    again = make("turbo", prob, seed=0)
    again.load_state_dict(pickle.loads(pickle.dumps(s.state_dict())))
    assert same(s.ask(2), again.ask(2))


# ----------------------------------------------------------------------------- fidelity on


def _fidelity_result(c: Candidate, low: bool, n: int = 50, k: int = 10) -> TrialResult:
    """What the controller tells with fidelity on: accuracies over ``n`` examples with per-example
    scores and margins; ``low``: measured on the first ``k`` examples only (NaN elsewhere),
    flagged, with standard errors."""
    acc = two_accuracies(c.x)
    thr = (np.arange(n) + 0.5) / n
    M = {j: acc[j] - thr[np.random.default_rng(j).permutation(n)] for j in range(2)}
    if low:
        for j in M:
            M[j][k:] = np.nan
        vals = np.array([float((M[j][:k] > 0).mean()) for j in range(2)])
        se = np.sqrt(np.clip(vals * (1 - vals), 0.05, None) / k)
        ps = np.concatenate([np.where(np.isnan(M[j]), np.nan, M[j] > 0) for j in range(2)]).astype(np.float32)
        return TrialResult(c, vals, ps, None, M, fidelity=k / n, value_se=se)
    vals = np.array([float((M[j] > 0).mean()) for j in range(2)])
    return TrialResult(c, vals, np.concatenate([(M[j] > 0) for j in range(2)]).astype(np.float32), None, M)


@pytest.mark.parametrize("name", ALL)
def test_conformance_with_fidelity_on(name: str) -> None:
    """Every strategy takes a mix of full and flagged low-fidelity results (subset values,
    standard errors, per-example scores and margins with NaN where not scored): valid
    proposals, in order, and an exact rebuild from the logged calls (and from a snapshot)."""
    prob = problem(**UNEVEN)
    live = _Logged(make(name, prob, seed=4))
    rng = np.random.default_rng(0)
    cands = live.ask(3)
    for i in range(26):
        c = cands.pop(int(rng.integers(len(cands))))
        live.tell([_fidelity_result(c, low=i % 3 != 0)])
        got = live.ask(1)
        assert_candidates(got, prob)
        cands += got
    snap = statedata.encode(live.s.state_dict()) if live.s.snapshots else None
    at = len(live.events)
    restored = make(name, prob, seed=4)
    asked = live.rebuild(restored)
    assert sorted(asked) == sorted(c.id for c in cands)
    for step in range(4):
        a, b = live.s.ask(2), restored.ask(2)
        assert same(a, b), (step, a, b)
        assert_candidates(a, prob)
        live.s.tell([_fidelity_result(c, low=step % 2 == 0) for c in a])
        restored.tell([_fidelity_result(c, low=step % 2 == 0) for c in b])
    if snap is not None:
        again = make(name, prob, seed=4)
        again.load_state_dict(statedata.decode(*snap))
        live2 = _Logged(make(name, prob, seed=4))
        live2.events, live2.results, live2.cands = live.events[:at], live.results, live.cands
        live2.rebuild(again, after=at)  # nothing after the snapshot: the state alone
        ref = make(name, prob, seed=4)
        live2.rebuild(ref)
        assert same(again.ask(2), ref.ask(2))


def test_mobo_treats_low_fidelity_values_as_noisier() -> None:
    """The GP gives a value measured on a subset (known standard error) less pull than the
    same value measured on every example."""
    from search.strategies.gp import GaussianProcess

    X = np.array([[0.1], [0.5], [0.9]])
    y = np.array([0.2, 0.9, 0.3])
    exact, noisy = GaussianProcess(1), GaussianProcess(1)
    exact.condition(X, y)
    noisy.extra_noise = np.array([0.0, 0.3**2, 0.0])
    noisy.condition(X, y)
    at = np.array([[0.5]])
    assert abs(exact.predict(at)[0][0] - 0.9) < abs(noisy.predict(at)[0][0] - 0.9)
    assert noisy.predict(at)[1][0] > exact.predict(at)[1][0]
    # mobo feeds each low-fidelity result's standard errors to its GPs, and the margins the
    # subset did not score are filled from the margin model
    prob = problem(budget=40)
    s = make("mobo", prob, seed=1)
    for i in range(16):
        c = s.ask(1)[0]
        s.tell([_fidelity_result(c, low=i % 2 == 1)])
    assert sum(x is not None for x in s._S) == 8
    assert sorted(s._margin_data()) == [0, 1]
    assert_candidates(s.ask(2), prob)


@pytest.mark.parametrize("name", ["mobo", "turbo"])
def test_mobo_fills_a_subsets_unscored_margins_with_what_the_subset_showed(name: str) -> None:
    """A low-fidelity row's unscored margins are the margin model's prediction (from the rows
    that scored every example) shifted by that row's own mean residual on the examples it
    scored: a merge that did worse than predicted on its subset is predicted worse on the rest
    too, one that did better, better; a row that scored nothing keeps the prediction."""
    s = make(name, problem(budget=40), seed=1)
    rng = np.random.default_rng(0)
    d = s.problem.dim
    U = rng.random((10, d))
    w = rng.normal(size=(d, 12))
    Mj = U @ w - 0.3  # 12 examples' margins, smooth in u
    Mj[-1, :4] -= 0.8  # scored 4 examples, 0.8 worse than its neighbours there
    Mj[-1, 4:] = np.nan
    Mj[-2, :6] += 0.5  # scored 6, better
    Mj[-2, 6:] = np.nan
    Mj[-3, :] = np.nan  # scored none of this objective's examples
    filled = s._fill_unscored(U, Mj.copy(), 0)
    gp = s._new_margin_gp(s._mthetas[0])  # the strategy's own margin model (turbo's ties its kernel)
    gp.condition(U[:-3], Mj[:-3])
    pred = gp.predict_mean(U[-3:])
    worse = float(np.mean(Mj[-1, :4] - pred[2, :4]))
    better = float(np.mean(Mj[-2, :6] - pred[1, :6]))
    assert worse < -0.3 and better > 0.2
    np.testing.assert_allclose(filled[-1, 4:], pred[2, 4:] + worse, atol=1e-9)
    np.testing.assert_allclose(filled[-2, 6:], pred[1, 6:] + better, atol=1e-9)
    np.testing.assert_allclose(filled[-3], pred[0], atol=1e-9)
    np.testing.assert_array_equal(filled[:-3], Mj[:-3])  # full rows as they were
    np.testing.assert_array_equal(filled[-1, :4], Mj[-1, :4])  # scored margins as they were
    assert np.isfinite(filled).all()


def test_turbo_runs_with_the_logit_value_model() -> None:
    """turbo reads each model's lengthscales; the logit value model (value_warp: accuracies k/n
    without margins) passes them through."""
    s = make("turbo", problem(budget=40), value_warp=True, n_init=6)
    rng = np.random.default_rng(0)
    for _ in range(5):
        s.tell([TrialResult(c, np.array([rng.integers(0, 21) / 20, rng.integers(0, 21) / 20])) for c in s.ask(3)])
    assert len(s.ask(2)) == 2
