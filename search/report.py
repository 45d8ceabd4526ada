"""Reading a run back: ``search status``, ``search front`` and the :func:`load_run` API.

:func:`load_run` returns a :class:`RunData` (pandas-free) that the dashboard and the exporter
reuse: the study, its trials, objective names and directions, the Pareto front (trial numbers)
and the run's hypervolume.

Pareto front
    Computed on the *search* split values of COMPLETE trials whose values are all finite,
    with each objective's own direction (:func:`search.pareto.pareto_mask`). Held-out values
    are shown next to the front but never decide membership.

Reference point, hypervolume and its history: :mod:`search.pareto`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .pareto import (
    all_finite,
    config_ref_point,
    front_numbers,
    hypervolume_history,
    ref_hypervolume,
    reference_point,
)
from .store import COMPLETE, FAIL, RUNNING, STOPPED, Store, Study, Trial, default_store_for, open_run

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "RunData",
    "worker_rows",
    "load_run",
    "run_data",
    "front_json",
    "print_status",
    "print_front",
]


# ----------------------------------------------------------------------------- data


def config_dict(study: Study) -> dict[str, Any]:
    """The run's config as a plain dict (``{}`` if the stored YAML cannot be parsed)."""
    import yaml

    try:
        data = yaml.safe_load(study.config_yaml or "") or {}
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def config_budget(config: dict[str, Any]) -> int | None:
    strat = config.get("strategy")
    b = strat.get("budget") if isinstance(strat, dict) else None
    return int(b) if isinstance(b, (int, float)) and not isinstance(b, bool) else None


@dataclass
class RunData:
    """One run, read back from the store (no pandas)."""

    name: str
    study: Study
    trials: list[Trial]
    objectives: list[str]
    directions: list[str]
    front: list[int]  # trial numbers on the Pareto front (search split), ascending
    hypervolume: float | None  # None while no trial is complete
    ref_point: list[float]
    budget: int | None  # strategy.budget from the run's config, when known
    config: dict[str, Any] = field(default_factory=dict)
    store_url: str | None = None

    @property
    def by_number(self) -> dict[int, Trial]:
        return {t.number: t for t in self.trials}

    def trial(self, number: int) -> Trial | None:
        return self.by_number.get(number)

    def counts(self) -> dict[str, int]:
        c = {RUNNING: 0, COMPLETE: 0, FAIL: 0}
        for t in self.trials:
            c[t.state] = c.get(t.state, 0) + 1
        return c

    def cost(self) -> dict[str, Any]:
        """What the run's evaluations cost: examples evaluated per objective (None where no
        trial counted any), evaluation and materialization seconds, and (fidelity) how many
        finished trials stopped at each level."""
        ex: list[int | None] = [None] * len(self.objectives)
        levels: dict[int, int] = {}
        for t in self.trials:
            for j, n in enumerate(t.examples or []):
                if n is not None and j < len(ex):
                    ex[j] = (ex[j] or 0) + int(n)
            if t.level is not None and t.state in (COMPLETE, STOPPED):
                levels[t.level] = levels.get(t.level, 0) + 1
        return {
            "examples": ex,
            "evaluate_s": float(sum(t.evaluate_s or 0.0 for t in self.trials)),
            "materialize_s": float(sum(t.materialize_s or 0.0 for t in self.trials)),
            "levels": dict(sorted(levels.items())),
        }

    @property
    def front_trials(self) -> list[Trial]:
        by = self.by_number
        return [by[n] for n in self.front]

    def best(self) -> list[tuple[str, str, Trial | None]]:
        """Per objective: (name, direction, best COMPLETE trial or None)."""
        done = [t for t in self.trials if t.state == COMPLETE and all_finite(t.values)]
        out = []
        for j, (name, d) in enumerate(zip(self.objectives, self.directions, strict=True)):
            if not done:
                out.append((name, d, None))
                continue
            key = (lambda t, j=j: t.values[j]) if d == "minimize" else (lambda t, j=j: -t.values[j])
            out.append((name, d, min(done, key=lambda t: (key(t), t.number))))
        return out

    def hypervolume_history(self, ref: Sequence[float] | None = None) -> list[tuple[int, float]]:
        return hypervolume_history(self.trials, self.directions, self.ref_point if ref is None else ref)

    def workers(self) -> list[dict[str, Any]]:
        """Per worker: trials, complete, failed, running, mean timings, first/last activity."""
        return worker_rows(self.trials)

    def elapsed(self, now: float | None = None) -> float | None:
        """Seconds from the first trial's start to the last finish (to now while trials run)."""
        starts = [t.started_at for t in self.trials if t.started_at is not None]
        if not starts:
            return None
        ends = [t.finished_at for t in self.trials if t.finished_at is not None]
        running = any(t.state == RUNNING for t in self.trials)
        end = (now if now is not None else time.time()) if running or not ends else max(ends)
        return max(0.0, end - min(starts))


