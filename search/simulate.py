"""Cluster simulation: the real controller, strategy and store against simulated workers.

:func:`simulate` runs :class:`search.controller.Controller` unchanged, with its worker pool
swapped for a :class:`SimulatedPool` of ``W`` workers on a :class:`VirtualClock`:

* a submitted trial is evaluated at once, for real, by ``evaluate`` (by default one in-process
  :class:`search.workers.TrialWorker` of the run's config, e.g. the digits zoo: milliseconds),
  and its result is held back until its simulated duration has passed in virtual time;
* durations are lognormal with mean ``trial_mean_s`` and log-spread ``trial_sigma``;
* with ``preempt_rate`` a trial's worker dies part-way (the result comes back ``died``, as from
  a real pool, and the controller retries it); with ``fail_rate`` the trial fails (recorded FAIL);
* ``poll`` jumps the clock to the next finish instead of sleeping, so hours of cluster time
  take seconds;
* with ``controller_time`` the real wall time the controller spends between pool calls (ask,
  tell, store writes; the simulated evaluations themselves excluded) is added to the virtual
  clock, so a slow strategy or store shows up as idle workers. Off, the run is deterministic
  for a seed: same candidates, values, workers, attempts and virtual times.

Each trial's virtual start and end, worker and outcome is kept in :attr:`SimReport.timeline`;
:func:`busy_fraction` and :func:`hypervolume_curve` summarise it. ``bench/simulate_cluster.py``
is the command-line bench built on this module.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .workers import TrialTask, WorkerResult


class SimSettings(BaseModel):
    """What is simulated: the cluster, trial durations and faults."""

    model_config = ConfigDict(extra="forbid")

    workers: int = Field(8, ge=1, description="simulated workers (W)")
    trial_mean_s: float = Field(60.0, gt=0, description="mean trial duration, virtual seconds")
    trial_sigma: float = Field(0.3, ge=0, description="standard deviation of log(duration) (lognormal spread)")
    fail_rate: float = Field(0.0, ge=0, lt=1, description="share of trials that fail (recorded FAIL)")
    preempt_rate: float = Field(0.0, ge=0, lt=1, description="share of attempts whose worker dies part-way (retried)")
    controller_time: bool = Field(False, description="add the controller's measured real time to the virtual clock")
    seed: int = 0


class VirtualClock:
    """Seconds since the simulated run started; callable like ``time.time``."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class SimReport:
    """A finished simulation: settings, exit code, store URL and run name, and the timeline
    (one dict per attempt: ``number, attempt, split, worker, start, end, died, ok, values``)."""

    settings: SimSettings
    rc: int
    store_url: str
    run: str
    timeline: list[dict[str, Any]] = field(default_factory=list)
    controller_s: float = 0.0  # real controller time added to the clock (controller_time only)
    real_s: float = 0.0  # real wall time of the whole simulation

    @property
    def makespan(self) -> float:
        return max((t["end"] for t in self.timeline), default=0.0)


class SimulatedPool:
    """The pool interface of :mod:`search.workers` (``free_slots``, ``submit``, ``poll``,
    ``running``, ``close``) over ``W`` simulated workers on a virtual clock."""

    def __init__(self, evaluate: Callable[[TrialTask], WorkerResult], settings: SimSettings, clock: VirtualClock):
        self.settings, self.clock, self._evaluate = settings, clock, evaluate
        self.n_workers = settings.workers
        self._free = list(range(settings.workers))  # a heap: the lowest free worker runs the next task
        self._events: list[tuple[float, int, int, TrialTask, WorkerResult]] = []
        self._seq = 0
        self._rng = np.random.default_rng(settings.seed)
        self.timeline: list[dict[str, Any]] = []
        self.controller_s = 0.0
        self._mark = time.perf_counter()

    @staticmethod
    def worker_name(i: int) -> str:
        return f"sim-{i}"

    def _charge(self) -> None:
        """Add the real time since the last pool call (the controller's own work) to the clock."""
        if self.settings.controller_time:
            dt = max(0.0, time.perf_counter() - self._mark)
            self.controller_s += dt
            self.clock.now += dt

    def _done(self) -> None:
        self._mark = time.perf_counter()

    def free_slots(self) -> int:
        return len(self._free)

    def running(self) -> int:
        return len(self._events)

    def submit(self, task: TrialTask) -> str:
        self._charge()
        if not self._free:
            raise RuntimeError("submit with no free simulated worker")
        s = self.settings
        w = heapq.heappop(self._free)
        name = self.worker_name(w)
        # the same draws in the same order for every task, whatever happens to it
        z, u_preempt, u_fail, frac = self._rng.standard_normal(), self._rng.random(), self._rng.random(), self._rng.random()
        duration = s.trial_mean_s * math.exp(s.trial_sigma * z - s.trial_sigma**2 / 2)  # mean trial_mean_s
        if u_preempt < s.preempt_rate:
            duration *= frac
            res = WorkerResult(task.number, task.split, error=f"worker {name} died", worker=name, died=True)
        elif u_fail < s.fail_rate:
            res = WorkerResult(task.number, task.split, error="simulated failure", worker=name)
        else:
            res = self._evaluate(task)
            res.worker = name
        start = self.clock.now
        heapq.heappush(self._events, (start + duration, self._seq, w, task, res))
        self._seq += 1
        self.timeline.append(dict(number=task.number, attempt=task.attempt, split=task.split, worker=name, start=start,
                                  end=start + duration, died=res.died, ok=res.ok, values=res.values if res.ok else None))
        self._done()
        return name

    def poll(self, timeout: float = 0.0) -> list[tuple[TrialTask, WorkerResult]]:
        """Finished trials; with ``timeout > 0`` and none finished, the clock jumps to the next finish."""
        self._charge()
        if self._events and self._events[0][0] > self.clock.now and timeout > 0:
            self.clock.now = self._events[0][0]
        out = []
        while self._events and self._events[0][0] <= self.clock.now:
            _, _, w, task, res = heapq.heappop(self._events)
            heapq.heappush(self._free, w)
            out.append((task, res))
        self._done()
        return out

    def close(self) -> None:
        self._events.clear()


