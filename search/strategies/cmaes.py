"""CMA-ES (the ``cma`` package) on a weighted scalarisation of the objectives.

Search space
    CMA-ES runs in the unit cube: coordinate ``i`` is ``(x_i - lower_i) / (upper_i - lower_i)``,
    with cma's own bound handling (``BoundTransform``) on [0, 1]. ``sigma0`` is therefore a
    fraction of each coordinate's box width (default 1/6), which handles unequal widths.
    ``separable`` uses cma's ``CMA_diagonal`` (a diagonal covariance, learns ~d times faster);
    by default it switches on above ``separable_above`` coordinates (40), where a full
    covariance needs far more evaluations than merge budgets allow.

Objectives
    One objective: it is minimised or maximised according to its direction. Several
    objectives: CMA-ES minimises ``sum_i w_i * s_i * v_i`` where ``s_i`` is -1 for maximised and
    +1 for minimised objectives and ``w_i`` the objective's ``weight`` from the config (default
    1.0 each, i.e. an equal-weight sum), or ``options.weights`` when given. Weights are not
    normalised: objectives on very different scales need weights that reflect that. CMA-ES
    finds one trade-off; use ``nsga2``, ``map`` or ``optuna`` for a front.

Start point
    ``x0``: ``"auto"`` (the problem's seed named ``uniform`` if there is one, else the box
    centre), ``"center"``, ``"random"``, the name of any seed point, or an explicit vector.

Asking ahead at the generation barrier (the controller keeps every worker busy)
    Let ``lambda`` be the population size and ``D_g`` the search distribution of generation g.

    * ``ask`` first hands out the ``lambda`` points of ``D_g``. When all are out and more are
      asked before generation g is complete, it draws *extra* points from the same ``D_g``
      (``es.ask(1)``, which registers them with cma).
    * Generation g is told to cma as soon as ``lambda`` of its points have finished, in
      completion order, regular or extra: they are i.i.d. samples of ``D_g``, so any
      ``lambda`` of them form a valid CMA-ES generation and cma receives exactly the
      ``lambda`` (solution, value) pairs it expects, with the genotypes it sent.
    * Points of ``D_g`` that finish after that ("stragglers") are not wasted: when generation
      g+1 starts, the best ``inject`` of them (default ``lambda // 4``, at least 1) are
      injected with ``es.inject(..., force=True)``. cma returns them first in its next ``ask``
      and, in ``tell``, clips their step to a typical Mahalanobis length (Hansen 2011,
      "Injecting external solutions into CMA-ES"), so old points cannot derail the update.
      Their values are already known, so they are not handed out again. Stragglers not
      injected then are dropped from CMA-ES (the store still holds them).

    With one worker asking ``lambda`` at a time this is plain CMA-ES. With many workers,
    set ``popsize`` near the number of workers so that few extra points are needed.

Failed results (None/NaN/inf) rank behind every finite value of their generation (CMA-ES
is rank-based, so this is "worst" without inventing a scale). When cma reports a
termination condition (e.g. flat fitness on a coarse accuracy metric), it restarts from the
best point so far with ``sigma0`` (``restarts``).

State: rebuilt on resume by replaying the run's asks and tells into a new instance (cma
draws from its own seeded generator, see ``_Randn``), so a restored strategy proposes
exactly what the uninterrupted one would have.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from pydantic import Field

from ..seeding import derive_seed
from .base import Candidate, Strategy, StrategyOptions, TrialResult


class CMAESOptions(StrategyOptions):
    sigma0: float = Field(1.0 / 6.0, gt=0, le=1.0, description="initial step size as a fraction of each coordinate's box width")
    popsize: int | None = Field(None, ge=4, description="population size lambda (default cma's 4 + 3 ln d)")
    weights: list[float] | None = Field(None, description="scalarisation weights, one per objective (default: each objective's weight)")
    separable: bool | None = Field(None, description="diagonal covariance (CMA_diagonal); default: on above separable_above coordinates")
    separable_above: int = Field(40, ge=1, description="dimension above which separable is switched on by default")
    x0: str | list[float] = Field("auto", description="'auto', 'center', 'random', a seed name (e.g. 'uniform'), or a vector")
    inject: int | None = Field(None, ge=0, description="stragglers injected per generation (default max(1, popsize // 4))")
    restarts: bool = Field(True, description="restart from the best point when cma reports termination")


class _Randn:
    """A ``randn(*shape)`` for cma's ``randn`` option, backed by its own seeded Generator.

    cma's default (``np.random.randn``) draws from numpy's global state, which other code
    shares; this keeps sampling private, so a replay of the same calls draws the same points.
    """

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def __call__(self, *shape: int) -> np.ndarray:
        return self.rng.standard_normal(shape)


@contextmanager
def _quiet():
    """cma reports flat fitness, injections and small populations as warnings: silence them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class CMAESStrategy(Strategy):
    name = "cmaes"
    Options = CMAESOptions

    def __init__(self, problem, options=None, seed: int = 0):
        super().__init__(problem, options, seed)
        o: CMAESOptions = self.options  # type: ignore[assignment]
        d = problem.dim
        self._w = np.asarray(o.weights if o.weights is not None else [ob.weight for ob in problem.objectives], dtype=np.float64)
        self._signs = np.array([ob.sign for ob in problem.objectives])
        self._lo = np.asarray(problem.lower, dtype=np.float64)
        self._width = np.asarray(problem.upper, dtype=np.float64) - self._lo
        self._separable = o.separable if o.separable is not None else d > o.separable_above
        self._rng = np.random.default_rng(derive_seed("cmaes-x0", self.seed))
        self._next_id = 0
        self._restart = 0
        self._gen = 0  # generations told so far, over all restarts
        self._best: tuple[float, np.ndarray] | None = None  # (f, u)
        self._records: dict[int, dict[str, Any]] = {}  # candidate id -> {u, gen}
        self._queue: list[np.ndarray] = []  # regular points of the current generation not yet handed out
        self._started = False  # current generation sampled (es.ask()) yet?
        self._done: list[tuple[np.ndarray, float | None]] = []  # finished points of the current generation
        self._stragglers: list[tuple[np.ndarray, float]] = []
        self._n_told = 0
        self._n_extra = 0
        self._n_injected = 0
        self._es = self._new_es(self._initial_u())

    # ------------------------------------------------------------------ helpers
    def _initial_u(self) -> np.ndarray:
        x0 = self.options.x0
        seeds = dict(self.problem.seeds)
        if isinstance(x0, list):
            x = np.asarray(x0, dtype=np.float64)
            if x.shape != (self.problem.dim,):
                raise ValueError(f"cmaes: x0 has {len(x0)} values but the space has {self.problem.dim} coordinates")
        elif x0 == "auto":
            x = seeds["uniform"] if "uniform" in seeds else self._lo + self._width / 2
        elif x0 == "center":
            x = self._lo + self._width / 2
        elif x0 == "random":
            return self._rng.random(self.problem.dim)
        elif x0 in seeds:
            x = seeds[x0]
        else:
            raise ValueError(
                f"cmaes: x0 {x0!r} is not 'auto', 'center', 'random' or a seed point ({', '.join(seeds) or 'none'})"
            )
        return np.clip((np.asarray(x, dtype=np.float64) - self._lo) / self._width, 0.0, 1.0)

    def _new_es(self, u0: np.ndarray):
        import cma

        opts = {
            "bounds": [0.0, 1.0],
            "verbose": -9,
            "randn": _Randn(derive_seed("cmaes", self.seed, self._restart)),
            "seed": np.nan,  # "do nothing" to numpy's global generator
            "tolflatfitness": 3,
        }
        if self.options.popsize:
            opts["popsize"] = int(self.options.popsize)
        if self._separable:
            opts["CMA_diagonal"] = True
        # keep the mean strictly inside so BoundTransform's inverse is well conditioned
        u0 = np.clip(u0, 1e-6, 1 - 1e-6)
        with _quiet():
            es = cma.CMAEvolutionStrategy(list(u0), float(self.options.sigma0), opts)
        return es

    @property
    def popsize(self) -> int:
        return int(self._es.popsize)

    def _to_x(self, u: np.ndarray) -> np.ndarray:
        return np.clip(self._lo + np.asarray(u, dtype=np.float64) * self._width, self.problem.lower, self.problem.upper)

    def _f(self, r: TrialResult) -> float | None:
        if not r.ok:
            return None
        v = np.asarray(r.values, dtype=np.float64).reshape(-1)
        if v.shape != (self.problem.n_obj,):
            return None
        if self.options.weights is None:
            return float(self.problem.scalarize(v))  # sum of Objective.weight * signed value
        return float(np.sum(self._w * self._signs * v))

    def _candidate(self, u: np.ndarray, kind: str) -> Candidate:
        cid = self._next_id
        self._next_id += 1
        self._records[cid] = {"u": np.asarray(u, dtype=np.float64), "gen": self._gen}
        return Candidate(
            self._to_x(u),
            cid,
            generation=self._gen,
            meta={"kind": kind, "restart": self._restart, "sigma": float(self._es.sigma)},
        )

    def _start_generation(self) -> None:
        """Sample generation ``self._gen`` from cma, injecting the best stragglers first."""
        k_max = self.options.inject if self.options.inject is not None else max(1, self.popsize // 4)
        strag = sorted(self._stragglers, key=lambda t: t[1])[: min(k_max, self.popsize // 2)]
        self._stragglers = []
        with _quiet():
            for u, _ in strag:
                self._es.inject([self._es.boundary_handler.inverse(np.asarray(u))], force=True)
            X = [np.asarray(x, dtype=np.float64) for x in self._es.ask()]
        self._done = []
        for i, x in enumerate(X):
            if i < len(strag) and np.allclose(x, strag[i][0], atol=1e-9):
                self._done.append((x, strag[i][1]))  # already evaluated: not handed out again
                self._n_injected += 1
            else:
                self._queue.append(x)
        self._started = True

    def _complete_generation(self) -> None:
        lam = self.popsize
        told, rest = self._done[:lam], self._done[lam:]
        finite = [f for _, f in told if f is not None]
        worst = max(finite) if finite else 0.0
        penalty = worst + max(1.0, abs(worst))
        X = [u for u, _ in told]
        F = [f if f is not None else penalty for _, f in told]
        with _quiet():
            self._es.tell(X, F)
            stop = dict(self._es.stop()) if self.options.restarts else {}
        self._gen += 1
        self._done = []
        self._queue = []
        self._started = False
        # finished samples beyond lambda: stragglers for the next generation
        self._stragglers += [(u, f) for u, f in rest if f is not None]
        if stop:
            self._restart += 1
            u0 = self._best[1] if self._best is not None else self._initial_u()
            self._es = self._new_es(u0)
            self._stragglers = []

    # ------------------------------------------------------------------ protocol
    def ask(self, n: int) -> list[Candidate]:
        out: list[Candidate] = []
        while len(out) < n:
            if not self._started:
                self._start_generation()
                if len(self._done) >= self.popsize:  # everything was injected (tiny popsize)
                    self._complete_generation()
                    continue
            if self._queue:
                out.append(self._candidate(self._queue.pop(0), "sample"))
            else:
                with _quiet():
                    u = np.asarray(self._es.ask(1)[0], dtype=np.float64)
                self._n_extra += 1
                out.append(self._candidate(u, "extra"))
        return out

    def tell(self, results: Sequence[TrialResult]) -> None:
        for r in results:
            cid = int(r.candidate.id)
            self._next_id = max(self._next_id, cid + 1)
            f = self._f(r)
            rec = self._records.pop(cid, None)
            self._n_told += 1
            if rec is None:  # not asked by this instance (e.g. replayed): an external solution
                if f is None:
                    continue
                u = np.clip((np.asarray(r.candidate.x, dtype=np.float64) - self._lo) / self._width, 0.0, 1.0)
                self._stragglers.append((u, f))
            else:
                u = rec["u"]
                if rec["gen"] == self._gen and self._started:
                    self._done.append((u, f))
                elif f is not None:
                    self._stragglers.append((u, f))
            if f is not None and (self._best is None or f < self._best[0]):
                self._best = (f, np.asarray(u, dtype=np.float64))
            if self._started and len(self._done) >= self.popsize:
                self._complete_generation()
        # bound the straggler list (only the best few can ever be injected)
        if len(self._stragglers) > 2 * self.popsize:
            self._stragglers = sorted(self._stragglers, key=lambda t: t[1])[: 2 * self.popsize]

    @classmethod
    def check(cls, options: StrategyOptions, problem_info: dict[str, Any]) -> list[str]:
        msgs = []
        n_obj = problem_info.get("n_objectives")
        w = getattr(options, "weights", None)
        if w is not None and n_obj is not None and len(w) != n_obj:
            msgs.append(f"weights has {len(w)} values but there are {n_obj} objectives; give one weight per objective")
        return msgs