def _mean(xs: Sequence[float]) -> float | None:
    """The mean of finite ``xs`` from their correctly rounded sum (the dashboard keeps the same
    sum exactly as trials come and go); None when empty or not all finite."""
    if not xs or not all(math.isfinite(x) for x in xs):
        return None
    return math.fsum(xs) / len(xs)


def worker_rows(trials: Sequence[Trial]) -> list[dict[str, Any]]:
    """Per worker (sorted by name; ``?`` for none): trials, count per state, mean materialize
    and evaluate seconds, first and last activity."""
    acc: dict[str, dict[str, Any]] = {}
    for t in trials:
        w = t.worker or "?"
        a = acc.setdefault(
            w, {"worker": w, "trials": 0, COMPLETE: 0, FAIL: 0, RUNNING: 0, "_m": [], "_e": [], "first": None, "last": None}
        )
        a["trials"] += 1
        a[t.state] = a.get(t.state, 0) + 1
        if t.materialize_s is not None:
            a["_m"].append(t.materialize_s)
        if t.evaluate_s is not None:
            a["_e"].append(t.evaluate_s)
        for ts in (t.started_at, t.finished_at):
            if ts is not None:
                a["first"] = ts if a["first"] is None else min(a["first"], ts)
                a["last"] = ts if a["last"] is None else max(a["last"], ts)
    out = []
    for a in sorted(acc.values(), key=lambda a: a["worker"]):
        m, e = a.pop("_m"), a.pop("_e")
        a["materialize_s"] = _mean(m)
        a["evaluate_s"] = _mean(e)
        out.append(a)
    return out


def run_data(
    study: Study,
    trials: Sequence[Trial],
    *,
    store_url: str | None = None,
    ref_point: Sequence[float | None] | None = None,
) -> RunData:
    """Build a :class:`RunData` from an already-read study and trials (the dashboard's path)."""
    directions = list(study.directions)
    cfg = config_dict(study)
    given = list(ref_point) if ref_point is not None else config_ref_point(cfg, len(directions))
    done = [t.values for t in trials if t.state == COMPLETE and all_finite(t.values) and len(t.values or []) == len(directions)]
    vals = np.asarray(done, dtype=np.float64).reshape(-1, len(directions))
    ref = reference_point(vals, directions, given)
    front = front_numbers(trials, directions)
    hv = None
    if done:
        by = {t.number: t for t in trials}
        hv = ref_hypervolume(np.asarray([by[n].values for n in front], dtype=np.float64).reshape(-1, len(directions)), directions, ref)
    return RunData(
        name=study.name,
        study=study,
        trials=list(trials),
        objectives=list(study.objective_names),
        directions=directions,
        front=front,
        hypervolume=hv,
        ref_point=ref,
        budget=config_budget(cfg),
        config=cfg,
        store_url=store_url,
    )


def load_run(
    run: str,
    store: str | Store | None = None,
    *,
    ref_point: Sequence[float | None] | None = None,
    with_metrics: bool = False,
) -> RunData:
    """Read run ``run`` (a run name, or a store path holding one run) into a :class:`RunData`.

    ``store`` is a store path / SQLAlchemy URL (default ``runs/<run>.db``) or an open
    :class:`~search.store.Store`. The store is opened read-only. ``ref_point`` pins the
    hypervolume reference (see the module docstring for the default).
    """
    if isinstance(store, Store):
        st, study, url, close = store, store.study(run), str(store.engine.url), False
    else:
        st, study = open_run(run, store, readonly=True)
        url, close = store or default_store_for(run), True
    try:
        trials = st.trials(study.id, with_metrics=with_metrics)
    finally:
        if close:
            st.close()
    return run_data(study, trials, store_url=url, ref_point=ref_point)


# ----------------------------------------------------------------------------- JSON


