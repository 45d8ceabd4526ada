"""The controller: an asynchronous steady-state loop and the only writer of the store.

``launch(config)`` validates the config, opens (or creates) the run in the store, takes the
run's single-controller lock and loops: whenever a worker is free it asks the strategy for
candidates (strategies ask ahead at generation boundaries, so no worker idles), records
each as a RUNNING trial together with the strategy state (one transaction), and submits it;
finished trials are recorded with their values, metrics and per-example scores, told to
the strategy, and the new strategy state is saved in the same transaction. So a resumed
run (``search resume`` or ``launch`` on an existing run) restores the exact strategy state,
retries the trials that were running, and continues numbering.

Identical candidates are not evaluated twice: a duplicate gets the earlier result and
costs no budget. A trial whose worker died is retried (``workers.max_retries``); a trial
that raises, returns NaN/inf, or exceeds ``workers.trial_timeout`` is recorded as FAIL with
its error and the run goes on. When the budget is spent, the members of the Pareto front
are re-evaluated on the objectives' held-out settings and stored beside the search values.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .config import SearchConfig, load_config, parse_config
from .errors import StoreError
from .promotion import full_front
from .replay import clip_candidates, digest, vector_key
from .store import (
    COMPLETE,
    FAIL,
    RUNNING,
    SCHEMA_VERSION,
    STOPPED,
    LevelRows,
    Store,
    StrategyEvent,
    default_store_for,
)
from .strategies.base import TrialResult
from .validation import CheckedRun, check_run
from .workers import TrialTask, make_pool

log = logging.getLogger("search.controller")

_IDENTITY_EXCLUDE = {"strategy": {"budget", "max_time"}, "workers": True, "store": True}


def config_identity(cfg: SearchConfig) -> str:
    """Hash of what defines a run's search problem (budget, workers and store may change)."""
    d = cfg.model_dump(mode="json", exclude=_IDENTITY_EXCLUDE)  # type: ignore[arg-type]
    if d.get("fidelity") is None:  # runs from before the fidelity section keep their identity
        d.pop("fidelity", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def _jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return [_jsonable(v) for v in o.tolist()]
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    return o


def front_stats(values: np.ndarray, directions: Sequence[str], ref_given: Sequence[float | None] | None = None) -> tuple[np.ndarray, float | None]:
    """Pareto mask and hypervolume (reference point rule of :mod:`search.pareto`) of complete trials' values."""
    if len(values) == 0:
        return np.zeros(0, dtype=bool), None
    from .pareto import (  # one reference-point rule for bar, report and dashboard
        pareto_mask,
        ref_hypervolume,
        reference_point,
    )

    mask = pareto_mask(values, directions)
    try:
        hv = ref_hypervolume(values, directions, reference_point(values, directions, ref_given))
    except Exception:  # the bar must never stop a run
        hv = None
    return mask, hv


def build_problem(space: Any, cfg: SearchConfig, budget: int | None = None) -> Any:
    """The strategy's view of a search: bounds, objectives with directions, layer order, and
    named seed points (each expert one-hot, the base = all zeros, the uniform 1/K merge)."""
    from .strategies import Objective, Problem

    k = len(space.experts)
    seeds: list[tuple[str, np.ndarray]] = []
    if "weight" in space.searched:
        for i, e in enumerate(space.experts):
            seeds.append((f"expert:{e}", space.point([1.0 if j == i else 0.0 for j in range(k)])))
        seeds.append(("base", space.point([0.0] * k)))
        seeds.append(("uniform", space.point([1.0 / k] * k)))
    return Problem(
        lower=space.lower,
        upper=space.upper,
        objectives=tuple(Objective(o.name, o.direction, o.weight) for o in cfg.objectives),
        budget=cfg.strategy.budget if budget is None else budget,
        names=space.names,
        coord_group=space.coord_group,
        seeds=tuple(seeds),
        n_experts=k,
    )


#: a strategy with data snapshots saves one after at least this many tells ...
SNAPSHOT_MIN_TELLS = 25
#: ... and after a quarter more tells than the last snapshot had seen, so that the bytes
#: written for snapshots stay proportional to the run (a geometric series), not quadratic
SNAPSHOT_GROWTH = 0.25


def flat_per_sample(per_sample: dict[str, np.ndarray] | None) -> np.ndarray | None:
    """Per-example scores of a trial as one vector, in the order of their names (the same
    order for a live result and one read back from the store)."""
    if not per_sample:
        return None
    return np.concatenate([np.asarray(per_sample[k]).ravel() for k in sorted(per_sample)])


class _RunState:
    """What the controller knows of a run between calls: the strategy and its call log,
    trial numbers, results by number, running trials and duplicates waiting on them.
    :meth:`restore` rebuilds all of it from the store."""

    def __init__(self, store: Store, study_id: int, strategy: Any, space: Any, cfg: SearchConfig | None = None):
        self.store, self.study_id, self.strategy, self.space = store, study_id, strategy, space
        self.fidelity = cfg.fidelity if cfg is not None else None
        self.objectives = [(o.name, o.direction) for o in cfg.objectives] if cfg is not None else []
        self.levels: dict[int, list[LevelRows]] = {}  # running fidelity trial -> per-example results of its levels so far
        self.cost: dict[int, tuple[float, float]] = {}  # running fidelity trial -> (materialize, evaluate) seconds so far
        self.full_examples: dict[int, tuple[Any, Any]] = {}  # full-fidelity trial -> (values, per-example results per objective)
        self.seq = 0  # last logged strategy call
        self.number = 0  # next trial number
        self.seen: dict[bytes, int] = {}
        self.results: dict[int, Any] = {}  # trial number -> TrialResult
        self.pending: dict[int, tuple[int, Any, TrialTask]] = {}  # number -> (trial id, candidate, task)
        self.waiting_dups: dict[int, list[Any]] = {}  # number -> duplicate candidates waiting for its result
        self.n_done = self.n_fail = 0
        self._n_tells = 0
        self._snap_tells = 0  # tells seen by the last snapshot
        self._snap_seq = 0

    def event(self, kind: str, payload: dict[str, Any]) -> StrategyEvent:
        self.seq += 1
        return StrategyEvent(self.seq, kind, payload)

    def result_of(self, cand: Any, number: int) -> Any:
        return dataclasses.replace(self.results[number], candidate=cand)

    def fidelity_result(self, cand: Any, rows: list[LevelRows]) -> tuple[Any, Any]:
        """The result a fidelity trial's levels give (what its strategy is told) and the stitching."""
        from .promotion import stitch_levels

        assert self.fidelity is not None
        st = stitch_levels(rows, self.objectives, self.fidelity.z)
        tr = TrialResult(cand, st.values.copy(), flat_per_sample(st.per_sample), None, dict(st.margins) or None,
                         fidelity=1.0 if st.full else st.fraction, value_se=None if st.full else st.se.copy())
        return tr, st

    def tell(self, batch: list[Any], items: list[tuple[int, int]]) -> None:
        """Tell results that need no trial row (duplicates of finished trials) and log it."""
        self.strategy.tell(batch)
        self.store.log_event(self.study_id, self.event("tell", {"items": [[int(c), int(n)] for c, n in items]}))
        self.told()

    def told(self) -> None:
        self._n_tells += 1
        self.snapshot()

    def snapshot(self, force: bool = False) -> None:
        """Save the strategy's data-only state now and then (see SNAPSHOT_GROWTH)."""
        if not self.strategy.snapshots or self._snap_seq == self.seq:
            return
        since = self._n_tells - self._snap_tells
        if not force and since < max(SNAPSHOT_MIN_TELLS, SNAPSHOT_GROWTH * self._snap_tells):
            return
        from . import statedata

        text, blob = statedata.encode(self.strategy.state_dict())
        self.store.save_snapshot(self.study_id, self.seq, self._n_tells, text, blob)
        self._snap_tells, self._snap_seq = self._n_tells, self.seq

    def restore(self, replay_legacy: bool) -> None:
        """Rebuild everything from the store: results, the strategy (snapshot + replay of the
        calls after it), running trials and waiting duplicates. ``replay_legacy``: discard the
        call log and re-tell the stored trials to a new strategy (not exact)."""
        from . import statedata
        from .replay import outstanding, replay
        from .strategies import Candidate

        store = self.store
        old = store.trials(self.study_id)
        by_number = {t.number: t for t in old}
        arrays = store.trial_arrays(self.study_id) if old else {}
        levels = store.trial_levels(self.study_id) if old and self.fidelity is not None else {}
        self.number = max(by_number) + 1 if old else 0
        for t in old:
            self.seen[vector_key(np.asarray(t.candidate["x"], dtype=np.float64))] = t.number
            if t.state in (COMPLETE, STOPPED) and t.number in levels:  # a fidelity trial: stitched as the live run did
                tr, st = self.fidelity_result(Candidate.from_dict(t.candidate), levels[t.number])
                self.results[t.number] = tr
                if t.state == COMPLETE:
                    self.full_examples[t.number] = (tr.values, st.examples_of)
            elif t.state != RUNNING:
                self.results[t.number] = self._stored_result(t, arrays.get(t.number, ({}, {})))
            elif t.number in levels:  # promoted: its next level is what runs again
                self.levels[t.number] = levels[t.number]
                self.cost[t.number] = (t.materialize_s or 0.0, t.evaluate_s or 0.0)
        self.n_done = len(self.results)
        self.n_fail = sum(1 for t in old if t.state == FAIL)
        if replay_legacy and old:
            self._retell(old)
            return
        events = store.events(self.study_id)
        if not events:  # a new run: remember the budget the strategy is built with
            store.log_event(self.study_id, self.event("start", {"budget": self.strategy.problem.budget}))
            return
        self.seq = events[-1].seq
        self._n_tells = sum(1 for e in events if e.kind == "tell")
        start_budget = next((e.payload["budget"] for e in events if e.kind == "start"), None)
        if start_budget is not None and start_budget != self.strategy.problem.budget:
            # the logged calls were made by a strategy built for the run's first budget: replay with it
            s = self.strategy
            self.strategy = type(s)(dataclasses.replace(s.problem, budget=int(start_budget)), s.options, seed=s.seed)
        strategy = self.strategy
        # where each candidate id's vector is: its trial row, or (a duplicate) its ask
        src: dict[int, dict[str, Any]] = {int(t.candidate["id"]): {"number": t.number} for t in old}
        for ev in events:
            if ev.kind == "ask":
                for it in ev.payload["items"]:
                    src[int(it["id"])] = it

        def candidate_of(cid: int) -> Any:
            it = src.get(cid)
            if it is None:
                raise StoreError(f"the strategy log names candidate {cid} that no trial or ask holds; the store is damaged")
            return Candidate.from_dict(it["cand"] if "cand" in it else by_number[int(it["number"])].candidate)

        start = 0
        snap = store.latest_snapshot(self.study_id) if strategy.snapshots else None
        if snap is not None:
            seq, n_tells = snap[0], snap[1]
            try:
                if seq > self.seq or n_tells != sum(1 for e in events if e.kind == "tell" and e.seq <= seq):
                    raise ValueError(f"it claims {n_tells} tells up to call {seq}, which the call log does not hold")
                strategy.load_state_dict(statedata.decode(snap[2], snap[3]))
                start, self._snap_tells, self._snap_seq = seq, n_tells, seq
            except Exception as e:  # noqa: BLE001 - any bad snapshot: rebuild from the whole log instead
                log.warning("the %s snapshot could not be used (%s); replaying the whole run instead", strategy.name, e)
                strategy = self.strategy = type(strategy)(strategy.problem, strategy.options, seed=strategy.seed)
        todo = [e for e in events if e.seq > start]
        if todo:
            log.info("rebuilding the %s state: replaying %d logged call(s)%s", strategy.name, len(todo),
                     f" after the snapshot at call {start}" if start else "")
        asked, diverged = replay(strategy, todo, self.space.lower, self.space.upper, candidate_of, self.result_of)
        if diverged is not None:
            raise StoreError(
                f"replaying the run's strategy calls proposed other points than its log at call {diverged} (other "
                "numpy / scipy / cma / pymoo / optuna versions than the run had?); use the versions the run started "
                "with, or continue with 'search resume RUN --replay' (its trials are re-told to a new strategy: not exact)"
            )
        immediate: list[tuple[Any, int]] = []
        for cid, it in outstanding(events).items():
            cand = asked.get(cid) or candidate_of(cid)
            if "dup_of" in it:
                orig = int(it["dup_of"])
                if orig in self.results:  # its original finished after the ask was logged: tell it now
                    immediate.append((cand, orig))
                else:
                    self.waiting_dups.setdefault(orig, []).append(cand)
            else:
                n = int(it["number"])
                t = by_number[n]
                level = None if self.fidelity is None else (max(r.level for r in self.levels[n]) + 1 if n in self.levels else 0)
                self.pending[n] = (t.id, cand, TrialTask(n, t.candidate["x"], attempt=t.attempts + 1, level=level))
        if immediate:
            self.tell([self.result_of(c, o) for c, o in immediate], [(c.id, o) for c, o in immediate])

    @staticmethod
    def _stored_result(t: Any, arrays: tuple[dict[str, np.ndarray], dict[int, np.ndarray]]) -> Any:
        from .strategies import Candidate

        per, marg = arrays
        ok = t.state == COMPLETE and t.values is not None
        return TrialResult(
            Candidate.from_dict(t.candidate),
            np.asarray(t.values) if ok else None,
            flat_per_sample(per) if ok else None,
            t.error,
            marg if ok and marg else None,
        )

    def _retell(self, old: list[Any]) -> None:
        """``--replay``: drop the call log, record trials left running as failed (their ids
        belong to the old strategy), and tell every stored trial to the new strategy."""
        running = [t for t in old if t.state == RUNNING]
        for t in running:
            self.store.finish_trial(t.id, FAIL, error="abandoned: still running when 'search resume --replay' rebuilt the strategy")
            t.state, t.error = FAIL, "abandoned"
            self.results[t.number] = self._stored_result(t, ({}, {}))
        self.n_done, self.n_fail = len(self.results), self.n_fail + len(running)
        self.store.drop_strategy_log(self.study_id)
        log.warning("re-telling %d stored trial(s) to a new %s (not exact)", len(self.results), self.strategy.name)
        self.store.log_event(self.study_id, self.event("start", {"budget": self.strategy.problem.budget}))
        nums = sorted(self.results)
        self.tell([self.results[n] for n in nums], [(self.results[n].candidate.id, n) for n in nums])


class Controller:
    """Runs a search. ``pool_factory`` (default :func:`search.workers.make_pool`, same
    arguments) and ``clock`` (default ``time.time``, read for ``strategy.max_time``) are
    seams for :mod:`search.simulate`, which runs this loop against simulated workers on a
    virtual clock."""

    def __init__(self, cfg: SearchConfig, store_url: str | None = None, config_path: str | None = None,
                 pool_factory: Any = None, clock: Any = None):
        self.cfg = cfg
        self.pool_factory = pool_factory or make_pool
        self.clock = clock or time.time
        self.store_url = store_url or cfg.store_url
        if "://" not in self.store_url and not Path(self.store_url).is_absolute():
            self.store_url = str(Path.cwd() / self.store_url)
        self.config_path = config_path

    # ------------------------------------------------------------------ setup
    def _open_study(self, store: Store, space_info: dict[str, Any], fresh: bool) -> Any:
        cfg = self.cfg
        ident = config_identity(cfg)
        study = store.find_study(cfg.name)
        if study is None:
            log.info("new run %r in %s", cfg.name, self.store_url)
            return store.create_study(cfg.name, cfg.to_yaml(), ident, [(o.name, o.direction) for o in cfg.objectives], space_info)
        if fresh:
            raise StoreError(f"run {cfg.name!r} already exists in {self.store_url}; pick another name or drop --fresh to continue it")
        if study.config_sha != ident:
            old = parse_config(__import__("yaml").safe_load(study.config_yaml))
            changed = _diff_keys(old.model_dump(mode="json", exclude=_IDENTITY_EXCLUDE), cfg.model_dump(mode="json", exclude=_IDENTITY_EXCLUDE))  # type: ignore[arg-type]
            raise StoreError(
                f"run {cfg.name!r} in {self.store_url} was started with a different config (changed: {', '.join(changed) or '?'}); "
                "give this config another name, or use another store"
            )
        log.info("continuing run %r (%s)", cfg.name, store.counts(study.id))
        return study

    # ------------------------------------------------------------------ main loop
    def run(self, fresh: bool = False, replay_legacy: bool = False, checked: CheckedRun | None = None) -> int:
        cfg = self.cfg
        t_start = self.clock()
        if checked is None:  # every check, the strategy's included, before the store is opened
            checked = check_run(cfg, run_code=True)
        space, problem, strategy = checked.space, checked.problem, checked.strategy
        assert space is not None and problem is not None and strategy is not None  # run_code=True always builds them
        log.info("search space: %s", space.describe())
        space_info = {
            "names": list(space.names),
            "groups": list(space.groups),
            "experts": list(space.experts),
            "searched": list(space.searched),
            "lower": space.lower.tolist(),
            "upper": space.upper.tolist(),
            "base_dir": str(cfg.base_dir),
        }
        store = Store.open(self.store_url)
        if store.version < SCHEMA_VERSION and store.find_study(cfg.name) is not None and not replay_legacy:
            store.require_current(cfg.name)
        study = self._open_study(store, space_info, fresh)
        owner = store.acquire(study.id)
        if store.version < SCHEMA_VERSION:
            log.warning("upgrading %s to store schema %d%s", self.store_url, SCHEMA_VERSION,
                        "; its pickled strategy states are dropped unread" if store.version < 2 else "")
            store.upgrade()
        if study.config_yaml != cfg.to_yaml():
            store.update_config(study.id, cfg.to_yaml())
        hb_stop = threading.Event()
        hb = threading.Thread(target=_heartbeat, args=(self.store_url, study.id, owner, hb_stop), daemon=True)
        hb.start()

        run = _RunState(store, study.id, strategy, space, cfg)
        fid = cfg.fidelity
        directions = [o.direction for o in cfg.objectives]
        run.restore(replay_legacy)
        strategy = run.strategy  # a new instance if the snapshot could not be read
        pending, waiting_dups = run.pending, run.waiting_dups
        n_done, n_fail = run.n_done, run.n_fail
        budget = cfg.strategy.budget
        pool = None
        interrupted = False
        old_handler = signal.getsignal(signal.SIGTERM)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _raise_interrupt)
        progress = _Progress(budget, n_done, n_fail)
        dup_streak = 0
        asked_dry = False  # the last ask returned fewer than wanted: wait for a result before asking again

        try:
            log.info("starting %d %s worker(s)", cfg.workers.count, cfg.workers.backend)
            pool = self.pool_factory(cfg, cfg.to_yaml(), str(cfg.base_dir))
            stale = sorted(pending)
            for n in stale:  # trials that were running when a controller died: run them again
                tid, _, task = pending[n]
                store.restart_trial(tid)
            if stale:
                log.info("retrying %d trial(s) left running by an earlier controller", len(stale))
            queue_: list[TrialTask] = [pending[n][2] for n in stale]
            progress.start()
            while True:
                time_up = cfg.strategy.max_time is not None and self.clock() - t_start > cfg.strategy.max_time
                free = pool.free_slots()
                # submit queued retries first
                while queue_ and free > 0:
                    retry = queue_.pop(0)
                    store.set_worker(pending[retry.number][0], pool.submit(retry))
                    free -= 1
                remaining = budget - n_done - len(pending)
                want = min(free, remaining) if not time_up and not asked_dry else 0
                spun = False  # told duplicates only: ask again without waiting
                if want > 0:
                    cands = strategy.ask(want)
                    _crash_point("ask")
                    asked_dry = len(cands) < want
                    clip_candidates(cands, space.lower, space.upper)
                    items: list[dict[str, Any]] = []
                    rows: list[dict[str, Any]] = []
                    immediate: list[tuple[Any, int]] = []
                    for cand in cands:
                        k = vector_key(cand.x)
                        item: dict[str, Any] = {"id": int(cand.id), "h": digest(cand.x)}
                        if k in run.seen:  # identical candidate: reuse the earlier result, costs no budget
                            dup_streak += 1
                            orig = run.seen[k]
                            items.append({**item, "dup_of": orig, "cand": _jsonable(cand.to_dict())})
                            if orig in run.results:
                                immediate.append((cand, orig))
                            else:
                                waiting_dups.setdefault(orig, []).append(cand)
                            continue
                        dup_streak = 0
                        task = TrialTask(run.number, cand.x.tolist(), level=0 if fid is not None else None)
                        # submit, then record (nothing comes back before the next poll): the rows
                        # name their workers, and the ask with all its trials is one transaction
                        wid = pool.submit(task)
                        items.append({**item, "number": run.number})
                        rows.append(dict(number=run.number, candidate=_jsonable(cand.to_dict()), params=space.to_dict(cand.x), worker=wid))
                        pending[run.number] = (-1, cand, task)
                        run.seen[k] = run.number
                        run.number += 1
                    tids = store.add_trials(study.id, rows, cfg.strategy.name, run.event("ask", {"n": want, "items": items}))
                    for r, tid in zip(rows, tids, strict=True):
                        _, cand, task = pending[r["number"]]
                        pending[r["number"]] = (tid, cand, task)
                    _crash_point("asked")
                    if any("dup_of" in it and it["dup_of"] not in run.results for it in items):
                        _crash_point("waiting")
                    if immediate:
                        run.tell([run.result_of(c, o) for c, o in immediate], [(c.id, o) for c, o in immediate])
                        asked_dry, spun = False, not rows
                    if dup_streak > 200:
                        log.warning("the strategy proposed 200 duplicates in a row; stopping early")
                        budget = n_done + len(pending)
                # nothing proposed and nothing running: no result can change the strategy's mind
                exhausted = asked_dry and not pending and not queue_
                if not pending and not queue_ and (remaining <= 0 or time_up or exhausted):
                    if exhausted:
                        log.warning("the strategy has nothing more to propose; stopping at %d trials", n_done)
                    break
                for task, res in pool.poll(timeout=0.0 if spun else 0.2):
                    if task.split != "search":
                        continue
                    tid, cand, _ = pending[task.number]
                    if res.died and task.attempt <= cfg.workers.max_retries:
                        log.warning("retrying trial %d (attempt %d): %s", task.number, task.attempt + 1, res.error)
                        store.restart_trial(tid)
                        retry = TrialTask(task.number, task.x, attempt=task.attempt + 1, level=task.level)
                        pending[task.number] = (tid, cand, retry)
                        queue_.append(retry)
                        continue
                    ok = res.ok
                    mat_s, eval_s = res.materialize_s, res.evaluate_s
                    state = COMPLETE if ok else FAIL
                    level = task.level
                    new_rows: list[LevelRows] = []
                    examples = [len(res.examples[j]) if j in res.examples else None for j in range(len(cfg.objectives))]
                    if ok and fid is not None and level is not None:
                        m0, e0 = run.cost.pop(task.number, (0.0, 0.0))
                        mat_s, eval_s = m0 + (mat_s or 0.0), e0 + (eval_s or 0.0)
                        new_rows = [LevelRows(j, level, ex.combine, res.sizes[j], ex.to_array()) for j, ex in sorted(res.examples.items())]
                        rows = run.levels.pop(task.number, []) + new_rows
                        tr, st = run.fidelity_result(cand, rows)
                        examples = list(st.examples)
                        if not st.full and level < len(fid.schedule) - 1:
                            from .fidelity import epsilons, paired_stop, promote

                            front = full_front(run.results)
                            eps = epsilons(front, fid.epsilon) if len(front) else None
                            if fid.rule == "paired":
                                go = not paired_stop(st.examples_of, st.sizes, directions, fid.z, list(run.full_examples.values()), eps)
                            else:
                                go = promote(st.optimistic, front, directions, eps)
                            if go:
                                # on to the next level: only its new examples are scored
                                store.add_level(tid, level, new_rows, examples, mat_s, eval_s)
                                run.levels[task.number], run.cost[task.number] = rows, (mat_s, eval_s)
                                nxt = TrialTask(task.number, task.x, level=level + 1)
                                pending[task.number] = (tid, cand, nxt)
                                queue_.append(nxt)
                                _crash_point("promoted")
                                continue
                            state = STOPPED
                        else:
                            run.full_examples[task.number] = (tr.values, st.examples_of)
                    else:
                        run.levels.pop(task.number, None)
                        run.cost.pop(task.number, None)
                        tr = TrialResult(
                            cand,
                            np.asarray(res.values) if ok else None,
                            flat_per_sample(res.per_sample) if ok else None,
                            res.error,
                            dict(res.margins) if ok and res.margins else None,
                        )
                    del pending[task.number]
                    n_done += 1
                    if not ok:
                        n_fail += 1
                        log.warning("trial %d failed: %s", task.number, res.error)
                    run.results[task.number] = tr
                    dups = waiting_dups.pop(task.number, [])
                    strategy.tell([tr] + [dataclasses.replace(tr, candidate=d) for d in dups])
                    _crash_point("tell")
                    fidelity_trial = bool(new_rows)
                    store.finish_trial(
                        tid,
                        state,
                        values=tr.values if ok else None,
                        evaluations_=[] if fidelity_trial else res.evaluations,  # a level's metrics cover its new examples only
                        per_sample_=(st.per_sample if fidelity_trial else res.per_sample) if ok else None,
                        error=res.error,
                        worker=res.worker,
                        materialize_s=mat_s,
                        evaluate_s=eval_s,
                        margins_=tr.margins,
                        event=run.event("tell", {"items": [[int(c.id), task.number] for c in [cand, *dups]]}),
                        study_id=study.id,
                        level=level if fidelity_trial else None,
                        examples_=examples,
                        levels_=new_rows,
                    )
                    run.told()
                    asked_dry = False
                    _crash_point("told")
                    progress.update(
                        n_done, n_fail, lambda: full_front(run.results), cfg
                    )
            progress.stop()
            run.snapshot(force=True)
            self._heldout(store, study, pool)
            store.set_status(study.id, "finished")
        except KeyboardInterrupt:
            interrupted = True
            progress.stop()
            log.warning("interrupted: trials left running will be retried; continue with: search resume %s", cfg.name)
            store.set_status(study.id, "interrupted")
        finally:
            progress.stop()
            if pool is not None:
                pool.close()
            hb_stop.set()
            store.release(study.id, owner)
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, old_handler)
        counts = store.counts(study.id)
        store.close()
        log.info(
            "run %r: %d complete, %d failed, %.0fs; store %s",
            cfg.name,
            counts.get(COMPLETE, 0),
            counts.get(FAIL, 0),
            self.clock() - t_start,
            self.store_url,
        )
        if not interrupted:
            print(f"\nnext: search front {cfg.name} --store {self.store_url}   |   search dashboard {cfg.name} --store {self.store_url}")
        return 130 if interrupted else 0

    # ------------------------------------------------------------------ held-out validation
    def _heldout(self, store: Store, study: Any, pool: Any) -> None:
        cfg = self.cfg
        if not any(o.heldout is not None for o in cfg.objectives):
            return
        done = store.trials(study.id, states=[COMPLETE])
        if not done:
            return
        vals = np.array([t.values for t in done])
        mask, _ = front_stats(vals, [o.direction for o in cfg.objectives])
        todo = [t for t, m in zip(done, mask, strict=True) if m and not t.heldout]
        if not todo:
            return
        log.info("re-evaluating %d front member(s) on the held-out settings", len(todo))
        queue_ = [TrialTask(t.number, t.candidate["x"], split="heldout") for t in todo]
        ids = {t.number: t.id for t in todo}
        running = 0
        while queue_ or running:
            while queue_ and pool.free_slots() > 0:
                pool.submit(queue_.pop(0))
                running += 1
            for task, res in pool.poll(timeout=0.2):
                running -= 1
                if res.died:
                    task.attempt += 1
                    if task.attempt <= cfg.workers.max_retries + 1:
                        queue_.append(task)
                    continue
                if res.ok:
                    store.add_heldout(
                        ids[task.number],
                        [None if (v is None or (isinstance(v, float) and math.isnan(v))) else v for v in res.values or []],
                        res.evaluations,
                    )
                    _crash_point("heldout")
                else:
                    log.warning("held-out evaluation of trial %d failed: %s", task.number, res.error)


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [prefix]


