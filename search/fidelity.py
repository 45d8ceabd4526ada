"""Multi-fidelity maths: nested seeded example subsets, stitching, confidence bounds, promotion.

Numpy only (``import search`` stays light). The controller and the workers share it:

* :func:`level_indices`: the examples of a fidelity level. Each example group of an
  objective (one per lm-eval task; one for the other evaluators) is shuffled once with a
  seed derived from the run seed, the objective's name and the group; a level takes the
  first ``ceil(fraction x size)`` of each group's shuffle. Level k's examples are therefore a
  prefix of level k+1's in every group: the subsets are nested, and reproducible for a seed.
* :class:`Examples`: per-example results of one objective (index in the evaluator's example
  list, value, weight, group, margin), what a worker returns for the examples it scored and
  what the store keeps per level. :func:`stitch` joins levels in dataset order;
  :func:`combine` gives the objective value back (the mean, the weighted mean, exp of the
  weighted mean, or the max, as the evaluator declares).
* :func:`bound`: the optimistic end of a confidence interval for the full-set value from a
  subset (finite-population corrected, see docs/fidelity.md); :func:`promote`: the rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .seeding import derive_seed

#: how per-example values give the objective value back
COMBINE_KINDS = ("mean", "exp_mean", "max")


@dataclass
class Examples:
    """Per-example results of one objective on the examples scored (sorted by ``index``).

    ``value``: each example's value of the objective's metric; ``weight``: its weight in a
    weighted mean (perplexity: tokens); ``group``: its group (the objective is the mean of the
    groups' means: lm-eval tasks); ``margin``: its margin (NaN where none); ``combine``: how
    the values give the metric back (:data:`COMBINE_KINDS`)."""

    index: np.ndarray
    value: np.ndarray
    weight: np.ndarray
    group: np.ndarray
    margin: np.ndarray
    combine: str = "mean"

    @classmethod
    def of(cls, index: Sequence[int], value: Sequence[float], *, weight: Sequence[float] | None = None,
           group: Sequence[int] | None = None, margin: Sequence[float] | None = None, combine: str = "mean") -> Examples:
        idx = np.asarray(index, dtype=np.int64).ravel()
        n = len(idx)

        def col(a: Sequence[float] | None, fill: float) -> np.ndarray:
            out = np.full(n, fill, dtype=np.float64) if a is None else np.asarray(a, dtype=np.float64).ravel()
            if len(out) != n:
                raise ValueError(f"per-example arrays of different lengths ({len(out)} vs {n} indices)")
            return out

        if combine not in COMBINE_KINDS:
            raise ValueError(f"unknown combine {combine!r}; one of {COMBINE_KINDS}")
        order = np.argsort(idx, kind="stable")
        return cls(idx[order], col(value, 0.0)[order], col(weight, 1.0)[order], col(group, 0.0)[order].astype(np.int64),
                   col(margin, math.nan)[order], combine)

    def __len__(self) -> int:
        return len(self.index)

    def to_array(self) -> np.ndarray:
        """(n, 5) float64: index, value, weight, group, margin (what the store keeps)."""
        return np.column_stack([self.index.astype(np.float64), self.value, self.weight, self.group.astype(np.float64), self.margin])

    @classmethod
    def from_array(cls, a: np.ndarray, combine: str) -> Examples:
        a = np.asarray(a, dtype=np.float64).reshape(-1, 5)
        return cls(a[:, 0].astype(np.int64), a[:, 1].copy(), a[:, 2].copy(), a[:, 3].astype(np.int64), a[:, 4].copy(), combine)

    @property
    def has_margins(self) -> bool:
        return len(self) > 0 and bool(np.isfinite(self.margin).all())


def stitch(parts: Sequence[Examples]) -> Examples:
    """One objective's per-example results of several levels, in dataset (index) order.
    Raises ValueError when two levels scored the same example (a promotion repeats none)."""
    if not parts:
        raise ValueError("nothing to stitch")
    a = np.vstack([p.to_array() for p in parts])
    a = a[np.argsort(a[:, 0], kind="stable")]
    if len(a) > 1 and np.any(np.diff(a[:, 0]) == 0):
        raise ValueError("an example was scored twice")
    return Examples.from_array(a, parts[0].combine)


def combine(ex: Examples) -> float:
    """The objective value the per-example results give: the mean over groups of each group's
    weighted mean (``exp`` of it for ``exp_mean``), or the largest value (``max``)."""
    if len(ex) == 0:
        return math.nan
    if ex.combine == "max":
        return float(ex.value.max())
    means = []
    for g in np.unique(ex.group):
        m = ex.group == g
        means.append(float(np.sum(ex.weight[m] * ex.value[m]) / np.sum(ex.weight[m])))
    v = float(np.mean(means))
    return math.exp(v) if ex.combine == "exp_mean" else v


def level_sizes(level: float, sizes: Sequence[int], count: bool = False) -> list[int]:
    """Examples per group at a level: a fraction of each group, or (``count``) a number of
    examples spread over the groups in proportion to their sizes; at least one per group."""
    total = sum(sizes)
    frac = min(1.0, level / max(total, 1)) if count else min(1.0, level)
    return [min(n, max(1, math.ceil(frac * n - 1e-9))) if n else 0 for n in sizes]


def level_indices(level: float, sizes: Sequence[int], seed: int, objective: str, count: bool = False) -> np.ndarray:
    """The examples (indices into the concatenated groups, sorted) of ``level`` for one
    objective: a prefix of each group's seeded shuffle, so every level holds the ones below."""
    out = []
    offset = 0
    for g, (n, m) in enumerate(zip(sizes, level_sizes(level, sizes, count), strict=True)):
        if m:
            perm = np.random.default_rng(derive_seed("fidelity", seed, objective, g)).permutation(n)
            out.append(perm[:m] + offset)
        offset += n
    return np.sort(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)


def new_indices(levels: Sequence[float], k: int, sizes: Sequence[int], seed: int, objective: str, count: bool = False) -> np.ndarray:
    """The examples level ``k`` adds to level ``k - 1`` (all of level 0's for ``k == 0``)."""
    cur = level_indices(levels[k], sizes, seed, objective, count)
    if k == 0:
        return cur
    prev = level_indices(levels[k - 1], sizes, seed, objective, count)
    return np.setdiff1d(cur, prev, assume_unique=True)


def standard_error(ex: Examples, sizes: Sequence[int], floor: float | None = None) -> float:
    """Standard error of :func:`combine`'s inner mean as an estimate of the full-set one.

    Per group: the ratio estimator's variance ``s^2 / n x (1 - n / N)`` (``s^2``: sample
    variance of ``w_i (v_i - mean) / mean(w)``; the factor is the finite-population
    correction, zero once every example is scored). Values that are all in [0, 1] with unit
    weights (accuracies) use the larger of that and ``p(1 - p)`` with ``p`` shrunk towards 1/2
    (Agresti-Coull: ``(sum + 2) / (n + 4)``), so that 5 right answers out of 5 still leave
    room. The groups' means are averaged, so their variances add over the groups squared.
    ``inf`` when a group has fewer than two scored examples (nothing to judge by).
    ``floor`` (paired differences, see :func:`paired_stop`): instead of the above, the
    variance is at least ``floor / (n + 2)``."""
    if ex.combine == "max":
        return 0.0
    var = 0.0
    groups = np.unique(ex.group)
    for g in groups:
        m = ex.group == g
        n = int(m.sum())
        full = int(sizes[g]) if g < len(sizes) else n
        if n >= full:
            continue
        if n < 2:
            return math.inf
        v, w = ex.value[m], ex.weight[m]
        mean = float(np.sum(w * v) / np.sum(w))
        s2 = float(np.var(w * (v - mean) / np.mean(w), ddof=1))
        if floor is not None:
            s2 = max(s2, floor / (n + 2.0))
        elif np.all(w == 1.0) and v.min() >= 0.0 and v.max() <= 1.0:
            p = (float(v.sum()) + 2.0) / (n + 4.0)
            s2 = max(s2, p * (1.0 - p))
        var += s2 / n * (1.0 - n / full)
    return math.sqrt(var) / len(groups)


def optimistic(ex: Examples, sizes: Sequence[int], direction: str, z: float) -> float:
    """The best full-set value still plausible: the estimate moved ``z`` standard errors
    towards better (through ``exp`` for ``exp_mean``). For ``max``: the subset's max is a
    lower bound of the full set's, so it is the optimistic value of a minimised objective and
    nothing bounds a maximised one (``inf``)."""
    if ex.combine == "max":
        return combine(ex) if direction == "minimize" else math.inf
    se = standard_error(ex, sizes)
    inner = combine(ex)
    if ex.combine == "exp_mean":
        inner = math.log(inner) if inner > 0 else -math.inf
    sign = 1.0 if direction == "maximize" else -1.0
    b = inner + sign * z * se if math.isfinite(se) else sign * math.inf
    if ex.combine == "exp_mean":
        return math.exp(b) if b < 700 else math.inf
    return b


def paired_stop(cand: Sequence[Examples], sizes: Sequence[Sequence[int]], directions: Sequence[str], z: float,
                others: Sequence[tuple[Sequence[float], Sequence[Examples]]], eps: Sequence[float] | None = None) -> bool:
    """The paired rule: stop a candidate when some full-fidelity trial is, with confidence,
    at least as good in every objective and better in one, judged on the examples the
    candidate scored (the same examples for every trial at a level: nested seeded subsets).

    Per objective, the per-example differences (candidate minus the other trial, weights and
    groups kept) estimate the full-set difference of the inner means; its bound is the
    estimate ``z`` standard errors towards the candidate (finite-population corrected, the
    variance at least ``1 / (n + 2)`` for metrics in [0, 1], so identical answers on a few
    examples still leave room). ``max`` objectives compare the candidate's optimistic value
    with the other's full value instead. ``others``: (values, full per-example results).
    ``eps`` (per objective, in its units): a candidate that could be better than the other
    trial by at most this much counts as no better (epsilon-dominance)."""
    eps = [0.0] * len(directions) if eps is None else list(eps)
    loose = any(e > 0 for e in eps)
    for vals, full in others:
        sure, strict = True, False
        for j, (c, f, d) in enumerate(zip(cand, full, directions, strict=True)):
            sign = 1.0 if d == "maximize" else -1.0
            if c.combine == "max":
                gap = sign * (optimistic(c, sizes[j], d, z) - float(vals[j]))  # > 0: the candidate could be better
            else:
                diff = Examples(c.index, c.value - f.value[c.index], c.weight, c.group, c.margin, "mean")
                unit = bool(np.all(c.weight == 1.0)) and c.value.min() >= 0.0 and c.value.max() <= 1.0
                gap = sign * combine(diff) + z * standard_error(diff, sizes[j], floor=(1.0 if unit else 0.0))
            if gap > eps[j]:
                sure = False
                break
            strict = strict or gap < 0
        if sure and (strict or loose):
            return True
    return False


def promote(optimistic_values: Sequence[float], front: np.ndarray, directions: Sequence[str],
            eps: Sequence[float] | None = None) -> bool:
    """Whether a candidate could still reach the full-fidelity front: no front member is at
    least as good in every objective and better in one than its optimistic values (with
    ``eps``: at least as good as them less ``eps``, per objective: epsilon-dominance)."""
    if front is None or len(front) == 0:
        return True
    sign = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    o = np.asarray(optimistic_values, dtype=np.float64) * sign  # smaller is better
    F = np.asarray(front, dtype=np.float64) * sign
    e = np.zeros(len(directions)) if eps is None else np.asarray(eps, dtype=np.float64)
    if np.any(e > 0):
        dominated = np.all(F <= o + e, axis=1)
    else:
        dominated = np.all(F <= o, axis=1) & np.any(F < o, axis=1)
    return not bool(dominated.any())


def epsilons(values: np.ndarray, epsilon: float) -> list[float]:
    """``epsilon`` x each objective's range over ``values`` (the full-fidelity results)."""
    v = np.asarray(values, dtype=np.float64)
    if epsilon <= 0 or v.ndim != 2 or len(v) < 2:
        return [0.0] * (v.shape[1] if v.ndim == 2 else 0)
    return [float(epsilon * (v[:, j].max() - v[:, j].min())) for j in range(v.shape[1])]