def _vals_dict(names: Sequence[str], values: Sequence[float | None] | None) -> dict[str, float | None] | None:
    if values is None:
        return None
    return {n: (None if v is None or not math.isfinite(v) else float(v)) for n, v in zip(names, values, strict=False)}


def front_json(data: RunData, with_params: bool = True) -> dict[str, Any]:
    """The machine-readable front (what ``search front RUN --json`` prints)::

        {
          "run": "quickstart",
          "objectives": [{"name": "add", "direction": "maximize"}, ...],
          "ref_point": [0.0, 0.0],          # hypervolume reference, objective order
          "hypervolume": 0.4321,            # null while nothing is complete
          "counts": {"COMPLETE": 30, "FAIL": 2, "RUNNING": 0},
          "budget": 48,                     # null if the config does not say
          "front": [                        # sorted best-first by the first objective
            {"number": 12,
             "values": {"add": 0.9, "reverse": 0.3},          # search split
             "heldout": {"add": 0.85, "reverse": null} | null, # null: not evaluated
             "strategy": "nsga2", "generation": 2, "parents": [3, 7], "worker": "local-0",
             "params": {"layers.00/add/weight": 0.7, ...}},   # omitted with_params=False
            ...
          ]
        }
    """
    members = data.front_trials
    if members:
        d0 = data.directions[0]
        members = sorted(members, key=lambda t: (t.values[0] if d0 == "minimize" else -t.values[0], t.number))
    front = []
    for t in members:
        item: dict[str, Any] = {
            "number": t.number,
            "values": _vals_dict(data.objectives, t.values),
            "heldout": _vals_dict(data.objectives, t.heldout),
            "strategy": t.strategy,
            "generation": t.generation,
            "parents": list(t.parents),
            "worker": t.worker,
        }
        if with_params:
            item["params"] = dict(t.params)
        front.append(item)
    return {
        "run": data.name,
        "objectives": [{"name": n, "direction": d} for n, d in zip(data.objectives, data.directions, strict=True)],
        "ref_point": list(data.ref_point),
        "hypervolume": data.hypervolume,
        "counts": data.counts(),
        "budget": data.budget,
        "front": front,
    }


# ----------------------------------------------------------------------------- terminal output


def _console() -> Console:
    from rich.console import Console

    return Console()


def _fmt(v: float | None, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}g}" if abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-3) else f"{v:.{digits}f}"


