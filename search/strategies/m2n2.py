"""M2N2 (Model Merging of Natural Niches; Abrantes, Lange, Tang 2025) in coefficient space.

The archive holds up to ``archive_size`` (20) evaluated merges, each with a row of
per-example scores ``s_k in [0, 1]^N`` (``TrialResult.per_sample``: all objectives'
examples concatenated, higher is better).

* Resource competition: ``z_j = sum_k s_kj``, ``F_kj = s_kj / z_j^alpha`` (``z_j = 0`` counts
  as 1), fitness ``f(k) = sum_j F_kj``. ``alpha = 1`` shares each example among the models
  that solve it (niches); ``alpha = 0`` is a plain GA on the summed score.
* Mate choice by attraction: parent A with probability ``f / sum f``; parent B with
  probability proportional to ``sum_j max(0, F_Bj - F_Aj)`` (what B solves that A does not);
  when that is zero for everyone, fitness-proportional among the others.
* Crossover with a split point: the genome is the coefficient vector in group-major order
  (``Problem.coord_group``: all of a layer group's coordinates are adjacent), so split
  points fall on group boundaries. ``s ~ U{0..G-1}``, ``w ~ U(0, 1)``: groups before ``s`` take
  ``w * A + (1 - w) * B``, the others ``(1 - w) * A + w * B``. For task arithmetic this is the
  paper's parameter-space crossover restricted to the experts' span (linear instead of
  SLERP). Without ``coord_group`` every coordinate is its own group.
* Mutation (required here: merging fixed experts, children would otherwise never leave the
  parents' range): Gaussian noise with sd ``mutation_sigma`` x box width on each coordinate
  (with probability ``mutation_prob``), clipped to the bounds.
* Replacement: while the archive is not full a child joins it; then fitness is recomputed
  over archive + child and the least fit is dropped (the child itself if it is the worst).
* Start: the problem's seed points (experts one-hot, base, uniform merge), then uniform
  random points until ``min_init`` (default: the archive size) initial points have been
  proposed. Until two initial points have come back, extra asks get more random points.

Weak spot fixed (seen on the digits zoo): with only the seeds in the archive, every child
of two one-hot experts lies on the simplex "coefficients sum to 1", while task-arithmetic
merges are often best with sums well above 1 (each expert near 1); children only left the
simplex through mutation, a slow random walk at a small sigma. Filling the initial archive
with random points and a mutation sd of 0.1 of the box (instead of 0.05) reached 0.95 of the
reference hypervolume at 200 evaluations on digits instead of 0.37.

Each ask is one child (``Candidate.parents`` = the two parents' candidate ids,
``generation`` = 1 + the parents' largest generation; initial points are generation 0).
Children are bred from the archive as it is when asked, so ``ask`` never waits.

Fallback without per-example scores: if any result in the comparison lacks ``per_sample``
(or their lengths differ), each objective's value becomes one "example": its value min-max
normalised over the compared models (best = 1, worst = 0, in the objective's direction).
Resource competition then acts per objective, which still rewards models that are good
where few others are.

Failed results (None/NaN/inf) never enter the archive.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import Field

from ..seeding import derive_seed
from .base import Candidate, Strategy, StrategyOptions, TrialResult


class M2N2Options(StrategyOptions):
    archive_size: int = Field(20, ge=2, description="models kept in the archive")
    alpha: float = Field(1.0, ge=0, description="resource-competition exponent (0 = plain GA)")
    mutation_sigma: float = Field(0.1, ge=0, description="Gaussian mutation sd as a fraction of each coordinate's box width")
    mutation_prob: float = Field(1.0, ge=0, le=1, description="probability that a coordinate is mutated")
    attraction: bool = Field(True, description="choose the second parent by attraction (False: fitness-proportional)")
    split_point: bool = Field(True, description="crossover with a split point at group boundaries (False: one weight)")
    min_init: int | None = Field(None, ge=2, description="initial points: the seeds, then random points up to this many (default archive_size)")


class M2N2Strategy(Strategy):
    name = "m2n2"
    Options = M2N2Options
    needs_per_sample = True

    def __init__(self, problem, options=None, seed: int = 0):
        super().__init__(problem, options, seed)
        o: M2N2Options = self.options  # type: ignore[assignment]
        self._lo = np.asarray(problem.lower, dtype=np.float64)
        self._hi = np.asarray(problem.upper, dtype=np.float64)
        cg = problem.coord_group
        cg = np.arange(problem.dim) if cg is None or len(cg) != problem.dim else np.asarray(cg)
        # ordinal of each coordinate's group, in order of first appearance
        order = {g: i for i, g in enumerate(dict.fromkeys(cg.tolist()))}
        self._gidx = np.array([order[g] for g in cg.tolist()])
        self._n_groups = len(order)
        self._rng = np.random.default_rng(derive_seed("m2n2", self.seed))
        self._next_id = 0
        self._archive: list[dict[str, Any]] = []  # {"cid", "x", "values", "per_sample", "gen"}
        self._pending: dict[int, int] = {}  # cid -> generation
        self._init_queue: list[tuple[np.ndarray, str]] = []
        for name, x in problem.seeds:
            x = np.clip(np.asarray(x, dtype=np.float64), self._lo, self._hi)
            if not any(np.allclose(x, q) for q, _ in self._init_queue):
                self._init_queue.append((x, name))
        while len(self._init_queue) < (o.min_init or o.archive_size):
            self._init_queue.append((self._random_point(), "random"))
        self._n_told = 0
        self._n_ok = 0
        self._n_children = 0
        self._n_rejected = 0  # children that were the least fit on arrival
        self._used_fallback = False

    # ------------------------------------------------------------------ scores and fitness
    def _random_point(self) -> np.ndarray:
        return self._lo + self._rng.random(self.problem.dim) * (self._hi - self._lo)

    def _score_rows(self, members: list[dict[str, Any]]) -> np.ndarray:
        rows = [m["per_sample"] for m in members]
        if all(r is not None for r in rows) and len({len(r) for r in rows}) == 1 and len(rows[0]) > 0:
            S = np.asarray(rows, dtype=np.float64)
            return np.clip(np.nan_to_num(S, nan=0.0), 0.0, 1.0)
        self._used_fallback = True
        V = np.asarray([m["values"] for m in members], dtype=np.float64)
        S = np.empty_like(V)
        for i, ob in enumerate(self.problem.objectives):
            g = V[:, i] if ob.direction == "maximize" else -V[:, i]
            span = g.max() - g.min()
            S[:, i] = (g - g.min()) / span if span > 0 else 1.0
        return S

    def _fitness(self, S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = S.sum(axis=0)
        z = np.where(z > 0, z, 1.0) ** self.options.alpha
        F = S / z[None, :]
        return F, F.sum(axis=1)

    # ------------------------------------------------------------------ breeding
    def _pick(self, p: np.ndarray) -> int:
        s = p.sum()
        if not np.isfinite(s) or s <= 0:
            return int(self._rng.integers(len(p)))
        return int(self._rng.choice(len(p), p=p / s))

    def _child(self) -> tuple[np.ndarray, tuple[int, int], int]:
        arc = self._archive
        F, f = self._fitness(self._score_rows(arc))
        a = self._pick(f.copy())
        # mate weights, first that is usable: attraction, then fitness, then uniform (never A itself)
        choices = [np.maximum(0.0, F - F[a][None, :]).sum(axis=1)] if self.options.attraction else []
        for p in (*choices, f.copy(), np.ones(len(arc))):
            p[a] = 0.0
            if p.sum() > 0:
                break
        b = self._pick(p)
        xa, xb = arc[a]["x"], arc[b]["x"]
        w = self._rng.random()
        if self.options.split_point:
            s = int(self._rng.integers(self._n_groups))
            before = self._gidx < s
            x = np.where(before, w * xa + (1 - w) * xb, (1 - w) * xa + w * xb)
        else:
            x = w * xa + (1 - w) * xb
        o = self.options
        if o.mutation_sigma > 0:
            noise = self._rng.normal(0.0, 1.0, self.problem.dim) * o.mutation_sigma * (self._hi - self._lo)
            if o.mutation_prob < 1:
                noise *= self._rng.random(self.problem.dim) < o.mutation_prob
            x = x + noise
        gen = 1 + max(arc[a]["gen"], arc[b]["gen"])
        return np.clip(x, self._lo, self._hi), (arc[a]["cid"], arc[b]["cid"]), gen

    # ------------------------------------------------------------------ protocol
    def ask(self, n: int) -> list[Candidate]:
        out: list[Candidate] = []
        while len(out) < n:
            cid = self._next_id
            self._next_id += 1
            if self._init_queue:
                x, name = self._init_queue.pop(0)
                meta = {"kind": "seed", "seed": name} if name != "random" else {"kind": "random"}
                cand = Candidate(x, cid, generation=0, meta=meta)
            elif len(self._archive) < 2:
                cand = Candidate(self._random_point(), cid, generation=0, meta={"kind": "random"})
            else:
                x, parents, gen = self._child()
                self._n_children += 1
                cand = Candidate(x, cid, generation=gen, parents=parents, meta={"kind": "child"})
            self._pending[cid] = cand.generation
            out.append(cand)
        return out

    def tell(self, results: Sequence[TrialResult]) -> None:
        for r in results:
            cid = int(r.candidate.id)
            self._next_id = max(self._next_id, cid + 1)
            self._n_told += 1
            gen = self._pending.pop(cid, int(r.candidate.generation))
            values = None if r.values is None else np.asarray(r.values, dtype=np.float64).reshape(-1)
            if not r.ok or values is None or values.shape != (self.problem.n_obj,):
                continue
            self._n_ok += 1
            ps = None
            if r.per_sample is not None:
                ps = np.asarray(r.per_sample, dtype=np.float64).reshape(-1)
            member = {
                "cid": cid,
                "x": np.clip(np.asarray(r.candidate.x, dtype=np.float64), self._lo, self._hi),
                "values": values,
                "per_sample": ps,
                "gen": gen,
            }
            if len(self._archive) < self.options.archive_size:
                self._archive.append(member)
                continue
            pool = self._archive + [member]
            _, f = self._fitness(self._score_rows(pool))
            worst = int(np.argmin(f))
            if worst == len(self._archive):
                self._n_rejected += 1
            else:
                self._archive[worst] = member

    @property
    def archive(self) -> list[dict[str, Any]]:
        """The current archive (copies): candidate id, coefficients, values, generation."""
        return [{k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in m.items()} for m in self._archive]
