"""Pareto fronts and quality indicators for objectives with explicit directions.

Every function takes raw objective values, shape ``(n_points, n_objectives)``, in the
objectives' own units, plus one direction per objective (``"maximize"`` or ``"minimize"``).
Nothing is normalised: maximised objectives are negated internally so that "smaller is
better" everywhere, which is what pymoo expects.

Rows holding a NaN/inf value (failed trials) are never on a front and never contribute to
an indicator.

Reference point convention (:func:`hypervolume`): ``ref_point`` is given in raw objective
units, in the same directions as the values: the worst value still worth counting for each
objective. For accuracies in [0, 1] that are maximised the natural choice is ``0`` for every
objective; for a minimised loss, a value a little above the worst loss you care about. A point
adds volume only if it is strictly better than the reference point in every objective. The
same reference point must be used for every front that is compared.

Runs (trials read back from a store; ``search status``, the dashboard, the exporter and the
controller's progress bar share these rules):

Hypervolume reference point (per objective, in this order of precedence)
    1. an explicit ``ref_point`` (argument of :func:`load_run` / :func:`reference_point`),
    2. ``ref_point`` given for the objective in the run's config (``objectives[i].ref_point``),
    3. maximised objectives: ``0`` (scores in [0, 1] such as accuracies); if a value below 0
       was observed, the worst observed value minus 10% of its magnitude;
    4. minimised objectives: the worst (largest) observed value plus 10% of its magnitude,
       i.e. ``worst * 1.1`` for positive values (``worst + 0.1 * span``, or ``+ 1``, if the
       worst value is 0).
    "Observed" means over the COMPLETE trials of the run (all runs when the dashboard
    compares several), so the reference - and with it the hypervolume of a run that uses
    rules 3-4 with negative / minimised values - may move while a search is running. Pin it
    with ``ref_point`` when numbers must be comparable across time or runs. Points that do
    not strictly improve on the reference in every objective contribute nothing.

Hypervolume history
    :func:`hypervolume_history` gives the hypervolume after each finished evaluation, in the
    order trials finished (``finished_at``); failed trials and trials stopped at a low fidelity
    level count as evaluations (they use budget) but add nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .store import Trial

__all__ = [
    "to_minimization",
    "pareto_mask",
    "non_dominated_ranks",
    "hypervolume",
    "igd_plus",
    "hv_improvement",
    "all_finite",
    "config_ref_point",
    "reference_point",
    "ref_hypervolume",
    "front_numbers",
    "HypervolumeTracker",
    "hypervolume_history",
]


def _signs(directions: Sequence[str], n_obj: int) -> np.ndarray:
    if len(directions) != n_obj:
        raise ValueError(f"{len(directions)} directions given for {n_obj} objectives")
    out = []
    for d in directions:
        if d == "maximize":
            out.append(-1.0)
        elif d == "minimize":
            out.append(1.0)
        else:
            raise ValueError(f"direction {d!r} is not 'maximize' or 'minimize'")
    return np.asarray(out)


def _as_matrix(values: np.ndarray | Sequence[Sequence[float]], directions: Sequence[str]) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v.reshape(-1, len(directions)) if v.size else np.zeros((0, len(directions)))
    if v.ndim != 2:
        raise ValueError(f"values must be a matrix (n_points, n_objectives), got shape {v.shape}")
    return v


def to_minimization(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Values signed so that smaller is better for every objective (maximised ones negated)."""
    v = _as_matrix(values, directions)
    return v * _signs(directions, v.shape[1])