def _dur(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


def _secs(s: float | None) -> str:
    """A mean trial phase time: 0.4ms, 2.31s, 1m05s."""
    if s is None or not math.isfinite(s):
        return "-"
    if s < 1:
        return f"{s * 1000:.1f}ms"
    return f"{s:.2f}s" if s < 60 else _dur(s)


def _clock(ts: float | None) -> str:
    """HH:MM:SS for today, else the date too."""
    if not ts:
        return "-"
    lt = time.localtime(ts)
    today = time.localtime()[:3] == lt[:3]
    return time.strftime("%H:%M:%S" if today else "%Y-%m-%d %H:%M", lt)


def _arrow(direction: str) -> str:
    return "max" if direction == "maximize" else "min"


def print_status(run: str, store: str | None = None, console: Console | None = None) -> int:
    """``search status RUN``: counts by state, budget progress, best value per objective,
    front size, hypervolume (reference point in the module docstring), elapsed time and the
    workers seen. Returns the exit code (0)."""
    from rich.table import Table

    con = console or _console()
    data = load_run(run, store)
    c = data.counts()
    finished = c.get(COMPLETE, 0) + c.get(FAIL, 0) + c.get(STOPPED, 0)
    con.print(f"[bold]run {data.name}[/bold]  status {data.study.status}  store {data.store_url}", highlight=False)
    stopped = f", {c[STOPPED]} stopped at a low fidelity level" if c.get(STOPPED) else ""
    con.print(f"trials: {c.get(COMPLETE, 0)} complete, {c.get(FAIL, 0)} failed, {c.get(RUNNING, 0)} running{stopped}", markup=False)
    if data.budget:
        pct = 100.0 * finished / data.budget
        bar_w = 20
        filled = min(bar_w, int(round(bar_w * finished / data.budget)))
        con.print(f"budget {finished}/{data.budget} ({pct:.0f}%) [{'#' * filled}{'.' * (bar_w - filled)}]", markup=False)
    starts = [t.started_at for t in data.trials if t.started_at]
    ends = [t.finished_at for t in data.trials if t.finished_at]
    con.print(
        f"elapsed: {_dur(data.elapsed())} (first trial {_clock(min(starts) if starts else None)}, "
        f"last finished {_clock(max(ends) if ends else None)})",
        markup=False,
    )

    best = Table(title="best per objective", title_justify="left")
    for col in ("objective", "dir", "best", "trial", "held-out", "strategy"):
        best.add_column(col, justify="right" if col in ("best", "trial", "held-out") else "left")
    for j, (name, d, t) in enumerate(data.best()):
        if t is None:
            best.add_row(name, _arrow(d), "-", "-", "-", "-")
        else:
            ho = t.heldout[j] if t.heldout and j < len(t.heldout) else None
            best.add_row(name, _arrow(d), _fmt(t.values[j]), str(t.number), _fmt(ho), t.strategy)
    con.print(best)

    ref = ", ".join(f"{n}={r:.6g}" for n, r in zip(data.objectives, data.ref_point, strict=True))
    hv = "-" if data.hypervolume is None else _fmt(data.hypervolume, 6)
    con.print(f"front: {len(data.front)} trials   hypervolume {hv}  (reference point {ref})", markup=False)
    cost = data.cost()
    ex = ", ".join(f"{n}={'-' if e is None else e}" for n, e in zip(data.objectives, cost["examples"], strict=True))
    def secs(v: float) -> str:
        return f"{v:.1f}s" if v < 60 else _dur(v)

    line = f"cost: examples evaluated {ex}; evaluation {secs(cost['evaluate_s'])}, materialization {secs(cost['materialize_s'])}"
    if cost["levels"]:
        line += "; finished at fidelity level " + ", ".join(f"{k}: {n}" for k, n in cost["levels"].items())
    con.print(line, markup=False)

    workers = data.workers()
    if workers:
        wt = Table(title=f"workers seen: {len(workers)}", title_justify="left")
        wt.add_column("worker", overflow="fold")
        for col in ("trials", "failed", "running", "mean materialize", "mean evaluate", "last seen"):
            wt.add_column(col, justify="left" if col == "last seen" else "right", min_width=11 if col == "mean materialize" else None)
        for w in workers:
            wt.add_row(
                w["worker"], str(w["trials"]), str(w[FAIL]), str(w[RUNNING]),
                _secs(w["materialize_s"]), _secs(w["evaluate_s"]), _clock(w["last"]),
            )
        con.print(wt)
    else:
        con.print("workers seen: none yet")
    return 0


def print_front(run: str, store: str | None = None, as_json: bool = False, console: Console | None = None) -> int:
    """``search front RUN [--json]``: the Pareto front (trial number, search values, held-out
    values, strategy, generation) and the run's hypervolume. ``--json`` prints
    :func:`front_json` (schema in its docstring) to stdout. Returns the exit code (0)."""
    data = load_run(run, store)
    if as_json:
        import json
        import sys

        sys.stdout.write(json.dumps(front_json(data), indent=2, allow_nan=False) + "\n")
        sys.stdout.flush()
        return 0

    from rich.table import Table

    con = console or _console()
    doc = front_json(data, with_params=False)
    hv = "-" if data.hypervolume is None else _fmt(data.hypervolume, 6)
    ref = ", ".join(f"{n}={r:.6g}" for n, r in zip(data.objectives, data.ref_point, strict=True))
    table = Table(
        title=f"Pareto front of {data.name}: {len(doc['front'])} of {doc['counts'].get(COMPLETE, 0)} complete trials",
        caption=f"hypervolume {hv} (reference point {ref})",
        title_justify="left",
        caption_justify="left",
    )
    table.add_column("trial", justify="right")
    for n, d in zip(data.objectives, data.directions, strict=True):
        table.add_column(f"{n} ({_arrow(d)})", justify="right")
    for n in data.objectives:
        table.add_column(f"{n} held-out", justify="right")
    table.add_column("strategy")
    table.add_column("gen", justify="right")
    for item in doc["front"]:
        ho = item["heldout"] or {}
        table.add_row(
            str(item["number"]),
            *[_fmt(item["values"][n]) for n in data.objectives],
            *[_fmt(ho.get(n)) for n in data.objectives],
            item["strategy"],
            str(item["generation"]),
        )
    con.print(table)
    return 0
