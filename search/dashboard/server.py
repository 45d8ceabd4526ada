"""The dashboard server: a JSON API over read-only stores, and one page.

``search dashboard RUN [RUN...] [--store URL] [--host 127.0.0.1] [--port 8765]``

Every store is opened READ-ONLY; the server binds to 127.0.0.1 unless told otherwise and
logs its URL at start (with a warning for non-loopback addresses: anyone who can reach the
port can read the runs and start exports that write files on this machine).

JSON API (``{run}`` is a run key from ``GET /api/runs``: the run's name, made unique with a
``~2`` suffix if two stores hold runs of the same name)::

    GET  /api/runs                        {"epoch", "runs": [summary, ...]}
    GET  /api/runs/{run}                  summary: objectives, space, counts, budget, status,
                                          front (numbers), hypervolume, ref_point, best, workers
    GET  /api/runs/{run}/trials?after_id=N&since=S
                                          {"epoch", "cursor": {"after_id", "since"}, "trials",
                                           "view", "limit", "summary"}; trials with id > N (new
                                          ones) or changed since cursor S (state, worker,
                                          timings, held-out values); both absent: all trials,
                                          or for a run of more than "limit" trials a view of
                                          it ("view" says what was sent: its front, running
                                          trials, latest trials and an even sample of the other
                                          results; null when every trial was sent). Poll with
                                          the returned cursor; if "epoch" changes (server
                                          restarted) start again without a cursor.
    GET  /api/runs/{run}/trials/{number}  one trial in full: params, coefficient maps
                                          (experts x groups per searched param), metrics, error
    GET  /api/hypervolume?changes=false   hypervolume against evaluations per run ([evaluations,
                                          hypervolume, examples so far, evaluation seconds so
                                          far] per finished trial; changes=true: only where it
                                          changes, and the last), runs with the same objectives
                                          sharing one reference point
    POST /api/runs/{run}/trials/{number}/export   {"out_dir": "...", "force": false}
                                          -> 202 {"job": ...}; runs search.export.export_trial
                                          in a background thread; 501 if export is unavailable
    GET  /api/exports[/{job}]             export jobs and their status

Trials in the API: ``{"id", "number", "state", "strategy", "generation", "parents", "values",
"heldout", "worker", "attempts", "started_at", "finished_at", "materialize_s",
"evaluate_s", "error"}`` with values/held-out in objective order (non-finite -> null).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import math
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from ..errors import MergeSearchError, StoreError
from ..pareto import HypervolumeTracker, config_ref_point, reference_point
from ..report import config_budget, config_dict
from ..store import Store, Study, Trial, default_store_for, store_url
from ..store import trial_values as _tv
from ..store import trials as _tt
from .runstate import RunState

log = logging.getLogger("search.dashboard")
STATIC = Path(__file__).with_name("static")
ERROR_PREVIEW = 600  # characters of a trial's error in trial lists (full text in the detail)
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
#: a first load of a run with more trials than this gets a view of it (RunState.view), not every row
VIEW_LIMIT = 5000


# ----------------------------------------------------------------------------- JSON helpers


def _num(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _nums(vs: Sequence[Any] | None) -> list[float | None] | None:
    return None if vs is None else [_num(v) for v in vs]


def trial_json(t: Trial, full: bool = False) -> dict[str, Any]:
    err = t.error
    if err and not full and len(err) > ERROR_PREVIEW:
        err = err[:ERROR_PREVIEW] + "..."
    return {
        "id": t.id,
        "number": t.number,
        "state": t.state,
        "strategy": t.strategy,
        "generation": t.generation,
        "parents": list(t.parents),
        "values": _nums(t.values),
        "heldout": _nums(t.heldout),
        "worker": t.worker,
        "attempts": t.attempts,
        "started_at": t.started_at,
        "finished_at": t.finished_at,
        "materialize_s": _num(t.materialize_s),
        "evaluate_s": _num(t.evaluate_s),
        "error": err,
    }


def coefficient_maps(space: dict[str, Any], params: dict[str, float]) -> dict[str, Any]:
    """Per searched param: an experts x groups matrix of the trial's coefficients.

    Coordinates are named ``<group>/<expert>/<param>``; group and expert order come from the
    study's space (else from the order of appearance). Bounds come from the space's
    ``lower``/``upper`` (else the observed range). Params not named that way go to ``other``.
    """
    names = list(space.get("names") or params.keys())
    lower = list(space.get("lower") or [])
    upper = list(space.get("upper") or [])
    bounds_of = {n: (lower[i], upper[i]) for i, n in enumerate(names) if i < len(lower) and i < len(upper)}
    groups: list[str] = list(space.get("groups") or [])
    experts: list[str] = list(space.get("experts") or [])
    searched: list[str] = list(space.get("searched") or [])
    cells: dict[tuple[str, str, str], float] = {}
    other: dict[str, float] = {}
    for n in list(names) + [k for k in params if k not in set(names)]:
        if n not in params:
            continue
        parts = n.split("/")
        if len(parts) != 3:
            other[n] = params[n]
            continue
        g, e, p = parts
        for lst, item in ((groups, g), (experts, e), (searched, p)):
            if item not in lst:
                lst.append(item)
        cells[(g, e, p)] = params[n]
    maps = []
    for p in searched:
        mat = [[_num(cells.get((g, e, p))) for g in groups] for e in experts]
        los = [bounds_of[f"{g}/{e}/{p}"][0] for g in groups for e in experts if f"{g}/{e}/{p}" in bounds_of]
        his = [bounds_of[f"{g}/{e}/{p}"][1] for g in groups for e in experts if f"{g}/{e}/{p}" in bounds_of]
        seen = [v for row in mat for v in row if v is not None]
        lo = min(los) if los else (min(seen) if seen else 0.0)
        hi = max(his) if his else (max(seen) if seen else 1.0)
        if not seen:
            continue
        maps.append({"param": p, "groups": groups, "experts": experts, "matrix": mat, "lower": lo, "upper": hi})
    return {"maps": maps, "other": other}


# ----------------------------------------------------------------------------- per-run cache


class RunCache:
    """The trials of one run and their aggregates (:class:`RunState`), kept up to date from the
    (read-only) store at a cost that follows what changed, not the run's size.

    Each refresh reads the rows with an id above the largest seen (new trials), re-reads the
    trials whose state, worker or timings changed while they were RUNNING (a query over the
    running trials only) and those whose held-out values changed (a query over the held-out
    values only), all without params or candidates. Every change bumps the state's counter;
    ``changed_since(after_id, since)`` answers polls.
    """

    def __init__(self, key: str, store: Store, study: Study, url: str, min_interval: float = 0.4, view_limit: int = VIEW_LIMIT):
        self.key = key
        self.store = store
        self.study = study
        self.url = url
        self.min_interval = min_interval
        self.view_limit = view_limit
        self.lock = threading.RLock()
        self._last = -math.inf
        self._config = ("", {})
        self.state = RunState(study.directions, config_ref_point(self.config, len(study.objectives)))

    @property
    def name(self) -> str:
        return self.study.name

    @property
    def counter(self) -> int:
        return self.state.counter

    @property
    def config(self) -> dict[str, Any]:
        """The run's config as a dict (parsed again only when the stored YAML changes)."""
        if self._config[0] != self.study.config_yaml:
            self._config = (self.study.config_yaml, config_dict(self.study))
        return self._config[1]

    def refresh(self, force: bool = False) -> None:
        with self.lock:
            now = time.monotonic()
            if not force and now - self._last < self.min_interval:
                return
            self._last = now
            s = self.store.find_study(self.study.name)
            if s is not None:
                self.study = s
                self.state.set_given(config_ref_point(self.config, len(s.objectives)))
            for t in self.store.trials(self.study.id, after_id=self.state.max_id, with_params=False):
                self.state.put(t)
            changed = self._changed_running() | self._changed_heldout()
            if changed:
                numbers = [self.state.trials[i].number for i in changed]
                for t in self.store.trials(self.study.id, numbers=numbers, with_params=False):
                    self.state.put(t)

    def _changed_running(self) -> set[int]:
        """Ids of RUNNING trials whose state, attempts, worker or timings changed in the store."""
        running = sorted(self.state.running)
        cols = (_tt.c.id, _tt.c.state, _tt.c.attempts, _tt.c.worker, _tt.c.started_at, _tt.c.finished_at)
        changed: set[int] = set()
        with self.store.engine.connect() as c:
            for chunk in (running[i : i + 500] for i in range(0, len(running), 500)):
                for r in c.execute(sa.select(*cols).where(_tt.c.id.in_(chunk))):
                    t = self.state.trials[r.id]
                    if (r.state, r.attempts, r.worker, r.started_at, r.finished_at) != (
                        t.state, t.attempts, t.worker, t.started_at, t.finished_at,
                    ):
                        changed.add(r.id)
        return changed

    def heldout_query(self) -> sa.Select:
        """The held-out rows of the trials held (see :meth:`_changed_heldout`)."""
        return (
            sa.select(_tv.c.trial_id, _tv.c.objective_idx, _tv.c.value)
            .join(_tt, _tt.c.id == _tv.c.trial_id)
            .where(_tv.c.split == "heldout", _tv.c.trial_id.between(self.state.min_id or 0, self.state.max_id or 0),
                   _tt.c.study_id == self.study.id)
        )

    def _changed_heldout(self) -> set[int]:
        """Ids of trials whose held-out values in the store differ from the ones held.

        The index on ``trial_values(split, trial_id)`` makes this a range over the held-out
        rows between the smallest and largest trial id held (a trial outside it is not held:
        the next full read gets it); other runs' rows in that range (runs launched together
        interleave ids) are read and dropped by the join."""
        if not self.state.trials:
            return set()
        q = self.heldout_query()
        found: dict[int, dict[int, float]] = {}
        with self.store.engine.connect() as c:
            for r in c.execute(q):
                found.setdefault(r.trial_id, {})[r.objective_idx] = r.value
        changed = set()
        for tid in set(found) | self.state.with_heldout:
            t = self.state.trials.get(tid)
            if t is None:
                continue  # a trial newer than this refresh's read: the next one reads it whole
            have = {i: v for i, v in enumerate(t.heldout or []) if v is not None}
            if have != found.get(tid, {}):
                changed.add(tid)
        return changed

    def changed_since(
        self, after_id: int | None, since: int | None
    ) -> tuple[list[Trial], dict[str, int | None], dict[str, int] | None]:
        """Trials for a poll (new ones, and changed ones after the cursor), the next cursor, and,
        for a first load (no cursor) of a run above ``view_limit`` trials, what of it was sent
        (:meth:`RunState.view`; None: every trial)."""
        with self.lock:
            view = None
            if after_id is None and since is None:
                v = self.state.view(self.view_limit)
                if v is None:
                    out = list(self.state.trials.values())
                    out.sort(key=lambda t: t.number)
                else:
                    out, view = v
            else:
                out = self.state.changed_since(after_id, since)
            cursor = {"after_id": self.state.max_id, "since": self.state.counter}
        return out, cursor, view

    def summary(self) -> dict[str, Any]:
        with self.lock:
            st = self.state
            space = self.study.space or {}
            best = []
            for j, ((name, direction), t) in enumerate(zip(self.study.objectives, st.best(), strict=True)):
                best.append(
                    {
                        "objective": name,
                        "direction": direction,
                        "number": None if t is None else t.number,
                        "value": None if t is None else _num(t.values[j]),
                        "heldout": None if t is None or not t.heldout or j >= len(t.heldout) else _num(t.heldout[j]),
                    }
                )
            return {
                "key": self.key,
                "name": self.name,
                "store": self.url,
                "status": self.study.status,
                "created_at": self.study.created_at,
                "objectives": [{"name": n, "direction": dd} for n, dd in self.study.objectives],
                "space": {k: space.get(k, []) for k in ("groups", "experts", "searched")},
                "budget": config_budget(self.config),
                "counts": dict(st.counts),
                "front": st.front(),
                "hypervolume": _num(st.hypervolume()),
                "ref_point": _nums(st.ref_point()),
                "best": best,
                "workers": st.workers(),
                "elapsed": st.elapsed(time.time()),
                "counter": st.counter,
                "now": time.time(),
            }