def simulate(cfg: Any, settings: SimSettings, store_url: str,
             evaluate: Callable[[TrialTask], WorkerResult] | None = None) -> SimReport:
    """Run the search of ``cfg`` (a :class:`search.config.SearchConfig`) on a simulated cluster
    into ``store_url``. ``evaluate`` (default: an in-process TrialWorker of ``cfg``) gives each
    trial's result."""
    from .controller import Controller
    from .workers import TrialWorker

    if getattr(cfg, "fidelity", None) is not None:
        raise ValueError("the cluster simulator does not model fidelity levels (each level would count as a search "
                         "result); remove the fidelity section to simulate this config")
    cfg = cfg.model_copy(update={"workers": cfg.workers.model_copy(update={"count": settings.workers, "backend": "local",
                                                                         "trial_timeout": None})}).with_base_dir(cfg.base_dir)
    clock = VirtualClock()
    made: list[SimulatedPool] = []

    def pool_factory(cfg_: Any, config_yaml: str, base_dir: str | None) -> SimulatedPool:
        ev = evaluate or TrialWorker(config_yaml, base_dir, "sim-evaluator").run
        made.append(SimulatedPool(ev, settings, clock))
        return made[-1]

    t0 = time.perf_counter()
    rc = Controller(cfg, store_url, pool_factory=pool_factory, clock=clock).run()
    pool = made[0] if made else None
    return SimReport(settings, rc, store_url, cfg.name, pool.timeline if pool else [],
                     pool.controller_s if pool else 0.0, time.perf_counter() - t0)


def busy_fraction(timeline: Sequence[dict[str, Any]], workers: int, until: float | None = None) -> float:
    """Worker time spent on search trials (died attempts included) over ``workers`` x the span
    ``[0, until]`` (default: the last finish)."""
    search = [t for t in timeline if t["split"] == "search"]
    end = until if until is not None else max((t["end"] for t in search), default=0.0)
    if end <= 0:
        return 0.0
    work = sum(max(0.0, min(t["end"], end) - t["start"]) for t in search if t["start"] < end)
    return work / (workers * end)


def last_submit(timeline: Sequence[dict[str, Any]]) -> float:
    """Virtual time of the last search submission: after it, idle workers only mean the budget is spent."""
    return max((t["start"] for t in timeline if t["split"] == "search"), default=0.0)


def hypervolume_curve(timeline: Sequence[dict[str, Any]], directions: Sequence[str], ref: Sequence[float],
                      times: Sequence[float]) -> list[float]:
    """Hypervolume (against the fixed reference point ``ref``, in the objectives' own units)
    of the successful search results finished by each of ``times``."""
    from .pareto import ref_hypervolume as _hv

    done = sorted((t for t in timeline if t["split"] == "search" and t["ok"]), key=lambda t: t["end"])
    ends = np.array([t["end"] for t in done])
    vals = np.array([t["values"] for t in done], dtype=np.float64).reshape(len(done), len(directions))
    out = []
    for tm in times:
        k = int(np.searchsorted(ends, tm, side="right"))
        out.append(float(_hv(vals[:k], directions, np.asarray(ref, dtype=np.float64))) if k else 0.0)
    return out