_crash_hits: dict[str, int] = {}


def _crash_point(name: str) -> None:
    """Fault injection for tests: ``MERGESEARCH_CRASH_AT=<name>:<k>`` SIGKILLs this process the
    k-th time it passes point ``name`` (``ask``, ``asked``, ``waiting``: recorded an ask with a
    duplicate of a running trial, ``tell``, ``told``, ``promoted``: recorded a fidelity level
    and queued the next, ``heldout``)."""
    spec = os.environ.get("MERGESEARCH_CRASH_AT")
    if not spec:
        return
    point, _, k = spec.partition(":")
    if point != name:
        return
    _crash_hits[name] = _crash_hits.get(name, 0) + 1
    if _crash_hits[name] == int(k or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _heartbeat(url: str, study_id: int, owner: str, stop: threading.Event) -> None:
    st = Store.open(url, indexes=False)  # the controller's own open added them
    try:
        while not stop.wait(10.0):
            try:
                st.heartbeat(study_id, owner)
            except Exception as e:  # never let the heartbeat kill the run
                log.debug("heartbeat failed: %s", e)
    finally:
        st.close()


class _Progress:
    """A rich progress bar: evaluations, failures, front size, hypervolume."""

    def __init__(self, budget: int, done: int, failed: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._p = Progress(
            TextColumn("[bold]search"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            transient=False,
        )
        self._task = self._p.add_task("search", total=budget, completed=done, info=f"failed {failed}")
        self._last_log = 0.0
        self._last_front = 0.0
        self._front_s = 0.0  # what the last front computation took

    def start(self) -> None:
        self._p.start()

    def stop(self) -> None:
        self._p.stop()

    def update(self, done: int, failed: int, get_values: Any, cfg: SearchConfig) -> None:
        now = time.time()
        # the front costs O(n^2): at most every 0.5 s, and at most 5% of the controller's time
        if now - self._last_front < max(0.5, 20 * self._front_s) and done < cfg.strategy.budget:
            self._p.update(self._task, completed=done)
            return
        self._last_front = now
        info = f"failed {failed}"
        values = get_values()
        if len(values):
            mask, hv = front_stats(values, [o.direction for o in cfg.objectives], [o.ref_point for o in cfg.objectives])
            info += f" | front {int(mask.sum())}"
            if hv is not None:
                info += f" | HV {hv:.4g}"
        self._p.update(self._task, completed=done, info=info)
        self._front_s = time.time() - now
        if now - self._last_log > 30:
            self._last_log = now
            log.info("%d/%d trials, %s", done, cfg.strategy.budget, info)


# ----------------------------------------------------------------------------- entry points


def _with_overrides(cfg: SearchConfig, address: str | None = None, budget: int | None = None, store: str | None = None) -> SearchConfig:
    base = cfg.base_dir
    upd: dict[str, Any] = {}
    if address:
        upd["workers"] = cfg.workers.model_copy(update={"backend": "ray", "address": address})
    if budget is not None:
        from .errors import ConfigError, ConfigIssue

        if budget <= 0:
            raise ConfigError(ConfigIssue("--budget", "must be a positive number of trials"))
        upd["strategy"] = cfg.strategy.model_copy(update={"budget": budget})
    if store:
        upd["store"] = store
    return cfg.model_copy(update=upd).with_base_dir(base) if upd else cfg


def launch(
    config: str | SearchConfig,
    address: str | None = None,
    budget: int | None = None,
    store: str | None = None,
    fresh: bool = False,
    replay: bool = False,
) -> int:
    """``search launch``: every check of ``search validate`` (with the overrides applied, before
    the store is touched), then run (or continue) the search. Returns an exit code.
    ``replay``: continue a run kept by an older store schema by re-telling its trials."""
    cfg = load_config(config) if not isinstance(config, SearchConfig) else config
    cfg = _with_overrides(cfg, address, budget, store)
    checked = check_run(cfg, run_code=True, source=None if isinstance(config, SearchConfig) else str(config))
    return Controller(cfg).run(fresh=fresh, replay_legacy=replay, checked=checked)


def resume(run: str, store: str | None = None, address: str | None = None, budget: int | None = None, replay: bool = False) -> int:
    """``search resume``: continue a run from its store with the config it was started with."""
    import yaml

    from .store import open_run

    st, study = open_run(run, store, readonly=True)
    st.close()
    cfg = parse_config(yaml.safe_load(study.config_yaml), f"{run} (stored config)").with_base_dir(study.space.get("base_dir"))
    url = store or default_store_for(run)
    cfg = _with_overrides(cfg, address, budget, url)
    checked = check_run(cfg, run_code=True, source=f"{run} (stored config)")  # before anything is written
    return Controller(cfg, url).run(replay_legacy=replay, checked=checked)
