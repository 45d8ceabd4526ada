"""One run's trials and the aggregates the dashboard shows, updated one changed trial at a time.

A live dashboard polls every few seconds while a run grows to 100,000 trials, so a poll costs
what changed: :meth:`RunState.put` adjusts the counts, the per-objective value range (the
hypervolume's reference point), the best trial per objective and running sums per worker for
the trial that changed, and queues a new complete result for the front. The front is then the
Pareto front of the previous front plus the queued results (a dominated point stays
dominated), the hypervolume is that of the front. A change that keeps a trial's result (a
held-out value, a worker, a time) leaves the front, range and bests alone. Only when a counted
result itself changes, or a trial that held the run's first or last time moves it inwards, is
the affected aggregate rebuilt from all trials. Every answer equals
what :func:`search.report.run_data` computes from the whole run (tests/test_dashboard.py
checks it)."""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..pareto import all_finite, pareto_mask, ref_hypervolume, reference_point
from ..store import COMPLETE, FAIL, RUNNING, STOPPED, Trial

FINISHED = (COMPLETE, FAIL, STOPPED)
_BASE_COUNTS = (RUNNING, COMPLETE, FAIL)  # always present in counts (as RunData.counts)


def _curve_fields(t: Trial) -> tuple[Any, ...]:
    """What a finished trial contributes to the hypervolume curve."""
    return (t.state, t.values, t.finished_at, t.examples, t.evaluate_s)


_SCALE = 2**1074  # every finite double times this is an integer: sums of these are exact


