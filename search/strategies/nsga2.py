"""NSGA-II (pymoo) through ask/tell, with asking ahead at generation boundaries.

pymoo minimises; values are signed with :meth:`Problem.minimization`, so maximised and
minimised objectives can be mixed. pymoo's own evaluator is never used: this class counts
asked, told and successful evaluations itself (``counts``).

Flow
    * Initial population: the problem's seed points (experts one-hot, base, uniform merge;
      ``include_seeds``) then a Latin hypercube fill up to ``pop_size``, handed to pymoo as its
      ``sampling`` and obtained with ``algorithm.ask()`` (pymoo removes duplicates).
    * Offspring: binary tournament (rank, crowding) -> SBX -> polynomial mutation, using the
      algorithm's own operators and random generator. They are produced here operator by
      operator rather than through ``algorithm.ask()`` so that every child knows its parents'
      candidate ids, and so that offspring can be produced at any time.
    * Survival (``algorithm.tell``): as soon as ``n_offsprings`` results have come back since
      the last survival (``pop_size`` for the initial population), every successful result
      received since then is merged with the population and rank-and-crowding survival keeps
      ``pop_size`` of them. One worker asking ``n_offsprings`` at a time gives plain NSGA-II.

Asking ahead (no generation barrier): when every child of the current batch has been
handed out and the controller asks for more, new children are bred from the *current*
population (a steady-state flavour). Children that finish after the survival they were bred
for are not lost: they join the next survival as ordinary offspring. Offspring bred but not
yet handed out when a survival happens are discarded (they came from an outdated
population). Before the initial population has been told, extra asks get Latin-hypercube
points, which join the initial population.

Failed results (None/NaN/inf) count toward the survival trigger but never enter the
population. If fewer than two initial points succeed, the initial survival waits for more.

State: rebuilt on resume by replaying the run's asks and tells into a new instance (pymoo
draws from a Generator seeded from the run seed), so a restored strategy continues exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import Field

from ..seeding import derive_seed
from .base import Candidate, Strategy, StrategyOptions, TrialResult


class NSGA2Options(StrategyOptions):
    pop_size: int = Field(16, ge=4, description="population size (pymoo's default 100 is too large for merge budgets)")
    n_offsprings: int | None = Field(None, ge=1, description="offspring per generation (default pop_size)")
    sbx_eta: float = Field(15.0, gt=0, description="SBX distribution index (smaller = children farther from parents)")
    sbx_prob: float = Field(0.9, ge=0, le=1, description="probability that a mating uses crossover")
    sbx_prob_var: float = Field(0.5, ge=0, le=1, description="per-coordinate crossover probability")
    pm_eta: float = Field(20.0, gt=0, description="polynomial mutation distribution index")
    pm_prob: float = Field(1.0, ge=0, le=1, description="probability that a child is mutated")
    pm_prob_var: float | None = Field(None, ge=0, le=1, description="per-coordinate mutation probability (default min(0.5, 1/d))")
    include_seeds: bool = Field(True, description="put the problem's seed points into the initial population")


class NSGA2Strategy(Strategy):
    name = "nsga2"
    Options = NSGA2Options

    def __init__(self, problem, options=None, seed: int = 0):
        super().__init__(problem, options, seed)
        from pymoo.algorithms.moo.nsga2 import NSGA2
        from pymoo.core.problem import Problem as PymooProblem
        from pymoo.core.termination import NoTermination
        from pymoo.operators.crossover.sbx import SBX
        from pymoo.operators.mutation.pm import PM

        o: NSGA2Options = self.options  # type: ignore[assignment]
        self._lo = np.asarray(problem.lower, dtype=np.float64)
        self._hi = np.asarray(problem.upper, dtype=np.float64)
        self._rng = np.random.default_rng(derive_seed("nsga2-init", self.seed))
        X0 = self._initial_design()
        self._pproblem = PymooProblem(n_var=problem.dim, n_obj=problem.n_obj, xl=self._lo, xu=self._hi)
        self._algo = NSGA2(
            pop_size=o.pop_size,
            n_offsprings=o.n_offsprings or o.pop_size,
            sampling=X0,
            crossover=SBX(eta=o.sbx_eta, prob=o.sbx_prob, prob_var=o.sbx_prob_var),
            mutation=PM(eta=o.pm_eta, prob=o.pm_prob, prob_var=o.pm_prob_var),
            eliminate_duplicates=True,
        )
        self._algo.setup(self._pproblem, termination=NoTermination(), seed=derive_seed("nsga2", self.seed) % (2**32))
        self._next_id = 0
        self._gen = 0  # survivals done (0 = initial population not yet told)
        self._queue: list[tuple[np.ndarray, tuple[int, ...], str]] = []  # (x, parent ids, kind) not handed out
        self._initial_asked = False
        self._buffer: list[tuple[int, np.ndarray, np.ndarray]] = []  # successful (cid, x, F) since the last survival
        self._resolved = 0  # results (ok or failed) since the last survival
        self._batch = o.pop_size
        self._n_asked = 0
        self._n_told = 0
        self._n_ok = 0

    # ------------------------------------------------------------------ helpers
    def _lhs(self, k: int) -> np.ndarray:
        from scipy.stats import qmc

        U = qmc.LatinHypercube(d=self.problem.dim, rng=self._rng).random(k)
        return self._lo + U * (self._hi - self._lo)

    def _initial_design(self) -> np.ndarray:
        rows: list[np.ndarray] = []
        if self.options.include_seeds:
            for _, x in self.problem.seeds:
                x = np.clip(np.asarray(x, dtype=np.float64), self._lo, self._hi)
                if not any(np.allclose(x, r) for r in rows):
                    rows.append(x)
        rows = rows[: self.options.pop_size]
        k = self.options.pop_size - len(rows)
        if k > 0:
            rows += list(self._lhs(k))
        return np.asarray(rows, dtype=np.float64)

    def _is_dup(self, x: np.ndarray, others: list[np.ndarray]) -> bool:
        scale = self._hi - self._lo
        return any(np.max(np.abs(x - o) / scale) < 1e-9 for o in others)

    def _breed(self, k: int) -> list[tuple[np.ndarray, tuple[int, ...], str]]:
        """``k`` children of the current population with their parents' candidate ids."""
        algo, prob = self._algo, self._pproblem
        pop = algo.pop
        sel, cx, mut = algo.mating.selection, algo.mating.crossover, algo.mating.mutation
        existing = [np.asarray(x) for x in pop.get("X")] + [q[0] for q in self._queue]
        out: list[tuple[np.ndarray, tuple[int, ...], str]] = []
        for _attempt in range(10):
            need = k - len(out)
            if need <= 0:
                break
            n_matings = math.ceil(need / cx.n_offsprings)
            parents = sel.do(prob, pop, n_matings, n_parents=cx.n_parents, to_pop=False,
                             random_state=algo.random_state, algorithm=algo)
            off = cx.do(prob, pop, parents, random_state=algo.random_state, algorithm=algo)
            off = mut.do(prob, off, random_state=algo.random_state, algorithm=algo)
            X = off.get("X")
            cids = pop.get("cid")
            for i, x in enumerate(X):
                if len(out) >= k:
                    break
                x = np.clip(np.asarray(x, dtype=np.float64), self._lo, self._hi)
                if self._is_dup(x, existing + [c[0] for c in out]) and _attempt < 9:
                    continue
                m = parents[i % n_matings]
                out.append((x, tuple(int(cids[j]) for j in m), "offspring"))
        return out

    def _survive(self) -> None:
        from pymoo.core.population import Population

        if self._buffer:
            pop = Population.new("X", np.asarray([b[1] for b in self._buffer]))
            pop.set("F", np.asarray([b[2] for b in self._buffer]))
            pop.set("cid", np.asarray([b[0] for b in self._buffer]))
            self._algo.tell(infills=pop)
            self._gen += 1
            self._queue = []  # bred from the outdated population
        self._buffer = []
        self._resolved = 0
        self._batch = self.options.n_offsprings or self.options.pop_size

    # ------------------------------------------------------------------ protocol
    def ask(self, n: int) -> list[Candidate]:
        out: list[Candidate] = []
        while len(out) < n:
            if not self._queue:
                if not self._initial_asked:
                    pop = self._algo.ask()  # pymoo's initial population (our design, duplicates removed)
                    self._queue = [(np.asarray(x, dtype=np.float64), (), "initial") for x in pop.get("X")]
                    self._initial_asked = True
                elif self._gen == 0:
                    self._queue = [(x, (), "initial-extra") for x in self._lhs(max(1, n - len(out)))]
                else:
                    self._queue = self._breed(self._algo.n_offsprings)
            x, parents, kind = self._queue.pop(0)
            cand = Candidate(np.clip(x, self._lo, self._hi), self._next_id, generation=self._gen, parents=parents, meta={"kind": kind})
            self._next_id += 1
            self._n_asked += 1
            out.append(cand)
        return out

    def tell(self, results: Sequence[TrialResult]) -> None:
        for r in results:
            cid = int(r.candidate.id)
            self._next_id = max(self._next_id, cid + 1)
            self._n_told += 1
            self._resolved += 1
            if r.ok and np.asarray(r.values).reshape(-1).shape == (self.problem.n_obj,):
                self._n_ok += 1
                x = np.clip(np.asarray(r.candidate.x, dtype=np.float64), self._lo, self._hi)
                F = self.problem.minimization(np.asarray(r.values, dtype=np.float64).reshape(-1))
                self._buffer.append((cid, x, F))
            if self._resolved >= self._batch and (self._gen > 0 or len(self._buffer) >= 2):
                self._survive()

    @property
    def counts(self) -> dict[str, int]:
        return {"asked": self._n_asked, "told": self._n_told, "ok": self._n_ok, "generations": self._gen}