# ----------------------------------------------------------------------------- exports


class ExportJobs:
    """Exports started from the page; each runs ``search.export.export_trial`` in a thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: dict[str, dict[str, Any]] = {}

    @staticmethod
    def function() -> Any:
        """``search.export.export_trial``, or raise LookupError saying why it is unavailable."""
        try:
            from .. import export as ex
        except ModuleNotFoundError as e:
            if e.name in ("search.export", __package__.rsplit(".", 1)[0] + ".export"):
                raise LookupError("export is not available in this installation (search.export is missing)") from None
            raise LookupError(f"export cannot be loaded: {e}") from None
        fn = getattr(ex, "export_trial", None)
        if fn is None:
            raise LookupError("export is not available in this installation (search.export has no export_trial)")
        return fn

    def start(self, fn: Any, run: RunCache, number: int, out_dir: Path, force: bool) -> dict[str, Any]:
        with self.lock:
            for j in self.jobs.values():
                if j["status"] == "running" and j["out_dir"] == str(out_dir):
                    raise FileExistsError(f"an export into {out_dir} is already running (job {j['job']})")
            job = {
                "job": uuid.uuid4().hex[:12],
                "run": run.key,
                "trial": number,
                "out_dir": str(out_dir),
                "force": force,
                "status": "running",
                "error": None,
                "result": None,
                "started_at": time.time(),
                "finished_at": None,
            }
            self.jobs[job["job"]] = job

        def work() -> None:
            try:
                res = fn(run.name, run.url, number, str(out_dir), force=force)
                job["result"] = None if res is None else str(res)
                job["status"] = "done"
                log.info("exported trial %s of %s to %s", number, run.name, out_dir)
            except MergeSearchError as e:
                job["error"], job["status"] = str(e), "error"
            except Exception as e:  # noqa: BLE001 - reported to the page, logged here
                job["error"], job["status"] = f"{type(e).__name__}: {e}", "error"
                log.error("export of trial %s failed:\n%s", number, traceback.format_exc())
            finally:
                job["finished_at"] = time.time()

        threading.Thread(target=work, name=f"export-{job['job']}", daemon=True).start()
        return dict(job)


# ----------------------------------------------------------------------------- app


def open_runs(runs: Sequence[str], store: str | None = None, view_limit: int = VIEW_LIMIT) -> list[RunCache]:
    """Open each RUN (a run name or a store path) read-only; one Store per database."""
    if not runs:
        raise StoreError("name at least one run: search dashboard RUN [RUN...]")
    stores: dict[str, Store] = {}
    caches: list[RunCache] = []
    keys: set[str] = set()
    try:
        for run in runs:
            path = store or default_store_for(run)
            url = store_url(path)
            if url not in stores:
                stores[url] = Store.open(path, readonly=True, create=False)
            st = stores[url]
            names = st.study_names()
            if run in names:
                study = st.study(run)
            elif store is None and path == run and len(names) == 1:
                study = st.study(names[0])
            elif store is None and path == run:
                raise StoreError(f"{run} holds runs {names}; name them: search dashboard NAME... --store {run}")
            else:
                study = st.study(run)  # raises with a did-you-mean
            key, i = study.name, 2
            while key in keys:
                key, i = f"{study.name}~{i}", i + 1
            keys.add(key)
            caches.append(RunCache(key, st, study, path, view_limit=view_limit))
    except BaseException:
        for st in stores.values():
            st.close()
        raise
    return caches


@dataclasses.dataclass
class Curve:
    """A run's hypervolume curve as the page gets it, extended as its tracker counts new trials."""

    tracker: HypervolumeTracker
    epoch: int = -1  # the run's finish epoch and finish log length the tracker has counted
    seen: int = 0
    points: list[list[Any]] = dataclasses.field(default_factory=list)
    changes: list[list[Any]] = dataclasses.field(default_factory=list)  # the points where it changes

    def catch_up(self, epoch: int, seen: int) -> None:
        tr = self.tracker
        for (n, h), (ex, sec) in zip(tr.history[len(self.points) :], tr.cost[len(self.points) :], strict=True):
            p = [n, _num(h), ex, _num(sec)]
            if not self.changes or p[1] != self.points[-1][1]:
                self.changes.append(p)
            self.points.append(p)
        self.epoch, self.seen = epoch, seen