def _exact(x: float) -> int:
    n, d = x.as_integer_ratio()
    return n * (_SCALE // d)


def _times(t: Trial) -> list[float]:
    return [ts for ts in (t.started_at, t.finished_at) if ts is not None]


class _Mean:
    """An exact running sum of floats that values are added to and taken from; its mean is
    ``math.fsum(values) / len(values)`` (nan when a value is not finite)."""

    __slots__ = ("count", "odd", "total")

    def __init__(self) -> None:
        self.total = 0  # exact sum of the finite values, times _SCALE
        self.count = 0
        self.odd = 0  # values that are not finite

    def add(self, x: float | None, sign: int) -> None:
        if x is None:
            return
        self.count += sign
        if math.isfinite(x):
            self.total += sign * _exact(x)
        else:
            self.odd += sign

    def mean(self) -> float | None:
        if not self.count or self.odd:
            return None
        return (self.total / _SCALE) / self.count


class _TimeRange:
    """The smallest and largest of a multiset of times that come and go (two heaps whose
    entries are dropped once they reach the top and are no longer held)."""

    def __init__(self) -> None:
        self.live: dict[float, int] = {}
        self.lo: list[float] = []
        self.hi: list[float] = []  # negated

    def add(self, x: float) -> None:
        self.live[x] = self.live.get(x, 0) + 1
        heapq.heappush(self.lo, x)
        heapq.heappush(self.hi, -x)

    def remove(self, x: float) -> None:
        self.live[x] -= 1
        if not self.live[x]:
            del self.live[x]
        if len(self.lo) > 2 * len(self.live) + 64:  # mostly dropped entries: start the heaps again
            self.lo = list(self.live)
            heapq.heapify(self.lo)
            self.hi = [-x for x in self.live]
            heapq.heapify(self.hi)

    def first(self) -> float | None:
        while self.lo and self.lo[0] not in self.live:
            heapq.heappop(self.lo)
        return self.lo[0] if self.lo else None

    def last(self) -> float | None:
        while self.hi and -self.hi[0] not in self.live:
            heapq.heappop(self.hi)
        return -self.hi[0] if self.hi else None


class _WorkerSums:
    """One worker's :func:`search.report.worker_rows` row, kept as counts, sums and a time range."""

    def __init__(self, name: str):
        self.name = name
        self.states: dict[str, int] = dict.fromkeys((COMPLETE, FAIL, RUNNING), 0)
        self.trials = 0
        self.m, self.e = _Mean(), _Mean()
        self.times = _TimeRange()

    def put(self, t: Trial) -> None:
        self.trials += 1
        self.states[t.state] = self.states.get(t.state, 0) + 1
        self.m.add(t.materialize_s, 1)
        self.e.add(t.evaluate_s, 1)
        for ts in _times(t):
            self.times.add(ts)

    def take(self, t: Trial) -> None:
        self.trials -= 1
        self.states[t.state] -= 1
        if not self.states[t.state] and t.state not in (COMPLETE, FAIL, RUNNING):
            del self.states[t.state]
        self.m.add(t.materialize_s, -1)
        self.e.add(t.evaluate_s, -1)
        for ts in _times(t):
            self.times.remove(ts)

    def row(self) -> dict[str, Any]:
        return {"worker": self.name, "trials": self.trials, **self.states, "materialize_s": self.m.mean(),
                "evaluate_s": self.e.mean(), "first": self.times.first(), "last": self.times.last()}


class RunState:
    """The trials of one run (by id) and their aggregates, kept exact under :meth:`put`.

    ``given_ref``: per objective, a reference value the config pins (None: from the values).
    """

    def __init__(self, directions: Sequence[str], given_ref: Sequence[float | None]):
        self.directions = list(directions)
        self.k = len(self.directions)
        self.given: list[float | None] = list(given_ref)
        self._sign = [1.0 if d == "minimize" else -1.0 for d in self.directions]
        self.trials: dict[int, Trial] = {}
        self.by_number: dict[int, int] = {}  # trial number -> id
        self.running: set[int] = set()
        self.with_heldout: set[int] = set()
        self.counts: dict[str, int] = dict.fromkeys(_BASE_COUNTS, 0)
        self.counter = 0  # bumps on every change; a trial's seq is the counter after its last change
        self._seq_log: list[int] = []  # seqs in order, with the trial id of each change
        self._id_log: list[int] = []
        self._ids: list[int] = []  # every trial id, ascending
        # complete results with k finite values: number -> minimisation-signed values
        self._complete: dict[int, tuple[float, ...]] = {}
        self._front: dict[int, tuple[float, ...]] = {}
        self._pending: list[int] = []
        self._front_dirty = False
        self._lo: list[float] | None = None  # per objective, smallest and largest raw value
        self._hi: list[float] | None = None
        self._range_dirty = False
        self._best: list[tuple[float, int] | None] = [None] * self.k
        self._best_dirty = False
        self._hv: tuple[Any, float | None] | None = None
        self._workers: dict[str, _WorkerSums] = {}
        self._worker_rows: dict[str, dict[str, Any]] = {}
        self._dirty_workers: set[str] = set()
        self._first: float | None = None
        self._last: float | None = None
        self._time_dirty = False
        #: trial ids in the order they were seen finished; ``finish_epoch`` bumps when a trial
        #: already in it changes, so a hypervolume curve built from it must start over
        self.finish_log: list[int] = []
        self.finish_epoch = 0

    # ------------------------------------------------------------------ updates
    def set_given(self, given_ref: Sequence[float | None]) -> None:
        """The config's reference values changed (a resume may edit the config)."""
        if list(given_ref) != self.given:
            self.given = list(given_ref)
            self._hv = None
            self.counter += 1

    def put(self, t: Trial) -> bool:
        """Record ``t`` (new, or a newer version of a known trial); False if nothing changed."""
        old = self.trials.get(t.id)
        if old == t:
            return False
        values = True  # whether the front, value range and bests need to hear of it
        if old is not None:
            # a held-out value, a worker or a time changed but not the result: the front,
            # the value range and the bests stay as they are
            values = old.number != t.number or self._values(old) != self._values(t)
            self._remove(old, values, then=t)
            if old.state in FINISHED and (t.state not in FINISHED or _curve_fields(old) != _curve_fields(t)):
                self.finish_epoch += 1
        else:
            bisect.insort(self._ids, t.id)
        self._add(t, values)
        if t.state in FINISHED and (old is None or old.state not in FINISHED):
            self.finish_log.append(t.id)
        self.trials[t.id] = t
        self.by_number[t.number] = t.id
        self.counter += 1
        self._seq_log.append(self.counter)
        self._id_log.append(t.id)
        return True

    def _values(self, t: Trial) -> list[float] | None:
        if t.state != COMPLETE or t.values is None or len(t.values) != self.k or not all_finite(t.values):
            return None
        return [float(v) for v in t.values]

    def _remove(self, t: Trial, values: bool = True, then: Trial | None = None) -> None:
        """Take ``t`` out of the aggregates (``values``: out of the front, range and bests too);
        ``then``: the version of ``t`` that replaces it."""
        self.counts[t.state] -= 1
        if self.counts[t.state] == 0 and t.state not in _BASE_COUNTS:
            del self.counts[t.state]
        self.running.discard(t.id)
        self.with_heldout.discard(t.id)
        w = t.worker or "?"
        acc = self._workers[w]
        acc.take(t)
        if not acc.trials:
            del self._workers[w]
        self._dirty_workers.add(w)
        if values and t.number in self._complete:
            v = [f * s for f, s in zip(self._complete.pop(t.number), self._sign, strict=True)]
            self._front_dirty = self._front_dirty or t.number in self._front or t.number in self._pending
            if self._lo is not None and self._hi is not None and (
                any(a <= b for a, b in zip(v, self._lo, strict=True)) or any(a >= b for a, b in zip(v, self._hi, strict=True))
            ):
                self._range_dirty = True
            if any(b is not None and b[1] == t.number for b in self._best):
                self._best_dirty = True
        # the run's first start / last finish leaves with t unless its replacement keeps it or moves it outwards
        lost_first = t.started_at is not None and t.started_at == self._first and not (
            then is not None and then.started_at is not None and then.started_at <= t.started_at)
        lost_last = t.finished_at is not None and t.finished_at == self._last and not (
            then is not None and then.finished_at is not None and then.finished_at >= t.finished_at)
        if lost_first or lost_last:
            self._time_dirty = True

    def _add(self, t: Trial, values: bool = True) -> None:
        self.counts[t.state] = self.counts.get(t.state, 0) + 1
        if t.state == RUNNING:
            self.running.add(t.id)
        if t.heldout is not None:
            self.with_heldout.add(t.id)
        w = t.worker or "?"
        self._workers.setdefault(w, _WorkerSums(w)).put(t)
        self._dirty_workers.add(w)
        v = self._values(t) if values else None
        if v is not None:
            f = tuple(a * s for a, s in zip(v, self._sign, strict=True))
            self._complete[t.number] = f
            self._pending.append(t.number)
            self._lo = v if self._lo is None else [min(a, b) for a, b in zip(self._lo, v, strict=True)]
            self._hi = v if self._hi is None else [max(a, b) for a, b in zip(self._hi, v, strict=True)]
            for j in range(self.k):
                b = self._best[j]
                if b is None or (f[j], t.number) < b:
                    self._best[j] = (f[j], t.number)
        for ts, attr, pick in ((t.started_at, "_first", min), (t.finished_at, "_last", max)):
            cur = getattr(self, attr)
            if ts is not None:
                setattr(self, attr, ts if cur is None else pick(cur, ts))

    # ------------------------------------------------------------------ aggregates
    def front(self) -> list[int]:
        """Numbers of the complete trials on the Pareto front, ascending."""
        if self._front_dirty:
            nums = list(self._complete)
            self._front, self._pending, self._front_dirty = {}, nums, False
        if self._pending:
            cand = list(self._front) + [n for n in self._pending if n in self._complete and n not in self._front]
            F = np.asarray([self._complete[n] for n in cand], dtype=np.float64).reshape(-1, self.k)
            mask = pareto_mask(F, ["minimize"] * self.k)
            self._front = {n: self._complete[n] for n, m in zip(cand, mask, strict=True) if m}
            self._pending = []
            self._hv = None
        return sorted(self._front)

    def extremes(self) -> tuple[list[float], list[float]] | None:
        """Per objective, the smallest and largest value of the complete results (None: none yet)."""
        if self._range_dirty:
            V = np.asarray(list(self._complete.values()), dtype=np.float64).reshape(-1, self.k) * np.asarray(self._sign)
            self._lo, self._hi = (V.min(0).tolist(), V.max(0).tolist()) if len(V) else (None, None)
            self._range_dirty = False
            self._hv = None
        return None if self._lo is None or self._hi is None else (self._lo, self._hi)

    def ref_point(self) -> list[float]:
        ex = self.extremes()
        vals = np.zeros((0, self.k)) if ex is None else np.asarray(ex, dtype=np.float64)
        return reference_point(vals, self.directions, self.given)

    def hypervolume(self) -> float | None:
        """Hypervolume of the front above :meth:`ref_point` (None while no result is complete)."""
        if not self._complete:
            return None
        front = self.front()
        ref = self.ref_point()
        key = (tuple(front), tuple(ref))
        if self._hv is None or self._hv[0] != key:
            V = np.asarray([self._front[n] for n in front], dtype=np.float64).reshape(-1, self.k) * np.asarray(self._sign)
            self._hv = (key, ref_hypervolume(V, self.directions, ref))
        return self._hv[1]

    def best(self) -> list[Trial | None]:
        """Per objective, the complete trial with the best value (the lowest number on ties)."""
        if self._best_dirty:
            self._best = [None] * self.k
            for n, f in self._complete.items():
                for j in range(self.k):
                    b = self._best[j]
                    if b is None or (f[j], n) < b:
                        self._best[j] = (float(f[j]), n)
            self._best_dirty = False
        return [None if b is None else self.trials[self.by_number[b[1]]] for b in self._best]

    def workers(self) -> list[dict[str, Any]]:
        """:func:`search.report.worker_rows` of every worker, from running sums and time ranges
        per worker, for those that changed."""
        for w in self._dirty_workers:
            acc = self._workers.get(w)
            if acc is None:
                self._worker_rows.pop(w, None)
            else:
                self._worker_rows[w] = acc.row()
        self._dirty_workers.clear()
        return [dict(self._worker_rows[w]) for w in sorted(self._worker_rows)]

    def elapsed(self, now: float) -> float | None:
        """As :meth:`search.report.RunData.elapsed`."""
        if self._time_dirty:
            starts = [t.started_at for t in self.trials.values() if t.started_at is not None]
            ends = [t.finished_at for t in self.trials.values() if t.finished_at is not None]
            self._first = min(starts) if starts else None
            self._last = max(ends) if ends else None
            self._time_dirty = False
        if self._first is None:
            return None
        end = now if self.counts.get(RUNNING, 0) or self._last is None else self._last
        return max(0.0, end - self._first)

    # ------------------------------------------------------------------ trial lists
    def changed_since(self, after_id: int | None, since: int | None) -> list[Trial]:
        """Trials with an id above ``after_id`` or changed after counter ``since``, in number order."""
        want: set[int] = set()
        if after_id is not None:
            want.update(self._ids[bisect.bisect_right(self._ids, after_id) :])
        if since is not None:
            want.update(self._id_log[bisect.bisect_right(self._seq_log, since) :])
        return sorted((self.trials[i] for i in want), key=lambda t: t.number)

    @property
    def max_id(self) -> int | None:
        return self._ids[-1] if self._ids else None

    @property
    def min_id(self) -> int | None:
        return self._ids[0] if self._ids else None

    def view(self, limit: int) -> tuple[list[Trial], dict[str, int]] | None:
        """What a page needs of a run with more than ``limit`` trials (None: send them all):
        the front, the running trials, the latest ``limit // 5`` trials and an even sample (by
        trial number) of the other complete results, at most ``limit`` trials in all beyond
        the front and the running ones; and how many were sent, of each kind and in all
        (``sent``, which exceeds ``limit`` when the front and the running trials do)."""
        if len(self.trials) <= limit:
            return None
        front = self.front()
        keep = {self.by_number[n] for n in front} | self.running
        recent = [i for i in self._ids[-max(1, limit // 5) :] if i not in keep]
        keep.update(recent)
        rest = sorted(n for n in self._complete if self.by_number[n] not in keep)
        room = max(0, limit - len(recent))
        step = max(1, math.ceil(len(rest) / room)) if room else 0
        sample = [self.by_number[n] for n in rest[::step]][:room] if step else []
        keep.update(sample)
        out = sorted((self.trials[i] for i in keep), key=lambda t: t.number)
        return out, {"total": len(self.trials), "sent": len(out), "front": len(front), "running": len(self.running),
                     "recent": len(recent), "sampled": len(sample), "complete": len(self._complete), "limit": limit}
