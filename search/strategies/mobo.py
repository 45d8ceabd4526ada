"""MOBO: multi-objective Bayesian optimisation with Gaussian processes and hypervolume improvement.

Model-based search for the budgets merging allows (tens to hundreds of evaluations) in the
dimensions layer-wise merging has (a few to a few dozen coefficients):

1. Initial design: the problem's seed points (each expert alone, the base, the uniform
   merge) then scrambled Sobol points, ``n_init`` in all (default: the seeds and one Sobol
   point; the model takes over early, which is what wins at 25-50 evaluations).
2. One GP per objective (:mod:`search.strategies.gp`: Matern 5/2, ARD lengthscales, fitted
   noise) on the coefficients scaled to the unit cube; objectives are minimisation-signed,
   so a direction is never lost. Hyperparameters are refitted after every result early on,
   then every ``n/25`` results; between refits the GPs only re-condition on new data.
   Accuracies whose evaluator reports per-example margins (``TrialResult.margins``, e.g.
   the true class's logit minus the best other one) are predicted from those instead
   (``margins``, on by default): one GP per example, all sharing a kernel fitted on the
   margins' first principal component, and the predicted accuracy is the fraction of
   examples with a positive predicted margin. An accuracy on a few hundred examples is a
   step function of the coefficients that a GP on the accuracy smooths away (its steps are
   what separates a good front member from a lucky one); the margins are smooth, so their
   model predicts the steps. On the digits benchmark (``bench/bench_strategies.py``) this
   takes mobo at 200 evaluations from 0.975 to 1.006 of a 4000-evaluation NSGA-II run (2
   objectives; held out 0.993 -> 0.986: some of what it resolves is validation luck) and
   from 0.905 to 1.059 (3 objectives; held out 0.927 -> 1.016). The value GP still gives
   the prediction's uncertainty, scaled by the smaller ``margin_beta``.
   An accuracy without margins whose values are fractions k/n of one example count (the
   smallest n that fits every value seen, once they take 3 levels) is modelled on the
   empirical-logit scale ``log((k + 0.5) / (n - k + 0.5))`` (``value_warp``): accuracies
   saturate at 0 and 1, and the logit straightens the plateaus a stationary GP bends around;
   each observation carries that logit's binomial variance ``1/(k + 0.5) + 1/(n - k + 0.5)``
   as known noise (``value_noise``), and its optimism is ``value_beta`` (0.3). Predictions
   map back through the inverse (the standard deviation by the delta method). With the
   margins hidden (``bench/bench_strategies.py``, 5 seeds, fractions of a pool that includes
   mobo with margins) this took mobo at 25 / 50 / 100 / 200 evaluations from 0.351 / 0.626 /
   0.739 / 0.821 to 0.489 / 0.744 / 0.816 / 0.862 on digits3 (margins: 0.960 at 200), and
   from 0.842 / 0.916 to 0.907 / 0.941 at 25 / 50 on digits (equal from 100 on).
3. Acquisition: the hypervolume the optimistic prediction ``mean - beta * sd`` (every
   objective minimised) would add to the measured front (SMS-EGO's criterion, as in
   Ponweiser et al. 2008), exact for two objectives and a shared-sample Monte Carlo
   estimate for more. The reference point is the worst measured value of each objective
   (plus ``ref_margin`` of its range: a margin makes the front's two ends worth more, and
   on the digits benchmark spent late evaluations there). When no candidate's optimistic
   prediction improves the front, the candidate needing the smallest additive shift to
   become non-dominated is chosen.
4. Candidates: Sobol points over the box, Gaussian perturbations of measured front
   members (several scales, a random subset of coordinates each), then a finer local
   refinement around the best few; the best is proposed.
5. Local moves: once ``local_after`` results are in, a ``local_fraction`` share of the
   proposals (0.7; none when every objective is predicted from margins, whose model
   already resolves the steps) are small moves from the measured front: a pair of
   neighbouring front members is drawn in proportion to the empty rectangle between them
   (crowding distance with more objectives), and a move is a blend of the pair or one of
   them, with Gaussian noise; ``screen`` such moves are drawn and the acquisition above
   picks one (``screen: 0`` proposes a move unscored, and then no GP is fitted for a step
   made only of moves).
   Metrics such as accuracy on a few hundred examples are step functions; the GPs smooth
   the steps out, and late in a run the front improves mostly by such small moves, while
   the model keeps them off the moves it can already tell are worse.
6. Batches and asking ahead: a point proposed but not yet told is a "fantasy" observation
   at its predicted mean (kriging believer), so two outstanding proposals do not coincide.
   An ask for fewer than ``batch_from`` (4) proposals adds each member as a fantasy too
   (every GP re-conditioned, a new candidate pool scored per member: the path the numbers
   above were measured on, one proposal at a time). An ask for more, as a cluster makes when
   many trials finish together, is one model step: the GPs are conditioned once, one pool is
   scored, and the members are picked greedily, each chosen point's optimistic prediction
   joining the front the rest is scored against, so that its neighbours lose the improvement
   it claims. Its marginal cost per proposal is one re-scoring of the pool's predictions.
7. Proposing runs with one BLAS thread (``blas_threads``): the matrices are a few hundred
   rows, and on a loaded 2-core host a second thread made proposing several times slower
   (README, "Scaling"); one thread proposes exactly what runs with ``OMP_NUM_THREADS=1``
   (as ``bench/bench_strategies.py`` sets) propose.

Failed results (no values, NaN, inf) stay out of the models: a failure (a crash, a
timeout, an out-of-memory) usually says nothing about the objectives there, and a fake
worst value would bend the surrogate around it. A failed point is never proposed again.
``state_dict`` holds every observation, the pending points, the fitted hyperparameters and
the random state, all as plain data, so a resumed run proposes exactly what the
uninterrupted run would have without repeating the model fits of the whole run.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from ..pareto import hv_improvement, pareto_mask
from .base import Candidate, Strategy, StrategyOptions, TrialResult
from .gp import GaussianProcess, SharedKernelGP
from .subset import min_front, model_rows


class MOBOOptions(StrategyOptions):
    n_init: int | None = Field(None, ge=2, description="initial design size incl. seed points (default: the seeds + 1 Sobol point, or dim + 1 without seeds; at most budget / 4)")
    beta: float = Field(1.0, ge=0.0, description="optimism of the acquisition: the prediction used is mean - beta * sd (minimised)")
    n_candidates: int = Field(2048, ge=64, description="candidate points scored per proposal")
    include_seeds: bool = Field(True, description="start with the problem's seed points (experts, base, uniform)")
    ref_margin: float = Field(0.0, ge=0.0, description="reference point = worst measured value + this fraction of the measured range, per objective")
    local_fraction: float | None = Field(None, ge=0.0, le=1.0, description="share of proposals, after local_after results, that are small moves from the measured front (default: 0.7, or 0 when every objective is predicted from margins)")
    local_after: int = Field(50, ge=0, description="results before local moves start")
    screen: int = Field(16, ge=0, description="local moves drawn per local proposal; the model's acquisition picks one (0: unscored)")
    max_dim: int = Field(64, ge=1, description="largest search dimension accepted (GP models degrade far beyond it)")
    margins: bool = Field(True, description="predict an accuracy from its per-example margins when the evaluator reports them")
    margin_beta: float = Field(0.1, ge=0.0, description="optimism (as beta) for accuracies predicted from margins: their mean is sharp, so less is needed")
    value_warp: bool = Field(True, description="model an accuracy without margins (values k/n on a common n) on the empirical-logit scale")
    value_noise: bool = Field(True, description="with value_warp: the binomial variance of each empirical logit as known per-point noise")
    value_beta: float = Field(0.3, ge=0.0, description="optimism (as beta) for accuracies modelled with value_warp")
    max_model_points: int | None = Field(500, ge=16, description="past this many successful results the models are conditioned on a subset of this size: half nearest the front, half random (None: all)")
    max_fit_points: int | None = Field(200, ge=16, description="hyperparameters are fitted on a subset of at most this many of those points (None: all)")
    batch_from: int | None = Field(4, ge=2, description="an ask for at least this many proposals (past the initial design) picks them all from one scored candidate pool, "
                                   "each chosen point's optimistic prediction joining the front it is scored against, instead of "
                                   "re-conditioning every GP and scoring a new pool per proposal (None: never)")
    blas_threads: int | None = Field(1, ge=1, description="BLAS threads while proposing (matrices of a few hundred rows: more threads "
                                     "cost more than they gain, most on a loaded host; None: the process's setting)")


class MOBOStrategy(Strategy):
    """Gaussian-process surrogates + optimistic hypervolume improvement (see module docstring)."""

    name = "mobo"
    snapshots = True
    Options = MOBOOptions

    def __init__(self, problem, options=None, seed: int = 0):
        super().__init__(problem, options, seed)
        p = problem
        self._lo, self._hi = np.asarray(p.lower, dtype=np.float64), np.asarray(p.upper, dtype=np.float64)
        self._span = np.where(self._hi > self._lo, self._hi - self._lo, 1.0)
        self._rng = np.random.default_rng(self.seed)
        seeds = [(name, np.clip(np.asarray(x, dtype=np.float64), self._lo, self._hi)) for name, x in p.seeds] if self.options.include_seeds else []
        n_init = self.options.n_init or (len(seeds) + 1 if seeds else max(4, p.dim + 1))
        n_init = max(2, min(n_init, max(len(seeds) + 1, p.budget // 4))) if self.options.n_init is None else n_init
        self._init: list[tuple[str, np.ndarray]] = seeds[:n_init]
        if n_init > len(self._init):
            from scipy.stats import qmc

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                U = qmc.Sobol(d=p.dim, scramble=True, rng=np.random.default_rng(self.seed)).random(n_init - len(self._init))
            self._init += [("sobol", self._lo + u * (self._hi - self._lo)) for u in U]
        self._next_id = 0
        self._X: list[np.ndarray] = []  # told points (real units)
        self._Y: list[np.ndarray | None] = []  # raw values, None = failed
        self._M: list[dict[int, np.ndarray] | None] = []  # per-example margins by objective (successful results)
        self._S: list[np.ndarray | None] = []  # standard errors of low-fidelity values (None: measured on every example)
        self._mthetas: list[np.ndarray | None] = [None] * p.n_obj
        self._pending: dict[int, np.ndarray] = {}
        self._thetas: list[np.ndarray | None] = [None] * p.n_obj
        self._fit_n = -1  # number of observations at the last hyperparameter fit
        self._counts: list[int] = [1] * p.n_obj  # smallest example counts seen (a cache: recomputed the same from the data)

    #: what the max_dim refusal suggests instead
    _too_large_hint: ClassVar[str] = ("granularity (global, block:K, schedule:K), turbo (up to 512 coordinates) or cmaes / nsga2 "
                                      "for large spaces")

    @classmethod
    def check(cls, options: StrategyOptions, problem_info: dict[str, Any]) -> list[str]:
        dim = problem_info.get("dim")
        if dim is not None and dim > options.max_dim:  # type: ignore[attr-defined]
            return [f"{cls.name} models up to max_dim={options.max_dim} coordinates and this space has {dim}; "  # type: ignore[attr-defined]
                    f"use a coarser {cls._too_large_hint}, or raise strategy.options.max_dim"]
        return []

    # ------------------------------------------------------------------ ask / tell
    def ask(self, n: int) -> list[Candidate]:
        out: list[Candidate] = []
        while len(out) < n and self._init:
            name, x = self._init.pop(0)
            meta = {"phase": "init"} | ({"seed": name} if name != "sobol" else {})
            out.append(self._propose(x, meta))
        if len(out) < n:
            n_ok = sum(y is not None for y in self._Y)
            if n_ok < 3:  # too little data for a model: uniform points until there is
                while len(out) < n:
                    out.append(self._propose(self._lo + self._rng.random(self.problem.dim) * (self._hi - self._lo), {"phase": "random"}))
            else:
                with _blas_limit(self.options.blas_threads):
                    out += self._model_step(n - len(out))
        return out

    def _propose(self, x: np.ndarray, meta: dict[str, Any]) -> Candidate:
        c = Candidate(np.clip(x, self._lo, self._hi), self._next_id, meta=meta)
        self._pending[c.id] = c.x.copy()
        self._next_id += 1
        return c

    def tell(self, results: Sequence[TrialResult]) -> None:
        for r in results:
            cid = int(r.candidate.id)
            x = self._pending.pop(cid, None)
            self._X.append(np.asarray(r.candidate.x if x is None else x, dtype=np.float64))
            self._Y.append(np.asarray(r.values, dtype=np.float64).copy() if r.ok else None)
            self._M.append({int(j): np.asarray(m, dtype=np.float64).ravel().copy() for j, m in r.margins.items()} if r.ok and r.margins else None)
            self._S.append(np.asarray(r.value_se, dtype=np.float64).copy() if r.ok and r.low_fidelity and r.value_se is not None else None)
            self._next_id = max(self._next_id, cid + 1)

    # ------------------------------------------------------------------ the model step
    def _data(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unit-cube inputs of every told point, and of the successful ones with their
        minimisation-signed values."""
        U = (np.asarray(self._X) - self._lo) / self._span
        ok = np.array([y is not None for y in self._Y])
        F = self.problem.minimization(np.asarray([y for y in self._Y if y is not None]))
        return U, U[ok], F

    def _margin_data(self) -> dict[int, np.ndarray]:
        """Objective -> margins of every successful result (rows in result order), for the
        objectives whose every successful result came with finite margins of one length that
        give its value back (``value == mean(margins > 0)``); others are modelled by value."""
        if not self.options.margins:
            return {}
        ok = [(y, m, s is None) for y, m, s in zip(self._Y, self._M, self._S, strict=True) if y is not None]
        out = {}
        for j in range(self.problem.n_obj):
            rows = [m.get(j) if m else None for _, m, _ in ok]
            if not rows or any(r is None or len(r) != len(rows[0]) or len(r) == 0 for r in rows):
                continue
            Mj = np.vstack(rows)
            full = np.array([f for _, _, f in ok])
            # low-fidelity rows have NaN for the examples not scored (filled by the model later)
            if (full.sum() >= 2 and np.isfinite(Mj[full]).all() and not np.isinf(Mj).any()
                    and np.allclose((Mj[full] > 0).mean(1), [y[j] for y, _, f in ok if f], rtol=0.0, atol=1e-9)):
                out[j] = Mj
        return out

    def _fill_unscored(self, U: np.ndarray, Mj: np.ndarray, j: int) -> np.ndarray | None:
        """Margins of examples a low-fidelity result did not score: the margin model's
        prediction from the rows that scored every example, shifted by the row's mean residual
        on the examples it did score (None when fewer than 2 rows scored every example).

        The shift carries what the subset showed (this merge does worse, or better, than the
        model expected there) over to the unscored examples, as the paired estimate of a
        value does. Unshifted, most of a stopped candidate's margins (90 % at a 10 % level)
        would be the model's own prediction, taken as data: the model would stay as sure of
        its mistake as before. One mean shift per row: an objective over several tasks gets one
        shift across them, and one example with an extreme margin moves it."""
        miss = np.isnan(Mj)
        if not miss.any():
            return Mj
        full = ~miss.any(axis=1)
        if full.sum() < 2:
            return None
        mgp = self._new_margin_gp(self._mthetas[j])
        mgp.condition(U[full], Mj[full])
        pred = mgp.predict_mean(U)
        resid = np.where(miss, 0.0, Mj - pred)  # 0 where unscored: a row that scored nothing is not shifted
        shift = resid.sum(axis=1) / np.maximum((~miss).sum(axis=1), 1)
        return np.where(miss, pred + shift[:, None], Mj)

    def _example_count(self, j: int, values: np.ndarray) -> int | None:
        """The smallest n (at most 100000) such that every value of objective ``j`` is a fraction
        k/n in [0, 1], when the values take at least 3 distinct levels: the example count of an
        accuracy (or a multiple of it). None for other objectives."""
        v = np.unique(np.round(values, 12))
        if len(v) < 3 or v.min() < 0.0 or v.max() > 1.0:
            return None
        start = self._counts[j]  # the smallest n can only grow as values are added
        for lo in range(start, 100_001, 2000):
            n = np.arange(lo, min(lo + 2000, 100_001), dtype=np.float64)
            r = v[:, None] * n[None, :]
            ok = np.flatnonzero(np.abs(r - np.round(r)).max(axis=0) < 1e-6)
            if len(ok):
                self._counts[j] = int(n[ok[0]])
                return self._counts[j]
        return None

    def _refit_due(self, n: int) -> bool:
        step = 1 if n <= 50 else math.ceil(n / 25)
        return self._fit_n < 0 or n - self._fit_n >= step

    def _model_step(self, k: int) -> list[Candidate]:
        p = self.problem
        U_all, U, F = self._data()
        span = np.maximum(F.max(0) - F.min(0), 1e-9)
        ref = F.max(0) + self.options.ref_margin * span
        # the front of full-fidelity results only (subset estimates never enter it); all rows feed the models
        full = np.array([s is None for s, y in zip(self._S, self._Y, strict=True) if y is not None], dtype=bool)
        Uf, Ff = (U[full], F[full]) if full.any() else (U, F)
        on_front = min_front(Ff)
        front_U, front_F = Uf[on_front], Ff[on_front]  # measured: where local moves start
        margin_data = self._margin_data()
        lf = self.options.local_fraction
        if lf is None:
            lf = 0.0 if len(margin_data) == p.n_obj else 0.7
        local = [len(U) >= self.options.local_after and self._rng.random() < lf for _ in range(k)]
        pend = [(np.asarray(x) - self._lo) / self._span for x in self._pending.values()]
        if all(local) and not self.options.screen:  # no model needed
            out = []
            for _ in range(k):
                u = self._local_candidate(front_U, front_F, np.vstack([U_all, *pend]))
                out.append(self._propose(self._lo + u * self._span, {"phase": "local"}))
                pend.append(u)
            return out
        n_ok = len(U)
        refit = self._refit_due(n_ok)
        noise = low_fidelity_noise([s for s, y in zip(self._S, self._Y, strict=True) if y is not None], p.n_obj)
        # the logit model needs values k/n of one n: not with subset (low-fidelity) values in the run; n from
        # every result (not the model's row subset), so a resumed run finds the same n
        n_exs = {j: self._example_count(j, p.objectives[j].sign * F[:, j]) for j in range(p.n_obj)
                 if self.options.value_warp and noise is None and j not in margin_data}
        rows = model_rows(F, self.options.max_model_points, seed=n_ok, front=on_front if full.all() else None)
        if rows is not None:  # subset of data: the model step's cost stops growing with the run
            U, F = U[rows], F[rows]
            margin_data = {j: Mj[rows] for j, Mj in margin_data.items()}
            noise = None if noise is None else noise[rows]
        fit = model_rows(F, self.options.max_fit_points, seed=n_ok + 1)
        fit = np.arange(len(U)) if fit is None else fit
        gps: list[Any] = []
        for j in range(p.n_obj):
            base = gp = self._new_gp(self._thetas[j])
            nj = None if noise is None else noise[:, j]  # known extra noise of subset values, row-aligned with U
            n_ex = n_exs.get(j)
            if n_ex:
                gp = _LogitPredictor(gp, n_ex, p.objectives[j].sign, self.options.value_noise)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if refit:
                    base.extra_noise = None if nj is None else nj[fit]
                    gp.fit(U[fit], F[fit, j], restarts=True)
                if not refit or len(fit) < len(U):
                    base.extra_noise = nj
                    gp.condition(U, F[:, j])
            self._thetas[j] = gp.theta.copy()
            gps.append(gp)
        for j, Mj in list(margin_data.items()):
            filled = self._fill_unscored(U, Mj, j)
            if filled is None:  # too few rows that scored every example: this objective by value this step
                del margin_data[j]
                continue
            Mj = margin_data[j] = filled
            mgp = self._new_margin_gp(self._mthetas[j])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if refit or self._mthetas[j] is None:
                    mgp.fit(U[fit], Mj[fit], restarts=True)
                if not (refit or self._mthetas[j] is None) or len(fit) < len(U):
                    mgp.condition(U, Mj)
            self._mthetas[j] = mgp.theta.copy()
            gps[j] = _MarginPredictor(gps[j], mgp, U, Mj, p.objectives[j].sign)
        if refit:
            self._fit_n = n_ok
        # pending proposals as fantasies at their predicted means (scoring only)
        fU, fF, score_F = U, F, front_F
        if pend:
            fU, fF, score_F = self._fantasise(gps, fU, fF, score_F, np.asarray(pend))
        if self.options.batch_from is not None and k >= self.options.batch_from:
            return self._batch(gps, k, local, front_U, front_F, score_F, ref, np.vstack([U_all, *pend]))
        out: list[Candidate] = []
        for i in range(k):
            taken = np.vstack([U_all, *pend])
            if local[i] and self.options.screen:
                C = np.array([self._local_candidate(front_U, front_F, taken) for _ in range(self.options.screen)])
                sc = self._score(gps, C, score_F, ref)
                u, info = C[int(np.argmax(sc))], {"phase": "local", "screened": self.options.screen}
            elif local[i]:
                u, info = self._local_candidate(front_U, front_F, taken), {"phase": "local"}
            else:
                u, info = self._best_candidate(gps, front_U, score_F, ref, taken)
                info = {"phase": "model", **info}
            out.append(self._propose(self._lo + u * self._span, info))
            pend.append(u)
            if len(out) < k:
                fU, fF, score_F = self._fantasise(gps, fU, fF, score_F, u[None, :])
        return out

    def _new_gp(self, theta: np.ndarray | None) -> GaussianProcess:
        """The surrogate of one objective (subclasses change the kernel)."""
        return GaussianProcess(self.problem.dim, theta)

    def _new_margin_gp(self, theta: np.ndarray | None) -> SharedKernelGP:
        """The shared-kernel surrogate of one objective's margins."""
        return SharedKernelGP(self.problem.dim, theta)

    def _local_candidate(self, front_U: np.ndarray, front_F: np.ndarray, taken: np.ndarray) -> np.ndarray:
        """A small move from the measured front, aimed at its gaps.

        Two objectives: a pair of neighbouring front members is drawn with probability
        proportional to the empty rectangle between them (the most a point there could add);
        half the time the proposal is a random blend of the pair's coefficients, otherwise one
        of the two. More objectives: a member is drawn in proportion to its crowding distance.
        The point then gets Gaussian noise on a random half of its coordinates (at least one)
        at a random scale of 1, 3 or 10 % of the box, is clipped to the box, and is redrawn
        (up to 20 times) while it repeats a measured or pending point."""
        rng, d = self._rng, self.problem.dim
        for _ in range(20):
            c = self._gap_center(front_U, front_F)
            mask = rng.random(d) < 0.5
            mask[rng.integers(d)] = True
            u = np.clip(c + mask * rng.standard_normal(d) * rng.choice([0.01, 0.03, 0.1]), 0.0, 1.0)
            if not len(taken) or np.min(np.abs(taken - u).max(axis=1)) > 1e-6:
                break
        return u

    def _gap_center(self, front_U: np.ndarray, front_F: np.ndarray) -> np.ndarray:
        rng, n = self._rng, len(front_U)
        if n < 2:
            return front_U[0]
        span = np.maximum(front_F.max(0) - front_F.min(0), 1e-12)
        G = (front_F - front_F.min(0)) / span
        if G.shape[1] == 2:
            o = np.argsort(G[:, 0], kind="stable")
            gaps = np.diff(G[o, 0]) * -np.diff(G[o, 1])
            if gaps.sum() > 0:
                i = int(rng.choice(len(gaps), p=gaps / gaps.sum()))
                a, b = front_U[o[i]], front_U[o[i + 1]]
                return a + rng.random() * (b - a) if rng.random() < 0.5 else (a if rng.random() < 0.5 else b)
            return front_U[rng.integers(n)]
        crowd = np.zeros(n)
        for j in range(G.shape[1]):
            o = np.argsort(G[:, j], kind="stable")
            crowd[o[1:-1]] += G[o[2:], j] - G[o[:-2], j]
            crowd[o[[0, -1]]] += 1.0  # the ends: as much as a full-range neighbourhood
        return front_U[int(rng.choice(n, p=crowd / crowd.sum()))] if crowd.sum() > 0 else front_U[rng.integers(n)]

    def _fantasise(self, gps, U, F, front_F, Up):
        mu = np.column_stack([gp.predict(Up)[0] for gp in gps])
        U2, F2 = np.vstack([U, Up]), np.vstack([F, mu])
        for j, gp in enumerate(gps):
            gp.condition(U2, F2[:, j])
        fr = np.vstack([front_F, mu])
        fr = fr[pareto_mask(fr, ["minimize"] * len(gps))]
        return U2, F2, fr

    def _score(self, gps, C, front_F, ref) -> np.ndarray:
        return self._acquisition(self._optimistic(gps, C), front_F, ref)

    def _optimistic(self, gps, C) -> np.ndarray:
        """The optimistic prediction ``mean - beta * sd`` of each objective at the rows of ``C``."""
        pred = [gp.predict(C) for gp in gps]
        betas = [self.options.margin_beta if isinstance(gp, _MarginPredictor) else
                 self.options.value_beta if isinstance(gp, _LogitPredictor) else self.options.beta for gp in gps]
        return np.column_stack([m - b * s for (m, s), b in zip(pred, betas, strict=True)])

    def _acquisition(self, lcb, front_F, ref) -> np.ndarray:
        """The hypervolume the optimistic predictions ``lcb`` add to ``front_F`` (see the module docstring)."""
        hvi = hv_improvement(front_F, lcb, ref, rng=self._rng)
        if np.any(hvi > 0):
            return hvi
        # none improves: the smallest additive shift that would make it non-dominated (negated)
        eps = np.min(np.max(lcb[:, None, :] - front_F[None, :, :], axis=2), axis=1)
        return -np.maximum(eps, 0.0) - 1e-12

    def _best_candidate(self, gps, front_U, front_F, ref, taken) -> tuple[np.ndarray, dict[str, Any]]:
        C, _, s = self._candidates(gps, front_U, front_F, ref)
        i = _first_new(C, s, taken)  # never propose a point already measured or pending
        mu = [float(gp.predict(C[i : i + 1])[0][0]) for gp in gps]
        pred = self.problem.minimization(np.asarray(mu))  # signs are their own inverse
        return C[i], {"acquisition": float(s[i]), "predicted": [float(v) for v in pred], **self._model_info()}

    def _model_info(self) -> dict[str, Any]:
        """What a model proposal's meta adds to its acquisition and prediction (subclasses)."""
        return {}

    def _candidates(self, gps, front_U, front_F, ref, n_top: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Scored model candidates: unit-cube points, their optimistic predictions and
        acquisition values. Uniform points and perturbed front members, then 32
        finer perturbations of each of the ``n_top`` best."""
        d, m = self.problem.dim, self.options.n_candidates
        rng = self._rng
        n_glob = m // 2
        C = [rng.random((n_glob, d))]
        if len(front_U):
            centers = front_U[rng.integers(0, len(front_U), m - n_glob)]
            scales = rng.choice([0.02, 0.05, 0.1, 0.2], size=(m - n_glob, 1))
            mask = rng.random((m - n_glob, d)) < max(1.0 / d, 0.5)
            C.append(np.clip(centers + mask * rng.standard_normal((m - n_glob, d)) * scales, 0.0, 1.0))
        C = np.vstack(C)
        L = self._optimistic(gps, C)
        s = self._acquisition(L, front_F, ref)
        top = C[np.argsort(-s, kind="stable")[:n_top]]
        R = np.clip(np.repeat(top, 32, axis=0) + rng.standard_normal((len(top) * 32, d)) * rng.choice([0.005, 0.01, 0.03], size=(len(top) * 32, 1)), 0.0, 1.0)
        LR = self._optimistic(gps, R)
        return np.vstack([C, R]), np.vstack([L, LR]), np.concatenate([s, self._acquisition(LR, front_F, ref)])

    def _batch(self, gps, k, local, front_U, front_F, score_F, ref, taken) -> list[Candidate]:
        """``k`` proposals from one model step: one scored candidate pool, then greedily the
        best new point, whose optimistic prediction joins the front the rest is scored
        against (its neighbours lose the improvement it claims); local moves are screened
        against that front too. The GPs are conditioned once (pending points as fantasies)."""
        n_model = k - sum(local)
        C, L, s = self._candidates(gps, front_U, score_F, ref, n_top=max(8, n_model)) if n_model else (None, None, None)
        front = score_F
        chosen: list[tuple[np.ndarray, dict[str, Any]]] = []
        for i in range(k):
            if local[i] and self.options.screen:
                Cl = np.array([self._local_candidate(front_U, front_F, taken) for _ in range(self.options.screen)])
                Ll = self._optimistic(gps, Cl)
                j = int(np.argmax(self._acquisition(Ll, front, ref)))
                u, lcb, info = Cl[j], Ll[j], {"phase": "local", "screened": self.options.screen}
            elif local[i]:
                u = self._local_candidate(front_U, front_F, taken)
                lcb, info = self._optimistic(gps, u[None, :])[0], {"phase": "local"}
            else:
                if chosen:  # rescored against the front the chosen points joined
                    s = np.where(np.isfinite(s), self._acquisition(L, front, ref), -np.inf)
                j = _first_new(C, s, taken)
                u, lcb, info = C[j], L[j], {"phase": "model", "acquisition": float(s[j]), **self._model_info()}
                s[j] = -np.inf
            chosen.append((u, info))
            taken = np.vstack([taken, u])
            front = np.vstack([front, lcb])
            front = front[min_front(front)]
        U = np.array([u for u, _ in chosen])
        mu = self.problem.minimization(np.column_stack([gp.predict(U)[0] for gp in gps]))  # signs are their own inverse
        out = []
        for (u, info), m in zip(chosen, mu, strict=True):
            if info["phase"] == "model":
                info["predicted"] = [float(v) for v in m]
            out.append(self._propose(self._lo + u * self._span, {**info, "batch": k}))
        return out

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "next_id": self._next_id,
            "X": [x.copy() for x in self._X],
            "Y": [None if y is None else y.copy() for y in self._Y],
            "pending": {int(k): v.copy() for k, v in self._pending.items()},
            "init": [(name, x.copy()) for name, x in self._init],
            "thetas": [None if t is None else t.copy() for t in self._thetas],
            "M": [None if m is None else {int(j): v.copy() for j, v in m.items()} for m in self._M],
            "S": [None if s is None else s.copy() for s in self._S],
            "mthetas": [None if t is None else t.copy() for t in self._mthetas],
            "fit_n": self._fit_n,
            "rng": self._rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._next_id = int(state["next_id"])
        self._X = [np.asarray(x, dtype=np.float64) for x in state["X"]]
        self._Y = [None if y is None else np.asarray(y, dtype=np.float64) for y in state["Y"]]
        self._pending = {int(k): np.asarray(v, dtype=np.float64) for k, v in state["pending"].items()}
        self._init = [(name, np.asarray(x, dtype=np.float64)) for name, x in state["init"]]
        self._thetas = [None if t is None else np.asarray(t, dtype=np.float64) for t in state["thetas"]]
        self._M = [None if m is None else {int(j): np.asarray(v, dtype=np.float64) for j, v in m.items()} for m in state.get("M", [None] * len(self._X))]
        self._S = [None if s is None else np.asarray(s, dtype=np.float64) for s in state.get("S", [None] * len(self._X))]
        self._mthetas = [None if t is None else np.asarray(t, dtype=np.float64) for t in state.get("mthetas", [None] * self.problem.n_obj)]
        self._fit_n = int(state["fit_n"])
        self._rng.bit_generator.state = state["rng"]


def _first_new(C: np.ndarray, s: np.ndarray, taken: np.ndarray) -> int:
    """Index of the best-scored row of ``C`` not within 1e-6 of a ``taken`` row (0 if none is)."""
    for j in np.argsort(-s, kind="stable"):
        if not len(taken) or np.min(np.abs(taken - C[j]).max(axis=1)) > 1e-6:
            return int(j)
    return 0


def _blas_limit(threads: int | None) -> Any:
    """A context limiting BLAS to ``threads`` threads (no limit: None)."""
    if threads is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=threads, user_api="blas")


def low_fidelity_noise(se: Sequence[np.ndarray | None], n_obj: int) -> np.ndarray | None:
    """Per-observation extra noise variance (rows: observations, columns: objectives) of
    values measured on example subsets: their standard errors squared; 0 for values measured
    on every example. None when every value was."""
    if all(s is None for s in se):
        return None
    return np.vstack([np.zeros(n_obj) if s is None else np.asarray(s, dtype=np.float64) ** 2 for s in se])

class _LogitPredictor:
    """An accuracy on ``n`` examples (values k/n) modelled on the empirical-logit scale.

    The GP sees ``log((k + 0.5) / (n - k + 0.5))``: accuracies saturate near 0 and 1, and the
    logit straightens those ends, where a stationary GP on the raw values would see a flat
    plateau next to a cliff. With ``noise``, each observation carries its binomial variance on
    that scale, ``1 / (k + 0.5) + 1 / (n - k + 0.5)``, as known noise, on top of the fitted
    one. Values in and out are minimisation-signed; predictions map back through the inverse
    (the standard deviation by the delta method)."""

    def __init__(self, gp: GaussianProcess, n: int, sign: float, noise: bool):
        self.gp, self.n, self.sign, self.noise = gp, int(n), sign, noise

    @property
    def theta(self) -> np.ndarray:
        return self.gp.theta

    def _warp(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        k = np.clip(self.sign * np.asarray(y, dtype=np.float64), 0.0, 1.0) * self.n
        z = np.log((k + 0.5) / (self.n - k + 0.5))
        return z, (1.0 / (k + 0.5) + 1.0 / (self.n - k + 0.5)) if self.noise else None

    def input_lengthscales(self) -> np.ndarray:
        return self.gp.input_lengthscales()

    def fit(self, U: np.ndarray, y: np.ndarray, *, restarts: bool = True) -> None:
        z, var = self._warp(y)
        self.gp.fit(U, z, restarts=restarts, noise=var)

    def condition(self, U: np.ndarray, y: np.ndarray) -> None:
        z, var = self._warp(y)
        self.gp.condition(U, z, noise=var)

    def predict(self, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, sd = self.gp.predict(C)
        e = 1.0 / (1.0 + np.exp(-mu))
        acc = np.clip(((self.n + 1) * e - 0.5) / self.n, 0.0, 1.0)
        return self.sign * acc, (self.n + 1) / self.n * e * (1.0 - e) * sd


class _MarginPredictor:
    """An accuracy objective predicted from its per-example margins.

    The mean is the fraction of examples whose predicted margin (a :class:`SharedKernelGP`
    over all examples) is positive, signed like the objective's minimised values; the
    standard deviation (for the acquisition's optimism) is the value GP's. ``condition``
    adds fantasy rows the way :meth:`GaussianProcess.condition` does: the margins of the new
    points are the margin model's own predictions."""

    def __init__(self, gp: GaussianProcess, mgp: SharedKernelGP, U: np.ndarray, M: np.ndarray, sign: float):
        self.gp, self.mgp, self.U, self.M, self.sign = gp, mgp, U, M, sign

    def predict(self, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _, sd = self.gp.predict(C)
        acc = (self.mgp.predict_mean(C) > 0).mean(axis=1)
        return self.sign * acc, sd

    def condition(self, U: np.ndarray, y: np.ndarray) -> None:
        self.gp.condition(U, y)
        new = U[len(self.U):]
        if len(new):
            self.M = np.vstack([self.M, self.mgp.predict_mean(new)])
            self.U = U
            self.mgp.condition(self.U, self.M)