def _host_ok(host_header: str | None, allowed: set[str]) -> bool:
    if not host_header:
        return False
    h = host_header.strip()
    if h.startswith("["):
        h = h[1 : h.find("]")] if "]" in h else h
    else:
        h = h.rsplit(":", 1)[0] if h.count(":") == 1 else h
    return h.lower() in allowed


def create_app(
    runs: Sequence[str],
    store: str | None = None,
    *,
    allowed_hosts: set[str] | None = None,
    export_root: str | Path | None = None,
    view_limit: int = VIEW_LIMIT,
) -> FastAPI:
    """The FastAPI app serving ``runs`` (names or store paths; ``store`` overrides the path).

    ``allowed_hosts``: accepted ``Host`` header names (``serve`` passes the loopback names
    when bound to loopback, against DNS rebinding); None accepts any.
    ``export_root``: if given, exports may only write inside this folder (``serve`` sets it to
    the working directory when the dashboard listens on a non-loopback address).
    """
    root = Path(export_root).expanduser().resolve() if export_root is not None else None
    caches = open_runs(runs, store, view_limit=view_limit)
    by_key = {c.key: c for c in caches}
    jobs = ExportJobs()
    epoch = uuid.uuid4().hex[:8]
    hv_cache: dict[bool, tuple[Any, dict[str, Any]]] = {}  # changes -> (the runs' counters, document)
    hv_trackers: dict[str, Curve] = {}  # run key -> its curve (for its group's current reference)
    hv_lock = threading.Lock()

    app = FastAPI(title="mergesearch dashboard", docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json")
    app.state.runs = caches
    app.state.jobs = jobs

    if allowed_hosts is not None:
        allowed = {h.lower() for h in allowed_hosts}

        @app.middleware("http")
        async def _check_host(request: Request, call_next: Any) -> Any:
            if not _host_ok(request.headers.get("host"), allowed):
                return JSONResponse({"detail": "unexpected Host header"}, status_code=400)
            return await call_next(request)

    def run_or_404(run: str) -> RunCache:
        c = by_key.get(run)
        if c is None:
            raise HTTPException(404, f"no run {run!r} on this dashboard; runs: {', '.join(by_key)}")
        return c

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"), headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/runs")
    def api_runs() -> dict[str, Any]:
        out = []
        for c in caches:
            c.refresh()
            out.append(c.summary())
        return {"epoch": epoch, "runs": out}

    @app.get("/api/runs/{run}")
    def api_run(run: str) -> dict[str, Any]:
        c = run_or_404(run)
        c.refresh()
        return c.summary()

    @app.get("/api/runs/{run}/trials")
    def api_trials(run: str, after_id: int | None = None, since: int | None = None) -> dict[str, Any]:
        c = run_or_404(run)
        c.refresh()
        ts, cursor, view = c.changed_since(after_id, since)
        return {"epoch": epoch, "run": c.key, "cursor": cursor, "trials": [trial_json(t) for t in ts], "view": view,
                "limit": c.view_limit, "summary": c.summary()}

    @app.get("/api/runs/{run}/trials/{number}")
    def api_trial(run: str, number: int) -> dict[str, Any]:
        c = run_or_404(run)
        c.refresh()
        t = c.store.trial(c.study.id, number)
        if t is None:
            raise HTTPException(404, f"run {c.key!r} has no trial {number}")
        with c.lock:
            on_front = number in set(c.state.front())
        out = trial_json(t, full=True)
        out.update(
            run=c.key,
            params={k: _num(v) for k, v in t.params.items()},
            coefficients=coefficient_maps(c.study.space or {}, t.params),
            metrics=[dict(m, value=_num(m.get("value"))) for m in t.metrics],
            on_front=on_front,
            objectives=[{"name": n, "direction": dd} for n, dd in c.study.objectives],
            candidate_meta=(t.candidate or {}).get("meta", {}),
        )
        return out

    def track(c: RunCache, directions: list[str], ref: list[float], changes: bool) -> list[list[Any]]:
        """[evaluations, hypervolume, examples evaluated so far, evaluation seconds so far] per
        finished trial (``changes``: only where the hypervolume changes, and the last one)."""
        st = c.state
        cur = hv_trackers.get(c.key)
        if (  # counted from the newly finished trials, unless the reference or a counted trial changed
            cur is None
            or cur.tracker.ref != [float(r) for r in ref]
            or cur.tracker.directions != directions
            or cur.epoch != st.finish_epoch
            or not cur.tracker.extend([st.trials[i] for i in st.finish_log[cur.seen :]])
        ):
            tr = HypervolumeTracker(directions, ref)
            tr.update(list(st.trials.values()))
            cur = hv_trackers[c.key] = Curve(tr)
        cur.catch_up(st.finish_epoch, len(st.finish_log))
        if not changes or not cur.points:
            return list(cur.points)  # a copy: the curve grows while an earlier answer is being sent
        return cur.changes + ([cur.points[-1]] if cur.changes[-1] is not cur.points[-1] else [])

    @app.get("/api/hypervolume")
    def api_hypervolume(changes: bool = False) -> dict[str, Any]:
        """``changes``: only the points where a run's hypervolume changes, and its last one
        (the same step curve, drawn from far fewer points)."""
        for c in caches:
            c.refresh()
        sig = tuple(c.counter for c in caches)
        with hv_lock:
            hit = hv_cache.get(changes)
            if hit is not None and hit[0] == sig:
                return hit[1]
            groups: dict[tuple[tuple[str, str], ...], list[RunCache]] = {}
            for c in caches:
                groups.setdefault(tuple(c.study.objectives), []).append(c)
            doc_groups = []
            for objs, members in groups.items():
                directions = [d for _, d in objs]
                given: list[float | None] = [None] * len(objs)
                extremes = []
                for c in members:  # a config-pinned reference wins (first run that pins it)
                    with c.lock:
                        ex = c.state.extremes()
                    if ex is not None:
                        extremes.extend(ex)
                    for j, r in enumerate(config_ref_point(c.config, len(objs))):
                        if given[j] is None and r is not None:
                            given[j] = r
                # the pooled values' smallest and largest per objective decide the reference
                vals = np.vstack(extremes) if extremes else np.zeros((0, len(objs)))
                ref = reference_point(vals, directions, given)
                runs = {}
                for c in members:
                    with c.lock:
                        runs[c.key] = track(c, directions, ref, changes)
                doc_groups.append({"objectives": [{"name": n, "direction": d} for n, d in objs], "ref_point": _nums(ref), "runs": runs})
            doc = {"groups": doc_groups}
            hv_cache[changes] = (sig, doc)
            return doc

    @app.post("/api/runs/{run}/trials/{number}/export", status_code=202)
    async def api_export(run: str, number: int, request: Request) -> Any:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise HTTPException(415, "send the export request as application/json: {\"out_dir\": \"...\", \"force\": false}")
        try:
            body = await request.json()
        except ValueError:
            raise HTTPException(400, "the request body is not valid JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("out_dir"), str) or not body["out_dir"].strip():
            raise HTTPException(400, "name the folder to export into: {\"out_dir\": \"merged/trial-12\"}")
        force = body.get("force", False)
        if not isinstance(force, bool):
            raise HTTPException(400, "force must be true or false")
        c = run_or_404(run)
        c.refresh()
        if number not in c.state.by_number:
            raise HTTPException(404, f"run {c.key!r} has no trial {number}")
        try:
            fn = ExportJobs.function()
        except LookupError as e:
            raise HTTPException(501, str(e)) from None
        out_dir = Path(body["out_dir"].strip()).expanduser().resolve()
        if root is not None and not out_dir.is_relative_to(root):
            raise HTTPException(403, f"this dashboard only exports into folders under {root}")
        try:
            job = jobs.start(fn, c, number, out_dir, force)
        except FileExistsError as e:
            raise HTTPException(409, str(e)) from None
        return job

    @app.get("/api/exports")
    def api_exports() -> dict[str, Any]:
        with jobs.lock:
            return {"jobs": [dict(j) for j in jobs.jobs.values()]}

    @app.get("/api/exports/{job}")
    def api_export_job(job: str) -> dict[str, Any]:
        with jobs.lock:
            j = jobs.jobs.get(job)
            if j is None:
                raise HTTPException(404, f"no export job {job!r}")
            return dict(j)

    return app


# ----------------------------------------------------------------------------- serve


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _warm_up(caches: Sequence[RunCache]) -> None:
    """Read each run once in the background, so the page's first load (seconds for a run of
    100,000 trials) has often been paid for by the time someone opens it."""
    for c in caches:
        try:
            c.refresh(force=True)
        except Exception as e:  # noqa: BLE001 - the page's own request reports it again
            log.warning("could not read run %s yet: %s", c.key, e)


def serve(runs: Sequence[str], host: str = "127.0.0.1", port: int = 8765, store: str | None = None) -> int:
    """Serve the dashboard until interrupted; returns the exit code (0, or 2 on a user error).

    ``port=0`` picks a free port; the URL actually served is logged either way.
    """
    import uvicorn

    loop = is_loopback(host)
    try:
        app = create_app(
            runs,
            store,
            allowed_hosts=(LOOPBACK_NAMES | {host.lower()}) if loop else None,
            export_root=None if loop else Path.cwd(),
        )
    except MergeSearchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    bind_host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(bind_host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, addr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)  # connections queue from now on, so the logged URL works at once
    except OSError as e:
        print(f"error: cannot listen on {host}:{port}: {e.strerror or e}; pick another --port", file=sys.stderr)
        return 2
    try:
        actual = sock.getsockname()[1]
        shown = f"[{bind_host}]" if ":" in bind_host else bind_host
        url = f"http://{shown}:{actual}/"
        names = ", ".join(c.key for c in app.state.runs)
        log.info("dashboard for %s at %s (stores opened read-only; Ctrl-C stops)", names, url)
        if not loop:
            log.warning(
                "listening on %s, which is not a loopback address: anyone who can reach port %d can read these runs "
                "and start exports that write files on this machine (%s, under %s); use --host 127.0.0.1 to keep it local",
                host, actual, socket.gethostname(), Path.cwd(),
            )
        threading.Thread(target=_warm_up, args=(app.state.runs,), name="dashboard-warm-up", daemon=True).start()
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # Ctrl-C is how a dashboard stops (uvicorn re-raises it after shutting down)
        pass
    finally:
        sock.close()
        for c in app.state.runs:
            c.store.close()
    log.info("dashboard stopped")
    return 0