def _dominated_by_any(F: np.ndarray, G: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """For each row of F (minimisation), whether some row of G dominates it."""
    out = np.zeros(len(F), dtype=bool)
    if len(G) == 0:
        return out
    for s in range(0, len(F), chunk):
        f = F[s : s + chunk, None, :]
        le = np.all(G[None, :, :] <= f, axis=2)
        lt = np.any(G[None, :, :] < f, axis=2)
        out[s : s + chunk] = np.any(le & lt, axis=1)
    return out


_SWEEP_BLOCK = 512  # rows per block of pareto_mask's sorted sweep


def pareto_mask(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``values``.

    A row is on the front if it is finite and no other finite row is at least as good in
    every objective and strictly better in one. Duplicated front points are all kept.
    """
    F = to_minimization(values, directions)
    finite = np.all(np.isfinite(F), axis=1)
    mask = np.zeros(len(F), dtype=bool)
    idx = np.flatnonzero(finite)
    if len(idx) == 0:
        return mask
    G = F[idx]
    if len(G) <= _SWEEP_BLOCK:
        mask[idx] = ~_dominated_by_any(G, G)
        return mask
    # Lexicographic sweep: a dominating row sorts before the row it dominates, so each block
    # of sorted rows is checked against the front found so far and against itself only
    # (O(n * (front + block)) instead of O(n^2); the same mask).
    order = np.lexsort(G.T[::-1])
    front = np.zeros((0, G.shape[1]))
    for s in range(0, len(order), _SWEEP_BLOCK):
        rows = order[s : s + _SWEEP_BLOCK]
        rows = rows[~_dominated_by_any(G[rows], front)]
        B = G[rows]
        keep = ~_dominated_by_any(B, B)
        mask[idx[rows[keep]]] = True
        front = np.vstack([front, B[keep]])
    return mask


def non_dominated_ranks(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Front index of every row (0 = Pareto front, 1 = the front once 0 is removed, ...).

    Non-finite rows get rank -1.
    """
    F = to_minimization(values, directions)
    ranks = np.full(len(F), -1, dtype=np.int64)
    remaining = np.flatnonzero(np.all(np.isfinite(F), axis=1))
    r = 0
    while len(remaining):
        G = F[remaining]
        front = ~_dominated_by_any(G, G)
        ranks[remaining[front]] = r
        remaining = remaining[~front]
        r += 1
    return ranks


def hypervolume(values: np.ndarray, directions: Sequence[str], ref_point: Sequence[float] | float) -> float:
    """Hypervolume dominated by ``values`` and bounded by ``ref_point`` (see the module notes).

    ``ref_point``: one value per objective in raw units (a scalar is used for every objective).
    Computed with pymoo's ``HV`` on the minimisation-signed values.
    """
    F = to_minimization(values, directions)
    n_obj = F.shape[1] if F.ndim == 2 and F.shape[1] else len(directions)
    ref = np.broadcast_to(np.asarray(ref_point, dtype=np.float64), (n_obj,)) * _signs(directions, n_obj)
    if len(F) == 0:
        return 0.0
    F = F[np.all(np.isfinite(F), axis=1)]
    F = F[np.all(F < ref, axis=1)]
    if len(F) == 0:
        return 0.0
    if n_obj == 1:
        return float(ref[0] - F[:, 0].min())
    if n_obj == 2:  # exact sweep (dominated points add nothing); no pymoo needed for the common case
        F = F[np.lexsort((F[:, 1], F[:, 0]))]
        hv, prev_y = 0.0, ref[1]
        for x, y in F:
            if y < prev_y:
                hv += (ref[0] - x) * (prev_y - y)
                prev_y = y
        return float(hv)
    from pymoo.indicators.hv import HV

    F = F[pareto_mask(F, ["minimize"] * n_obj)]
    return float(HV(ref_point=ref)(F))


def igd_plus(values: np.ndarray, directions: Sequence[str], reference_front: np.ndarray) -> float:
    """IGD+ of ``values`` to a reference front (both in raw units; smaller is better).

    Uses pymoo's ``IGDPlus`` on minimisation-signed values; ``inf`` when no row is finite.
    """
    F = to_minimization(values, directions)
    F = F[np.all(np.isfinite(F), axis=1)]
    R = to_minimization(reference_front, directions)
    R = R[np.all(np.isfinite(R), axis=1)]
    if len(F) == 0 or len(R) == 0:
        return float("inf")
    from pymoo.indicators.igd_plus import IGDPlus

    return float(IGDPlus(R)(F))


def hv_improvement(front: np.ndarray, cands: np.ndarray, ref: np.ndarray, *, rng: np.random.Generator | None = None,
                   n_samples: int = 8192) -> np.ndarray:
    """Hypervolume each candidate would add to ``front``, every objective minimised.

    ``front`` (k, m) and ``cands`` (c, m) are minimisation-signed; ``ref`` (m,) bounds the
    volume. One objective: exact (how far below the best value). Two objectives: exact
    (``vol([y, ref]) - HV({max(f, y)})`` on the sorted front).
    Three or more: a Monte Carlo estimate with ``n_samples`` shared uniform points in the box
    ``[min(front, cands), ref]`` (needs ``rng``); candidates are then ranked on the same samples.
    """
    F = np.asarray(front, dtype=np.float64).reshape(-1, len(ref))
    Y = np.asarray(cands, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    F = F[np.all(F < ref, axis=1)]
    if len(F):
        F = F[pareto_mask(F, ["minimize"] * len(ref))]
    box = np.prod(np.clip(ref - Y, 0.0, None), axis=1)
    if len(F) == 0:
        return box
    if len(ref) == 1:
        return np.clip(F[:, 0].min() - Y[:, 0], 0.0, None)
    if len(ref) == 2:
        F = F[np.argsort(F[:, 0], kind="stable")]
        out = np.empty(len(Y))
        for s in range(0, len(Y), 1024):
            y = Y[s : s + 1024]
            p1 = np.minimum(np.maximum(F[None, :, 0], y[:, :1]), ref[0])
            p2 = np.minimum(np.maximum(F[None, :, 1], y[:, 1:]), ref[1])
            nxt = np.concatenate([p1[:, 1:], np.full((len(y), 1), ref[0])], axis=1)
            out[s : s + 1024] = box[s : s + 1024] - np.sum((nxt - p1) * (ref[1] - p2), axis=1)
        return np.clip(out, 0.0, None)
    if rng is None:
        raise ValueError("hv_improvement with 3+ objectives needs rng (Monte Carlo estimate)")
    lo = np.minimum(F.min(0), Y.min(0))
    S = lo + rng.random((n_samples, len(ref))) * (ref - lo)
    free = ~np.any(_dominates_all(F, S), axis=0)  # not dominated by the front
    S = S[free]
    vol = float(np.prod(ref - lo)) / n_samples
    out = np.empty(len(Y))
    for s in range(0, len(Y), 256):
        out[s : s + 256] = _dominates_all(Y[s : s + 256], S).sum(1) * vol
    return out


def _dominates_all(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``D[i, j] = all(A[i] <= B[j])``, one objective at a time (2-D booleans only: an
    ``all`` over a short last axis of a 3-D array is several times slower)."""
    D = A[:, None, 0] <= B[None, :, 0]
    for j in range(1, A.shape[1]):
        D &= A[:, None, j] <= B[None, :, j]
    return D


# ----------------------------------------------------------------------------- runs


def all_finite(values: Sequence[float] | None) -> bool:
    """True when ``values`` is given and every entry is a finite number."""
    return values is not None and all(v is not None and math.isfinite(v) for v in values)


def config_ref_point(config: dict[str, Any], n_obj: int) -> list[float | None]:
    """Per-objective ``ref_point`` from the config's ``objectives[i].ref_point`` (None if absent)."""
    out: list[float | None] = [None] * n_obj
    objs = config.get("objectives")
    if isinstance(objs, list):
        for i, o in enumerate(objs[:n_obj]):
            r = o.get("ref_point") if isinstance(o, dict) else None
            if isinstance(r, (int, float)) and not isinstance(r, bool):
                out[i] = float(r)
    return out


def reference_point(
    values: np.ndarray | Sequence[Sequence[float]],
    directions: Sequence[str],
    given: Sequence[float | None] | None = None,
) -> list[float]:
    """Hypervolume reference point for ``values`` (n, k); see the module docstring for the rule.

    ``given`` may fix some objectives (None entries fall back to the rule).
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1, len(directions))
    v = v[np.all(np.isfinite(v), axis=1)]
    ref: list[float] = []
    for j, d in enumerate(directions):
        if given is not None and j < len(given) and given[j] is not None:
            ref.append(float(given[j]))  # type: ignore[arg-type]
            continue
        col = v[:, j]
        if d == "maximize":
            worst = float(col.min()) if col.size else 0.0
            ref.append(0.0 if worst >= 0 else worst - 0.1 * abs(worst))
        else:
            if not col.size:
                ref.append(1.0)
                continue
            worst = float(col.max())
            if worst != 0:
                ref.append(worst + 0.1 * abs(worst))
            else:
                span = float(col.max() - col.min())
                ref.append(worst + (0.1 * span if span > 0 else 1.0))
    return ref


def _beats_ref(values: np.ndarray, directions: Sequence[str], ref: Sequence[float]) -> np.ndarray:
    """Rows that strictly improve on ``ref`` in every objective (the others add no volume)."""
    if values.size == 0:
        return np.zeros(len(values), dtype=bool)
    sign = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
    return np.all(values * sign < np.asarray(ref) * sign, axis=1)


def ref_hypervolume(values: np.ndarray, directions: Sequence[str], ref: Sequence[float]) -> float:
    """Hypervolume of ``values`` above ``ref`` (rows not strictly better than ``ref`` add nothing)."""
    if len(values) == 0:
        return 0.0
    keep = _beats_ref(values, directions, ref)
    if not keep.any():
        return 0.0
    return float(hypervolume(values[keep], list(directions), np.asarray(ref, dtype=np.float64)))


def front_numbers(trials: Sequence[Trial], directions: Sequence[str]) -> list[int]:
    """Numbers of the COMPLETE trials (finite search values) on the Pareto front, ascending."""
    from .store import COMPLETE

    done = [t for t in trials if t.state == COMPLETE and all_finite(t.values) and len(t.values or []) == len(directions)]
    if not done:
        return []
    vals = np.asarray([t.values for t in done], dtype=np.float64)
    mask = np.asarray(pareto_mask(vals, list(directions)), dtype=bool)
    return sorted(t.number for t, m in zip(done, mask, strict=True) if m)


def _finish_key(t: Trial) -> tuple[float, int]:
    return (t.finished_at if t.finished_at is not None else math.inf, t.number)


def _finish_order(trials: Sequence[Trial]) -> list[Trial]:
    from .store import COMPLETE, FAIL, STOPPED

    return sorted((t for t in trials if t.state in (COMPLETE, FAIL, STOPPED)), key=_finish_key)


class HypervolumeTracker:
    """:func:`hypervolume_history` kept up to date incrementally for a growing run.

    ``update(trials)`` only processes trials that finished after the last call (when the
    earlier finish order is unchanged; otherwise it starts over), so a live dashboard does
    not recompute the whole history at every poll; ``extend(finished)`` takes the newly
    finished trials alone, so a poll does not even sort the run.
    """

    def __init__(self, directions: Sequence[str], ref: Sequence[float]):
        self.directions = list(directions)
        self.ref = [float(r) for r in ref]
        self._reset()

    def _reset(self) -> None:
        self._ids: list[int] = []
        self._seen: set[int] = set()
        self._sign = [1.0 if d == "minimize" else -1.0 for d in self.directions]
        self._front_min: list[tuple[float, ...]] = []
        self._last: tuple[float, int] = (-math.inf, -1)
        self._front = np.zeros((0, len(self.directions)))
        self._hv = 0.0
        self.history: list[tuple[int, float]] = []
        #: per history entry: examples evaluated so far (None while no trial counted any) and evaluation seconds so far
        self.cost: list[tuple[int | None, float]] = []
        self._examples: int | None = None
        self._seconds = 0.0

    def update(self, trials: Sequence[Trial]) -> list[tuple[int, float]]:
        done = _finish_order(trials)
        ids = [t.id for t in done]
        if ids[: len(self._ids)] != self._ids:
            self._reset()
        for t in done[len(self._ids) :]:
            self._add(t)
        return self.history

    def extend(self, finished: Sequence[Trial]) -> bool:
        """Count ``finished`` (trials that finished since the last call) without looking at
        the others; False (nothing counted) if one of them sorts before a trial already
        counted, or is one: then call :meth:`update` with the whole run."""
        new = sorted(finished, key=_finish_key)
        if new and self._ids and (_finish_key(new[0]) <= self._last or new[0].id in self._seen):
            return False
        for t in new:
            self._add(t)
        return True

    def _add(self, t: Trial) -> None:
        from .store import COMPLETE

        k = len(self.directions)
        if t.state == COMPLETE and all_finite(t.values) and len(t.values or []) == k:
            f = tuple(float(v) * s for v, s in zip(t.values, self._sign, strict=True))  # minimisation-signed
            # plain Python while the front is small (most polls add a point or two to a front of tens)
            if len(self._front_min) <= 64:
                dominated = any(all(a <= b for a, b in zip(g, f, strict=True)) and g != f for g in self._front_min)
            else:
                G = np.asarray(self._front_min)
                dominated = bool(np.any(np.all(G <= f, axis=1) & np.any(G < f, axis=1)))
            if not dominated:  # on the front: the hypervolume changes
                self._front_min = [g for g in self._front_min if not (all(a <= b for a, b in zip(f, g, strict=True)) and f != g)] + [f]
                self._front = np.asarray(self._front_min, dtype=np.float64).reshape(-1, k) * self._sign
                self._hv = ref_hypervolume(self._front, self.directions, self.ref)
        self._ids.append(t.id)
        self._seen.add(t.id)
        self._last = _finish_key(t)
        self.history.append((len(self._ids), self._hv))
        n_ex = trial_examples(t)
        if n_ex is not None:
            self._examples = (self._examples or 0) + n_ex
        self._seconds += t.evaluate_s or 0.0
        self.cost.append((self._examples, self._seconds))


def trial_examples(t: Trial) -> int | None:
    """Examples a trial evaluated, summed over its objectives (None when none were counted)."""
    counted = [n for n in (t.examples or []) if n is not None]
    return sum(counted) if counted else None


def hypervolume_history(
    trials: Sequence[Trial], directions: Sequence[str], ref: Sequence[float]
) -> list[tuple[int, float]]:
    """``[(n_evaluations, hypervolume), ...]``: one entry per finished trial (COMPLETE, FAIL or STOPPED),
    in finish order; the hypervolume is recomputed only when the front changes."""
    return list(HypervolumeTracker(directions, ref).update(trials))
