"""What the controller makes of a fidelity trial's levels: stitched values, bounds, the tell.

A trial's per-level per-example results (:class:`search.store.LevelRows`, as the store keeps
them) are stitched per objective in dataset order (:func:`search.fidelity.stitch`); from them
come the values, their standard errors as estimates of the full-set values, the optimistic
values the promotion rule compares with the front, and the per-example scores and margins a
strategy is told (full length, NaN where an example was not scored). The live controller and
a resumed one build a trial's result with this same function from the same arrays, so a
resumed run tells its strategy exactly what the uninterrupted run told it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .fidelity import Examples, combine, optimistic, standard_error, stitch


@dataclass
class Stitched:
    values: np.ndarray  # per objective, on the examples scored so far
    se: np.ndarray  # standard error of each value as an estimate of its full-set value (0 when complete)
    optimistic: np.ndarray  # each value z standard errors towards better
    fraction: float  # the smallest share of an objective's examples scored so far
    full: bool  # every example of every objective scored
    examples: list[int]  # examples scored per objective
    per_sample: dict[str, np.ndarray] = field(default_factory=dict)  # "<objective>/examples" -> float32, NaN unscored
    margins: dict[int, np.ndarray] = field(default_factory=dict)  # objective index -> float64, NaN unscored
    examples_of: list[Examples] = field(default_factory=list)  # the stitched per-example results, per objective
    sizes: list[list[int]] = field(default_factory=list)  # each objective's example group sizes


def stitch_levels(rows: Sequence[object], objectives: Sequence[tuple[str, str]], z: float) -> Stitched:
    """Stitch a trial's level rows (each with ``objective_idx``, ``combine``, ``sizes``,
    ``array``) for ``objectives`` ((name, direction) in order)."""
    by_obj: dict[int, list[Examples]] = {}
    sizes: dict[int, list[int]] = {}
    for r in rows:
        j = int(r.objective_idx)  # type: ignore[attr-defined]
        by_obj.setdefault(j, []).append(Examples.from_array(r.array, r.combine))  # type: ignore[attr-defined]
        sizes[j] = list(r.sizes)  # type: ignore[attr-defined]
    n = len(objectives)
    values, se, opt = np.full(n, math.nan), np.full(n, math.inf), np.full(n, math.nan)
    examples, fractions = [0] * n, [0.0] * n
    per_sample: dict[str, np.ndarray] = {}
    margins: dict[int, np.ndarray] = {}
    stitched: list[Examples] = []
    for j, (name, direction) in enumerate(objectives):
        parts = [p for p in by_obj.get(j, []) if len(p)]
        if not parts:
            stitched.append(Examples.of([], []))
            continue
        ex = stitch(parts)
        stitched.append(ex)
        total = int(sum(sizes[j]))
        values[j] = combine(ex)
        se[j] = standard_error(ex, sizes[j])
        opt[j] = optimistic(ex, sizes[j], direction, z)
        examples[j] = len(ex)
        fractions[j] = len(ex) / total if total else 1.0
        if ex.combine == "mean" and np.all(ex.weight == 1.0) and ex.value.min() >= 0.0 and ex.value.max() <= 1.0:
            ps = np.full(total, np.nan, dtype=np.float32)
            ps[ex.index] = ex.value
            per_sample[f"{name}/examples"] = ps
        if ex.has_margins:
            m = np.full(total, np.nan)
            m[ex.index] = ex.margin
            margins[j] = m
    full = all(f >= 1.0 for f in fractions)
    if full:
        se[:] = 0.0
    return Stitched(values, se, opt, float(min(fractions)), full, examples, per_sample, margins, stitched,
                    [sizes.get(j, []) for j in range(n)])


def full_front(results: dict[int, object]) -> np.ndarray:
    """Values of the successful full-fidelity results (the rows the front is made of)."""
    rows = [r.values for r in results.values() if r.ok and not r.low_fidelity]  # type: ignore[attr-defined]
    return np.asarray(rows, dtype=np.float64) if rows else np.zeros((0, 0))
