"""MAP: amortized Pareto fronts via quadratic approximation (Li et al. 2024), as a strategy.

What it does (docs/facts.md has the paper's recipe; the changes below fix the weak
spots seen when re-running its code):

1. **Initial design**, about ``(d+1)(d+2)`` points (twice the quadratic's parameters):
   the experts one-hot (and the problem's other seed points: base, uniform merge), then
   isotropic points ``(t, ..., t)``, isotropic points with Gaussian noise, one-hot points
   with Gaussian noise (sd 0.1 of the box), and a Latin hypercube fill in place of the
   paper's grid (a grid does not scale past a few dimensions).
2. **Surrogates** (:mod:`search.strategies.map_surrogate`), one per objective: ``y ~ link(q(u))`` with ``q`` a full quadratic in
   the box-normalised coordinates ``u in [0, 1]^d`` (squares, pairwise products, linear,
   constant: ``(d+1)(d+2)/2`` parameters). Link: ``sigmoid`` for metrics in [0, 1]
   (accuracies), ``softplus`` for non-negative ones (losses), ``identity`` otherwise;
   ``auto`` decides per objective from the measured values. Fit: a (ridge) linear least
   squares on the link scale (``logit`` of the clipped metric) gives the start of a
   nonlinear least squares fit on the metric scale (the paper's curve_fit started from all
   ones and often fitted badly).
3. **Front search** on the surrogates with pymoo's NSGA-II (NSGA-III for three or more
   objectives), restricted to the box spanned by the measured points plus a small margin
   (the paper searched a box wider than its samples, where the quadratic extrapolates
   freely). Candidates for real evaluation are picked greedily by *predicted* hypervolume
   improvement over the *measured* front (diversity in the coefficients when nothing is
   predicted to improve), skipping points already measured or pending.
4. **Bayesian MAP refinement**: measured points are binned by the hyperspherical angles
   of ``u`` (the mixing proportions, seen from the box's lower corner, i.e. the base
   model for weight bounds starting at 0); each bin's score is the mean squared fit error
   of its points plus 0.5 times the std of that mean over 30 random 80 % subsamples; the
   scores of all objectives (each divided by its maximum) are averaged and a softmax with
   temperature 0.07 picks bins; a new point gets uniform angles inside its bin and a uniform
   radius inside the box. Empty bins get the highest score (the paper gave them zero
   probability, so unexplored directions were never sampled).

Every proposal is a real evaluation and counts toward the budget; ``explore_fraction`` of
each round comes from step 4, the rest from step 3. The strategy only *proposes*:
surrogate predictions travel in ``Candidate.meta["surrogate_prediction"]`` for diagnosis
and are never results; the store holds measured values only.

**Nested MAP** (``nested``; by default when there are more than 4 experts): models start
as the experts' one-hot points; the two models whose measured objective vectors are
closest are merged by a 2-D MAP over ``a * model_A + b * model_B`` (``pair_points``
evaluations, about 20); the measured point of that stage preferred by ``preference``
(equal weights by default) among its measured Pareto set becomes a new model; repeat. The
last pair's 2-D MAP then uses the rest of the budget. Nested stages scale whole models, so
per-layer structure is not searched there.

Dimensions: the native setting is one coefficient per expert (``granularity: global``).
Layer-wise spaces work while the initial design ``(d+1)(d+2)`` fits in half the budget;
beyond that :meth:`MAPStrategy.check` (and the constructor) refuse with the numbers.

Asking ahead: proposals come in rounds of ``round_size``; a round is fitted on whatever has
been measured when it starts, so ``ask`` never has to wait. While fewer than ``(d+1)(d+2)/2 + 1``
design points have come back, extra asks get more space-filling design points.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field

from ..errors import ConfigError, ConfigIssue
from ..seeding import derive_seed
from .base import Candidate, Problem, Strategy, StrategyOptions, TrialResult
from .map_surrogate import (
    QuadSurrogate,
    auto_link,
    direction,
    fit_quadratic,
    hyperspherical_angles,
    n_quad_params,
)

LinkName = Literal["auto", "sigmoid", "softplus", "identity"]


class MAPOptions(StrategyOptions):
    n_init: int | None = Field(None, ge=2, description="initial design size (default (d+1)(d+2), twice the quadratic's parameters)")
    links: LinkName | list[LinkName] = Field("auto", description="surrogate link per objective (or one for all)")
    round_size: int = Field(8, ge=1, description="proposals per surrogate round")
    explore_fraction: float = Field(0.25, ge=0, le=1, description="share of each round drawn from high-error bins (Bayesian MAP)")
    temperature: float = Field(0.07, gt=0, description="softmax temperature over normalised bin scores")
    error_lambda: float = Field(0.5, ge=0, description="bin score = mean error + error_lambda * std over subsamples")
    n_subsamples: int = Field(30, ge=2, description="subsamples for the bin error std")
    bins_per_angle: int | None = Field(None, ge=1, description="angle bins per hyperspherical angle (default from the data size)")
    ea_pop: int = Field(48, ge=8, description="population of the EA run on the surrogates")
    ea_gens: int = Field(40, ge=1, description="generations of the EA run on the surrogates")
    trust_margin: float = Field(0.05, ge=0, le=1, description="margin around the measured points' box for the front search (fraction of the box)")
    ridge: float = Field(1e-6, ge=0, description="ridge penalty of the surrogate fits")
    nested: bool | None = Field(None, description="nested pairwise MAP (default: when there are more than nested_above experts)")
    nested_above: int = Field(4, ge=2)
    pair_points: int = Field(20, ge=6, description="evaluations per pairwise 2-D MAP stage in nested mode")
    preference: list[float] | None = Field(None, description="preference weights per objective for nested merges (default equal)")


# ----------------------------------------------------------------------------- stages


@dataclass
class _Stage:
    """One MAP run over ``x = clip(offset + M @ (zmax * u))``, ``u in [0, 1]^k``."""

    offset: np.ndarray
    M: np.ndarray  # (dim, k)
    zmax: np.ndarray  # (k,)
    budget: int | None  # evaluations of this stage (None: the rest of the run)
    label: str = "map"
    pair: tuple[int, int] | None = None  # nested: indices into the model list
    U: list[np.ndarray] = field(default_factory=list)  # measured points
    Y: list[np.ndarray] = field(default_factory=list)
    cids: list[int] = field(default_factory=list)  # candidate id of each measured point (-1: known model)
    tags: list[Any] = field(default_factory=list)  # e.g. the expert's name for one-hot points
    queue: list[tuple[np.ndarray, str, Any]] = field(default_factory=list)
    pending: dict[int, tuple[np.ndarray, Any, bool]] = field(default_factory=dict)  # cid -> (u, tag, counted)
    n_asked: int = 0
    n_resolved: int = 0
    n_design: int = 0
    rounds: int = 0

    @property
    def k(self) -> int:
        return int(self.M.shape[1])


class MAPStrategy(Strategy):
    name = "map"
    Options = MAPOptions

    def __init__(self, problem: Problem, options=None, seed: int = 0):
        super().__init__(problem, options, seed)
        o: MAPOptions = self.options  # type: ignore[assignment]
        self._lo = np.asarray(problem.lower, dtype=np.float64)
        self._hi = np.asarray(problem.upper, dtype=np.float64)
        self._width = self._hi - self._lo
        self._signs = np.array([ob.sign for ob in problem.objectives])
        self._experts = _expert_points(problem)
        n_exp = len(self._experts)
        self._nested = o.nested if o.nested is not None else n_exp > o.nested_above
        if self._nested and n_exp < 3:
            self._nested = False
        msg = _refusal(problem.dim, problem.budget, n_exp, self._nested, o)
        if msg:
            raise ConfigError(ConfigIssue("strategy", msg))
        if isinstance(o.links, list) and len(o.links) != problem.n_obj:
            raise ConfigError(ConfigIssue("strategy.options.links", f"{len(o.links)} links for {problem.n_obj} objectives"))
        if o.preference is not None and len(o.preference) != problem.n_obj:
            raise ConfigError(ConfigIssue("strategy.options.preference", f"{len(o.preference)} weights for {problem.n_obj} objectives"))
        self._rng = np.random.default_rng(derive_seed("map", self.seed))
        self._next_id = 0
        self._records: dict[int, int] = {}  # candidate id -> stage index (pending candidates only)
        self._n_told = 0
        self._n_ok = 0
        self._models: list[dict[str, Any]] = []  # nested: {"label", "x", "y"}
        self._stages: list[_Stage] = []
        if self._nested:
            # stage 0 measures the experts themselves
            self._stages.append(self._expert_stage())
        else:
            self._stages.append(self._flat_stage())
            self._enqueue_design(self._stages[0])

    # ------------------------------------------------------------------ stage construction
    def _flat_stage(self) -> _Stage:
        return _Stage(offset=self._lo.copy(), M=np.diag(self._width), zmax=np.ones(self.problem.dim), budget=None)

    def _expert_stage(self) -> _Stage:
        st = _Stage(offset=self._lo.copy(), M=np.diag(self._width), zmax=np.ones(self.problem.dim),
                    budget=len(self._experts), label="experts")
        for name, x in self._experts:
            st.queue.append((self._x_to_u(st, x), "expert", name))
        return st

    def _pair_stage(self, i: int, j: int, final: bool) -> _Stage:
        A, B = self._models[i], self._models[j]
        M = np.column_stack([A["x"], B["x"]])
        zmax = np.array([_scale_limit(A["x"], self._lo, self._hi), _scale_limit(B["x"], self._lo, self._hi)])
        st = _Stage(offset=np.zeros(self.problem.dim), M=M, zmax=zmax, budget=None if final else self.options.pair_points,
                    label=f"pair:{A['label']}+{B['label']}", pair=(i, j))
        # the two models are the stage's one-hot points and are already measured
        for m, col in ((A, 0), (B, 1)):
            u = np.zeros(2)
            u[col] = 1.0 / zmax[col]
            st.U.append(u)
            st.Y.append(np.asarray(m["y"], dtype=np.float64))
            st.cids.append(-1)
            st.tags.append(m["label"])
        self._enqueue_design(st, anchors=[])
        return st

    def _x_to_u(self, st: _Stage, x: np.ndarray) -> np.ndarray:
        """Inverse of the stage map for axis-aligned stages (flat / experts)."""
        return np.clip((np.asarray(x, dtype=np.float64) - st.offset) / (np.diag(st.M) * st.zmax), 0.0, 1.0)

    def _u_to_x(self, st: _Stage, u: np.ndarray) -> np.ndarray:
        return np.clip(st.offset + st.M @ (st.zmax * np.asarray(u, dtype=np.float64)), self._lo, self._hi)

    def _design_size(self, st: _Stage) -> int:
        k = st.k
        n = self.options.n_init if (self.options.n_init and st.pair is None) else (k + 1) * (k + 2)
        if st.budget is not None:
            n = min(n, max(st.budget - 2, 1))
        return int(n)

    def _enqueue_design(self, st: _Stage, anchors: list[np.ndarray] | None = None) -> None:
        k = st.k
        n = self._design_size(st) - len(st.U)
        pts: list[tuple[np.ndarray, str, Any]] = []
        if anchors is None:  # flat stage: experts one-hot and the other seeds first
            anchors = []
            names = []
            for name, x in list(self._experts) + [(nm, x) for nm, x in self.problem.seeds]:
                u = self._x_to_u(st, x)
                if not any(np.allclose(u, a) for a in anchors):
                    anchors.append(u)
                    names.append(name)
            pts += [(u, "design:seed", nm) for u, nm in zip(anchors, names, strict=True)]
        if len(pts) > n:
            pts = pts[: max(n, 0)]
        rest = max(n - len(pts), 0)
        n_iso = rest // 4
        n_piso = rest // 4
        n_poh = rest // 4 if anchors else 0
        n_lhs = rest - n_iso - n_piso - n_poh
        t = self._rng.random(n_iso + n_piso)
        iso = [np.full(k, ti) for ti in t]
        pts += [(u, "design:isotropic", None) for u in iso[:n_iso]]
        for u in iso[n_iso:]:
            pts.append((np.clip(u + self._rng.normal(0, 0.1, k), 0, 1), "design:isotropic+noise", None))
        for _ in range(n_poh):
            a = anchors[int(self._rng.integers(len(anchors)))]
            pts.append((np.clip(a + self._rng.normal(0, 0.1, k), 0, 1), "design:onehot+noise", None))
        if n_lhs > 0:
            pts += [(u, "design:lhs", None) for u in self._lhs(k, n_lhs)]
        st.queue += pts
        st.n_design = len(st.U) + len(pts)

    def _lhs(self, k: int, n: int) -> np.ndarray:
        from scipy.stats import qmc

        return qmc.LatinHypercube(d=k, rng=self._rng).random(n)

    # ------------------------------------------------------------------ data helpers
    @property
    def _stage(self) -> _Stage:
        return self._stages[-1]

    def _links(self, Y: np.ndarray) -> list[str]:
        o = self.options.links
        names = o if isinstance(o, list) else [o] * self.problem.n_obj
        return [auto_link(Y[:, i]) if nm == "auto" else nm for i, nm in enumerate(names)]

    def _fit(self, st: _Stage) -> list[QuadSurrogate] | None:
        if len(st.U) < 3:
            return None
        U, Y = np.asarray(st.U), np.asarray(st.Y)
        links = self._links(Y)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return [fit_quadratic(U, Y[:, i], links[i], self.options.ridge) for i in range(self.problem.n_obj)]

    def _known(self, st: _Stage) -> np.ndarray:
        pts = list(st.U) + [v[0] for v in st.pending.values()] + [q[0] for q in st.queue]
        return np.asarray(pts) if pts else np.zeros((0, st.k))

    # ------------------------------------------------------------------ proposals
    def _new_round(self, st: _Stage, n_min: int) -> None:
        """Fit on everything measured so far and queue a round of proposals."""
        o = self.options
        k = st.k
        size = max(o.round_size, n_min)
        if st.budget is not None:
            size = max(1, min(size, st.budget - st.n_asked))
        models = self._fit(st) if len(st.U) >= n_quad_params(k) + 1 else None
        if models is None:
            # not enough measured points for a quadratic yet: more space-filling design points
            st.queue += [(u, "design:lhs", None) for u in self._lhs(k, size)]
            return
        st.rounds += 1
        n_explore = int(round(o.explore_fraction * size))
        n_front = size - n_explore
        chosen: list[np.ndarray] = []
        front = self._front_points(st, models, n_front) if n_front else []
        for u, pred in front:
            st.queue.append((u, "front", pred))
            chosen.append(u)
        n_explore = size - len(front)
        for u in self._bayes_points(st, models, n_explore):
            pred = [float(m.predict(u[None])[0]) for m in models]
            st.queue.append((u, "refine", pred))

    def _front_points(self, st: _Stage, models: list[QuadSurrogate], n: int) -> list[tuple[np.ndarray, list[float]]]:
        from pymoo.core.problem import Problem as PymooProblem
        from pymoo.optimize import minimize

        from ..pareto import hypervolume, pareto_mask

        k, n_obj = st.k, self.problem.n_obj
        U = np.asarray(st.U)
        m = self.options.trust_margin
        xl = np.clip(U.min(axis=0) - m, 0, 1)
        xu = np.clip(U.max(axis=0) + m, 0, 1)
        xu = np.maximum(xu, xl + 1e-6)
        signs = self._signs

        class _Surrogates(PymooProblem):
            def __init__(self):
                super().__init__(n_var=k, n_obj=n_obj, xl=xl, xu=xu)

            def _evaluate(self, X, out, *args, **kwargs):
                out["F"] = np.column_stack([mdl.predict(X) for mdl in models]) * signs

        algo = self._ea(n_obj)
        ea_seed = int(self._rng.integers(2**31 - 1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = minimize(_Surrogates(), algo, ("n_gen", self.options.ea_gens), seed=ea_seed, verbose=False)
        if res.X is None:
            return []
        CX = np.atleast_2d(np.asarray(res.X, dtype=np.float64)).reshape(-1, k)
        CF = np.atleast_2d(np.asarray(res.F, dtype=np.float64)).reshape(-1, n_obj)  # minimisation-signed predictions
        # candidates: the predicted front plus the final population, not already known
        if res.pop is not None:
            PX, PF = res.pop.get("X"), res.pop.get("F")
            CX, CF = np.vstack([CX, PX]), np.vstack([CF, PF])
        known = self._known(st)
        tol = 1e-3 * math.sqrt(k)
        keep = [i for i in range(len(CX)) if len(known) == 0 or np.min(np.linalg.norm(known - CX[i], axis=1)) > tol]
        CX, CF = CX[keep], CF[keep]
        if len(CX) == 0:
            return []
        # greedy predicted hypervolume improvement over the measured front
        Ymeas = np.asarray(st.Y) * signs  # minimisation-signed
        Ymeas = Ymeas[pareto_mask(Ymeas, ["minimize"] * n_obj)]
        allF = np.vstack([Ymeas, CF])
        lo, hi = allF.min(axis=0), allF.max(axis=0)
        span = np.where(hi - lo > 1e-12, hi - lo, 1.0)
        ref = hi + 0.1 * span
        dirs = ["minimize"] * n_obj
        base_set = [f for f in Ymeas]
        base_hv = hypervolume(np.asarray(base_set) if base_set else np.zeros((0, n_obj)), dirs, ref)
        chosen: list[int] = []
        out: list[tuple[np.ndarray, list[float]]] = []
        # only candidates not dominated by the measured front can add volume
        if len(Ymeas):
            dom = np.array([np.any(np.all(Ymeas <= f, axis=1) & np.any(Ymeas < f, axis=1)) for f in CF])
        else:
            dom = np.zeros(len(CF), dtype=bool)
        for _ in range(n):
            best_i, best_gain = -1, 1e-12 * float(np.prod(span))
            for i in range(len(CX)):
                if i in chosen or dom[i]:
                    continue
                if any(np.linalg.norm(CX[i] - CX[j]) <= tol for j in chosen):
                    continue
                hv = hypervolume(np.asarray(base_set + [CF[i]]), dirs, ref)
                if hv - base_hv > best_gain:
                    best_i, best_gain = i, hv - base_hv
            if best_i < 0:
                break
            chosen.append(best_i)
            base_set.append(CF[best_i])
            base_hv += best_gain
        # nothing predicted to improve: spread out over the predicted front in coefficient space
        while len(chosen) < min(n, len(CX)):
            pts = np.vstack([known] + [CX[j][None] for j in chosen]) if (len(known) or chosen) else np.zeros((0, k))
            d = np.array([np.min(np.linalg.norm(pts - CX[i], axis=1)) if len(pts) else 1.0 for i in range(len(CX))])
            d[chosen] = -1
            i = int(np.argmax(d))
            if d[i] <= tol:
                break
            chosen.append(i)
        for i in chosen:
            out.append((CX[i].copy(), [float(v) for v in CF[i] * signs]))
        return out

    def _ea(self, n_obj: int):
        if n_obj >= 3:
            from pymoo.algorithms.moo.nsga3 import NSGA3
            from pymoo.util.ref_dirs import get_reference_directions

            parts = max(2, int(round(self.options.ea_pop ** (1 / (n_obj - 1)))))
            dirs = get_reference_directions("das-dennis", n_obj, n_partitions=parts)
            while len(dirs) > self.options.ea_pop and parts > 1:
                parts -= 1
                dirs = get_reference_directions("das-dennis", n_obj, n_partitions=parts)
            return NSGA3(ref_dirs=dirs, pop_size=max(self.options.ea_pop, len(dirs)))
        from pymoo.algorithms.moo.nsga2 import NSGA2

        return NSGA2(pop_size=self.options.ea_pop)

    def _bin_scores(self, st: _Stage, models: list[QuadSurrogate]) -> tuple[np.ndarray, int, int]:
        """Normalised score per angle bin (flattened), bins per angle, number of angles."""
        o = self.options
        U, Y = np.asarray(st.U), np.asarray(st.Y)
        n, k = U.shape
        n_ang = max(k - 1, 1)
        if o.bins_per_angle:
            B = o.bins_per_angle
        else:
            B = int(max(2, min(8, math.floor((n / 2) ** (1.0 / n_ang)))))
        B = max(1, min(B, int(max(2, 8192 ** (1.0 / n_ang)))))
        n_bins = B**n_ang
        phi = hyperspherical_angles(U)
        idx = np.clip(np.floor(phi / (np.pi / 2) * B).astype(int), 0, B - 1)
        flat = np.ravel_multi_index(tuple(idx.T), (B,) * n_ang) if n_ang > 1 else idx[:, 0]
        keepmask = self._rng.random((o.n_subsamples, n)) >= 0.2
        total = np.zeros(n_bins)
        for j, mdl in enumerate(models):
            err = (mdl.predict(U) - Y[:, j]) ** 2
            cnt = np.bincount(flat, minlength=n_bins).astype(float)
            mean = np.bincount(flat, weights=err, minlength=n_bins) / np.maximum(cnt, 1)
            subs = []
            for s in range(o.n_subsamples):
                w = keepmask[s].astype(float)
                c = np.bincount(flat, weights=w, minlength=n_bins)
                mm = np.bincount(flat, weights=err * w, minlength=n_bins) / np.maximum(c, 1)
                subs.append(np.where(c > 0, mm, np.nan))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                std = np.nan_to_num(np.nanstd(np.asarray(subs), axis=0))
            score = mean + o.error_lambda * std
            occupied = cnt > 0
            top = score[occupied].max() if occupied.any() else 0.0
            score = np.where(occupied, score, top)  # unexplored directions score as the worst fitted ones
            total += score / top if top > 0 else np.ones(n_bins)
        return total / len(models), B, n_ang

    def _bayes_points(self, st: _Stage, models: list[QuadSurrogate], n: int) -> list[np.ndarray]:
        if n <= 0:
            return []
        k = st.k
        scores, B, n_ang = self._bin_scores(st, models)
        z = (scores - scores.max()) / self.options.temperature
        p = np.exp(z)
        p /= p.sum()
        bins = self._rng.choice(len(p), size=n, p=p)
        out = []
        width = (np.pi / 2) / B
        for b in bins:
            if k == 1:
                lo = (b / B)
                out.append(np.array([lo + self._rng.random() / B]))
                continue
            cell = np.unravel_index(int(b), (B,) * n_ang)
            phi = np.array([(c + self._rng.random()) * width for c in cell])
            v = direction(phi)
            rmax = 1.0 / max(v.max(), 1e-12)
            out.append(np.clip(v * rmax * self._rng.random(), 0, 1))
        return out

    # ------------------------------------------------------------------ nested bookkeeping
    def _maybe_advance(self) -> None:
        """Close finished nested stages and open the next pairwise stage."""
        if not self._nested:
            return
        while True:
            st = self._stage
            if st.budget is None or st.n_resolved < st.budget:
                return
            if st.label == "experts":
                measured = dict(zip(st.tags, st.Y, strict=True))
                self._models = [
                    {"label": name, "x": np.asarray(x, dtype=np.float64), "y": np.asarray(measured[name])}
                    for name, x in self._experts
                    if name in measured
                ]
                if len(self._models) < 2:  # experts failed: fall back to a flat MAP
                    self._nested = False
                    self._stages.append(self._flat_stage())
                    self._enqueue_design(self._stages[-1])
                    return
            else:
                self._close_pair(st)
            i, j = self._closest_pair()
            final = len(self._models) == 2
            self._stages.append(self._pair_stage(i, j, final))

    def _close_pair(self, st: _Stage) -> None:
        from ..pareto import pareto_mask

        Y = np.asarray(st.Y)
        U = np.asarray(st.U)
        dirs = [ob.direction for ob in self.problem.objectives]
        mask = pareto_mask(Y, dirs)
        G = Y * (-self._signs)  # larger is better
        lo, hi = G.min(axis=0), G.max(axis=0)
        Gn = (G - lo) / np.where(hi - lo > 1e-12, hi - lo, 1.0)
        pref = np.asarray(self.options.preference or [1.0] * self.problem.n_obj, dtype=np.float64)
        score = np.where(mask, Gn @ pref, -np.inf)
        b = int(np.argmax(score))
        i, j = st.pair  # type: ignore[misc]
        A, B = self._models[i], self._models[j]
        new = {"label": f"({A['label']}+{B['label']})", "x": self._u_to_x(st, U[b]), "y": Y[b]}
        self._models = [m for t, m in enumerate(self._models) if t not in (i, j)] + [new]

    def _closest_pair(self) -> tuple[int, int]:
        Y = np.asarray([m["y"] for m in self._models], dtype=np.float64)
        lo, hi = Y.min(axis=0), Y.max(axis=0)
        Yn = (Y - lo) / np.where(hi - lo > 1e-12, hi - lo, 1.0)
        best, pair = np.inf, (0, 1)
        for i in range(len(Y)):
            for j in range(i + 1, len(Y)):
                dd = float(np.sum((Yn[i] - Yn[j]) ** 2))
                if dd < best:
                    best, pair = dd, (i, j)
        return pair

    # ------------------------------------------------------------------ protocol
    def ask(self, n: int) -> list[Candidate]:
        out: list[Candidate] = []
        guard = 0
        while len(out) < n and guard < 1000:
            guard += 1
            st = self._stage
            if st.budget is not None and st.n_asked >= st.budget:
                if st.label == "experts" or not self._nested:
                    # waiting for the experts' scores: explore convex-ish mixtures meanwhile
                    u = self._x_to_u(self._stages[0], self._mixture())
                    out.append(self._emit(st, u, "waiting:mixture", None, count=False))
                    continue
                # pair stage fully asked but not finished: extra points in the same stage
                if not st.queue:
                    self._new_round(st, n - len(out))
                u, kind, info = st.queue.pop(0)
                out.append(self._emit(st, u, kind + ":extra", info, count=False))
                continue
            if not st.queue:
                self._new_round(st, n - len(out))
            u, kind, info = st.queue.pop(0)
            out.append(self._emit(st, u, kind, info))
        return out

    def _mixture(self) -> np.ndarray:
        w = self._rng.dirichlet(np.ones(len(self._experts)))
        s = self._rng.uniform(0.5, 1.5)
        x = sum(wi * s * np.asarray(x) for wi, (_, x) in zip(w, self._experts, strict=True))
        return np.clip(x, self._lo, self._hi)

    def _emit(self, st: _Stage, u: np.ndarray, kind: str, info: Any, count: bool = True) -> Candidate:
        cid = self._next_id
        self._next_id += 1
        x = self._u_to_x(st, u)
        meta: dict[str, Any] = {"kind": kind, "stage": st.label}
        if kind.startswith(("front", "refine")) and info is not None:
            meta["surrogate_prediction"] = info
        if kind.startswith("design:seed") or kind == "expert":
            meta["seed"] = info
        if count:
            st.n_asked += 1
        st.pending[cid] = (np.asarray(u, dtype=np.float64), info if kind == "expert" else None, count)
        self._records[cid] = len(self._stages) - 1
        return Candidate(x, cid, generation=len(self._stages) - 1 if self._nested else st.rounds, meta=meta)

    def tell(self, results: Sequence[TrialResult]) -> None:
        for r in results:
            cid = int(r.candidate.id)
            self._next_id = max(self._next_id, cid + 1)
            self._n_told += 1
            si = self._records.pop(cid, None)
            ok = r.ok and np.asarray(r.values).reshape(-1).shape == (self.problem.n_obj,)
            self._n_ok += int(ok)
            if si is None:
                # not proposed by this instance (replay): use it in a flat MAP
                if ok and not self._nested:
                    st = self._stages[0]
                    st.U.append(self._x_to_u(st, r.candidate.x))
                    st.Y.append(np.asarray(r.values, dtype=np.float64).reshape(-1))
                    st.cids.append(cid)
                    st.tags.append(None)
                continue
            st = self._stages[si]
            u, tag, counted = st.pending.pop(cid)
            # the experts stage closes on its own points; other stages on any of theirs
            if counted or st.label != "experts":
                st.n_resolved += 1
            if ok and (counted or st.label != "experts"):
                st.U.append(u)
                st.Y.append(np.asarray(r.values, dtype=np.float64).reshape(-1))
                st.cids.append(cid)
                st.tags.append(tag)
        self._maybe_advance()

    # ------------------------------------------------------------------ validation
    def _refuse_unfit_options(self) -> None:
        """``__init__`` refuses with field-path ConfigErrors, from the expert points it finds."""

    @classmethod
    def check(cls, options: StrategyOptions, problem_info: dict[str, Any]) -> list[str]:
        o: MAPOptions = options  # type: ignore[assignment]
        cfg = problem_info.get("config")
        dim = problem_info.get("dim")
        budget = problem_info.get("budget")
        n_exp = problem_info.get("n_experts")
        if cfg is not None:
            budget = budget if budget is not None else cfg.strategy.budget
            n_exp = n_exp if n_exp is not None else len(cfg.models.experts)
            if dim is None:
                dim = _dim_from_config(cfg)
        msgs = []
        n_obj = problem_info.get("n_objectives")
        if isinstance(o.links, list) and n_obj is not None and len(o.links) != n_obj:
            msgs.append(f"links has {len(o.links)} entries but there are {n_obj} objectives")
        if o.preference is not None and n_obj is not None and len(o.preference) != n_obj:
            msgs.append(f"preference has {len(o.preference)} weights but there are {n_obj} objectives")
        if dim is not None and budget is not None:
            nested = o.nested if o.nested is not None else (n_exp or 0) > o.nested_above
            msg = _refusal(int(dim), int(budget), int(n_exp or 0), bool(nested and (n_exp or 0) >= 3), o)
            if msg:
                msgs.append(msg)
        return msgs


# ----------------------------------------------------------------------------- module helpers


def _refusal(dim: int, budget: int, n_experts: int, nested: bool, o: MAPOptions) -> str | None:
    if nested:
        need = n_experts + (n_experts - 1) * (o.pair_points - 2)
        if budget < need:
            return (
                f"nested MAP with {n_experts} experts needs about {need} evaluations "
                f"({n_experts} experts + {n_experts - 1} pairwise stages of {o.pair_points - 2} new points); "
                f"the budget is {budget}. Raise strategy.budget, lower options.pair_points, or use nsga2 / m2n2."
            )
        return None
    p = n_quad_params(dim)
    if 2 * p > budget / 2:
        # largest dimension that fits
        dmax = 0
        while 2 * n_quad_params(dmax + 1) <= budget / 2:
            dmax += 1
        return (
            f"map fits one quadratic per objective with (d+1)(d+2)/2 = {p} parameters and needs about "
            f"2 x {p} = {2 * p} evaluations for its initial design, at most half of the budget: this space has "
            f"d = {dim} coordinates and the budget is {budget} (d <= {dmax} fits). Use merge.granularity: global "
            f"(one coefficient per expert) or block:K with fewer layer groups, raise strategy.budget to at least "
            f"{4 * p}, or pick nsga2 / cmaes / m2n2 for layer-wise spaces."
        )
    return None


def _scale_limit(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """Largest s with s * x inside [lo, hi] (for x >= 0 coordinates), at least 1."""
    x = np.asarray(x, dtype=np.float64)
    pos = x > 1e-12
    if not pos.any():
        return 1.0
    return float(max(1.0, np.min(hi[pos] / x[pos])))


def _expert_points(problem: Problem) -> list[tuple[str, np.ndarray]]:
    """One-hot points per expert: weight 1 for that expert in every group, 0 for the others.

    From coordinate names ``<group>/<expert>/<param>`` when available (other parameters at
    their box middle, like :meth:`CoefficientSpace.point`); else from seed points that are
    not the base/uniform ones; else unit vectors when each coordinate is one expert.
    """
    lo, hi = np.asarray(problem.lower, dtype=np.float64), np.asarray(problem.upper, dtype=np.float64)
    names = problem.names
    if names and all(n.count("/") >= 2 for n in names):
        parts = [n.rsplit("/", 2) for n in names]
        experts: list[str] = []
        for _, e, _ in parts:
            if e not in experts:
                experts.append(e)
        if any(p == "weight" for _, _, p in parts):
            out = []
            for e in experts:
                x = (lo + hi) / 2
                for i, (_, ee, p) in enumerate(parts):
                    if p == "weight":
                        x[i] = 1.0 if ee == e else 0.0
                out.append((e, np.clip(x, lo, hi)))
            return out
    seeds = [(n, np.asarray(x, dtype=np.float64)) for n, x in problem.seeds if n not in ("base", "uniform")]
    if seeds:
        return [(n, np.clip(x, lo, hi)) for n, x in seeds]
    if problem.n_experts in (0, problem.dim):
        return [(f"e{i}", np.clip(np.eye(problem.dim)[i], lo, hi)) for i in range(problem.dim)]
    return []


def _dim_from_config(cfg: Any) -> int | None:
    """The coordinates of the configured space estimated from safetensors headers only (no
    weights loaded); in the usual layouts a lower bound on the real count."""
    n_exp = len(cfg.models.experts)
    n_par = len(cfg.merge.search)
    if cfg.merge.granularity == "global":
        return n_exp * n_par
    try:
        from pathlib import Path

        from ..models import is_zoo, safetensors_shapes
        from ..space import CoefficientSpace

        src = cfg.models.base
        if is_zoo(src):
            from ..zoo import zoo_path

            folder = Path(zoo_path(src, build=False))
        else:
            folder = cfg.resolve(src)
        shapes = safetensors_shapes(folder) if folder.is_dir() else None
        if not shapes:
            return None
        # the header lists names alphabetically and safetensors_shapes guesses the model's order from
        # them: the smaller count of the two, so that this early estimate does not refuse a space the
        # real one (the constructor's check) would accept when the model's order is either of them
        experts = [e.name for e in cfg.models.experts]
        orders = {tuple(sorted(shapes)), tuple(shapes)}  # one build when the two agree
        return min(CoefficientSpace.build(list(names), experts, cfg.merge).dim for names in orders)
    except Exception:  # noqa: BLE001 - unknown here; the constructor checks again with the real space
        return None
