"""Baselines: uniform random search and scrambled Sobol points.

Both ignore results (they only count them); every ``ask`` returns exactly ``n`` points.
``include_seeds`` proposes the problem's named seed points (experts one-hot, base, uniform
merge) first, which is what a user usually wants to see on the front; the benchmark's
"random search" baseline leaves it off.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import Field

from .base import Candidate, Strategy, StrategyOptions, TrialResult


class RandomOptions(StrategyOptions):
    include_seeds: bool = Field(False, description="propose the problem's seed points (experts, base, uniform) first")


class _Baseline(Strategy):
    Options = RandomOptions
    snapshots = True

    def __init__(self, problem, options=None, seed: int = 0):
        super().__init__(problem, options, seed)
        self._next_id = 0
        self._n_told = 0
        self._n_ok = 0
        self._seeds_left = [(name, np.asarray(x, dtype=np.float64)) for name, x in problem.seeds] if self.options.include_seeds else []

    def _draw(self, k: int) -> np.ndarray:  # (k, dim) in the unit cube
        raise NotImplementedError

    def ask(self, n: int) -> list[Candidate]:
        out: list[Candidate] = []
        lo, hi = self.problem.lower, self.problem.upper
        while len(out) < n and self._seeds_left:
            name, x = self._seeds_left.pop(0)
            out.append(Candidate(np.clip(x, lo, hi), self._next_id, meta={"seed": name}))
            self._next_id += 1
        k = n - len(out)
        if k > 0:
            U = self._draw(k)
            for u in U:
                out.append(Candidate(np.clip(lo + u * (hi - lo), lo, hi), self._next_id))
                self._next_id += 1
        return out

    def tell(self, results: Sequence[TrialResult]) -> None:
        for r in results:
            self._n_told += 1
            self._n_ok += int(r.ok)
            self._next_id = max(self._next_id, int(r.candidate.id) + 1)

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra(self, state: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {
            "next_id": self._next_id,
            "n_told": self._n_told,
            "n_ok": self._n_ok,
            "seeds_left": [(name, x.copy()) for name, x in self._seeds_left],
            **self._extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._next_id = int(state["next_id"])
        self._n_told = int(state["n_told"])
        self._n_ok = int(state["n_ok"])
        self._seeds_left = [(name, np.asarray(x, dtype=np.float64)) for name, x in state["seeds_left"]]
        self._load_extra(state)


class RandomStrategy(_Baseline):
    """Independent uniform points in the box (numpy PCG64 seeded from the run seed)."""

    name = "random"

    def __init__(self, problem, options=None, seed: int = 0):
        super().__init__(problem, options, seed)
        self._rng = np.random.default_rng(self.seed)

    def _draw(self, k: int) -> np.ndarray:
        return self._rng.random((k, self.problem.dim))

    def _extra_state(self) -> dict[str, Any]:
        return {"rng": self._rng.bit_generator.state}

    def _load_extra(self, state: dict[str, Any]) -> None:
        self._rng.bit_generator.state = state["rng"]


class SobolStrategy(_Baseline):
    """Scrambled Sobol points (scipy.stats.qmc), scrambling seeded from the run seed.

    The sequence's balance properties hold for prefixes of 2^m points; any prefix is still
    a valid low-discrepancy design. State = the number of points drawn: a restored engine is
    rebuilt with the same seed and fast-forwarded, which reproduces the same points.
    """

    name = "sobol"

    def __init__(self, problem, options=None, seed: int = 0):
        super().__init__(problem, options, seed)
        self._n_drawn = 0
        self._engine = self._make_engine()

    def _make_engine(self):
        from scipy.stats import qmc

        return qmc.Sobol(d=self.problem.dim, scramble=True, rng=np.random.default_rng(self.seed))

    def _draw(self, k: int) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "balance properties ... power of 2"
            U = self._engine.random(k)
        self._n_drawn += k
        return U

    def _extra_state(self) -> dict[str, Any]:
        return {"n_drawn": self._n_drawn}

    def _load_extra(self, state: dict[str, Any]) -> None:
        self._n_drawn = int(state["n_drawn"])
        self._engine = self._make_engine()
        if self._n_drawn:
            self._engine.fast_forward(self._n_drawn)
