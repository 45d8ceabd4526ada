"""Workers evaluate trials; pools run them in-process, in local processes, or as Ray actors.

A :class:`TrialWorker` is built once per worker: it loads the base model (the one model
instance whose weights every trial overwrites in place), the tokenizer, the Materializer
(base + task vectors resident) and one evaluator per objective. ``run(task)`` materializes
the trial's coefficients and evaluates; it never raises for a bad trial: failures come back
as results with ``error`` set.

Pools share one small interface used by the controller:

* ``free_slots()``: workers ready for a task;
* ``submit(task)``: start a task on a free worker; returns that worker's name;
* ``poll(timeout)``: finished ``(task, result)`` pairs; a task whose worker died comes back
  with ``result.died = True`` (the controller retries it, bounded); a task past
  ``workers.trial_timeout`` comes back failed and its worker is replaced;
* ``close()``.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import socket
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger("search.workers")


@dataclass
class TrialTask:
    number: int
    x: list[float]
    split: str = "search"  # "search" or "heldout"
    attempt: int = 1
    level: int | None = None  # fidelity level to score (its new examples only); None: every example


@dataclass
class WorkerResult:
    number: int
    split: str
    values: list[float] | None = None
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    per_sample: dict[str, np.ndarray] = field(default_factory=dict)
    margins: dict[int, np.ndarray] = field(default_factory=dict)  # objective index -> per-example margins
    error: str | None = None
    worker: str = ""
    materialize_s: float | None = None
    push_s: float | None = None  # engine: vllm only (copy into the engine + the stale-weight check)
    evaluate_s: float | None = None
    died: bool = False
    examples: dict[int, Any] = field(default_factory=dict)  # objective index -> search.fidelity.Examples scored
    sizes: dict[int, list[int]] = field(default_factory=dict)  # objective index -> its example groups' sizes

    @property
    def ok(self) -> bool:
        return self.error is None and self.values is not None


def pick_device(device: str, gpus: float) -> str:
    if device != "auto":
        return device
    try:
        import torch

        if gpus > 0 and torch.cuda.is_available():
            return "cuda"
    except ImportError:  # pragma: no cover
        pass
    return "cpu"


class TrialWorker:
    """Everything a worker builds once: model, tokenizer, materializer, evaluators."""

    def __init__(self, config_yaml: str, base_dir: str | None, worker_id: str):
        import torch
        import yaml

        from evaluators import build_evaluator, context_for

        from .config import parse_config
        from .merge.materializer import build_materializer
        from .models import load_model, load_tokenizer
        from .space import CoefficientSpace

        t0 = time.perf_counter()
        self.cfg = parse_config(yaml.safe_load(config_yaml)).with_base_dir(base_dir)
        cfg = self.cfg
        torch.set_num_threads(cfg.workers.threads)
        self.device = pick_device(cfg.workers.device, cfg.workers.gpus_per_worker)
        self.worker_id = worker_id
        self.model = load_model(cfg.models.base, cfg, device=self.device)
        self.tokenizer = load_tokenizer(cfg)
        names = [n for n, _ in self.model.named_parameters()]
        self.space = CoefficientSpace.build(names, [e.name for e in cfg.models.experts], cfg.merge)
        from evaluators.vllm_engine import engine_options, engine_reserve_bytes

        self.engine_options = engine_options(cfg)
        reserve = 0
        if self.engine_options is not None:
            mbytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
            reserve = engine_reserve_bytes(self.engine_options, self.device, mbytes)
        self.materializer = build_materializer(cfg.merge, cfg.models, self.model, self.space, self.device,
                                               base_dir=cfg.base_dir, seed=cfg.seed, reserve_bytes=reserve)
        self._build_evaluator = build_evaluator
        self._context_for = context_for
        self.evaluators = [
            build_evaluator(o.evaluator, o.settings, context_for(cfg, "search", self.device)) for o in cfg.objectives
        ]
        self._heldout: list[Any] | None = None
        self.engine: Any = None
        if self.engine_options is not None:
            if self._engine_only():
                self._release_live_model()
            self._start_engine()
        log.info("worker %s ready on %s in %.1fs (%s)", worker_id, self.device, time.perf_counter() - t0, self.space.describe())

    def _engine_only(self) -> bool:
        """Every objective, held-out settings included, runs on the vLLM engine: no evaluator
        needs the live model, so the worker need not hold one."""
        for o in self.cfg.objectives:
            settings = [o.settings] + ([{**o.settings, **o.heldout}] if o.heldout is not None else [])
            if o.evaluator != "lm_eval" or any(s.get("engine") != "vllm" for s in settings):
                return False
        return True

    def _release_live_model(self) -> None:
        """Free the live model's weights (engine: vllm on every objective): the engine's copy and
        the Materializer's base + task vectors are all the worker holds. Only if a forward pass
        with each module's weights merged on call (the stale-weight check's reference) gives the
        live model's log-probabilities on the base and reaches every parameter; otherwise the
        live model is kept, with a warning."""
        from evaluators.vllm_engine import release_live_model

        model = self.model
        why = release_live_model(self.materializer, model)
        if why is not None:
            log.warning("worker %s keeps the live model beside the vLLM engine (one more copy of the weights): a forward "
                        "pass with the weights merged on call does not reproduce %s (%s)", self.worker_id,
                        type(model).__name__, why)
            return
        log.info("worker %s: live model released; the vLLM engine and the merge's base + task vectors hold the weights",
                 self.worker_id)

    def _on_engine(self, evs: list[Any]) -> list[tuple[int, Any]]:
        return [(i, ev) for i, ev in enumerate(evs) if ev is not None and getattr(getattr(ev, "settings", None), "engine", "hf") == "vllm"]

    def _start_engine(self) -> None:
        """Start the worker's one vLLM engine from the base model (engine: vllm)."""
        from evaluators.vllm_engine import VLLMEngine, check_context

        from .models import resolve_source

        cfg = self.cfg
        assert self.engine_options is not None
        on_engine = self._on_engine(self.evaluators)
        check_context(cfg, self.engine_options, on_engine, self.tokenizer, self.model.config)
        self.engine = VLLMEngine(
            resolve_source(cfg.models.base, cfg.base_dir), resolve_source(cfg.models.tokenizer or cfg.models.base, cfg.base_dir),
            self.engine_options, self.device, cfg.models.dtype, seed=cfg.seed, trust_remote_code=cfg.models.trust_remote_code,
        )
        for _, ev in on_engine:
            ev.attach_engine(self.engine)

    def _heldout_evaluators(self) -> list[Any]:
        if self._heldout is None:
            self._heldout = [
                self._build_evaluator(o.evaluator, {**o.settings, **o.heldout}, self._context_for(self.cfg, "heldout", self.device))
                if o.heldout is not None
                else None
                for o in self.cfg.objectives
            ]
            if self.engine_options is not None:
                from evaluators.vllm_engine import check_context

                on_engine = self._on_engine(self._heldout)
                check_context(self.cfg, self.engine_options, on_engine, self.tokenizer, self.model.config)
                for _, ev in on_engine:
                    ev.attach_engine(self.engine)
        return self._heldout

    def _push(self, task: TrialTask, res: WorkerResult) -> bool:
        """Push the trial's merge into the vLLM engine and prove it serves it; False (``res``
        failed, marked died so the controller retries the trial) after a stale push, with the
        engine restarted. With the live model released the merged tensors go from the
        Materializer straight into the engine, and the reference is a forward pass with the
        weights merged on call; else the live model (already merged) is pushed and is the
        reference."""
        from evaluators.vllm_engine import StaleEngineError, reference_logprobs

        mat = self.materializer
        x = np.asarray(task.x, dtype=np.float64)
        t0 = time.perf_counter()
        ids = self.engine.probe_ids(int(self.model.get_output_embeddings().weight.shape[0]))
        if mat.released:
            mat.last_apply_seconds = None
            self.engine.push(mat.merged_tensors(x, task.number))
            res.materialize_s = mat.last_apply_seconds or 0.0
        else:
            self.engine.push(self.model.named_parameters())
        reference = reference_logprobs(mat, self.model, ids, x, task.number)
        try:
            self.engine.verify(reference)
        except StaleEngineError as e:
            log.warning("worker %s: %s", self.worker_id, e)
            res.error, res.died = str(e), True
            self.engine.restart()
            return False
        res.push_s = time.perf_counter() - t0 - (res.materialize_s if mat.released else 0.0)
        return True

    def run(self, task: TrialTask) -> WorkerResult:
        import torch

        from .seeding import trial_seed

        res = WorkerResult(number=task.number, split=task.split, worker=self.worker_id)
        try:
            if not self.materializer.released:  # else the push merges tensor by tensor into the engine
                t0 = time.perf_counter()
                with torch.no_grad():
                    self.materializer.apply(np.asarray(task.x, dtype=np.float64), task.number)
                res.materialize_s = time.perf_counter() - t0
            evs = self.evaluators if task.split == "search" else self._heldout_evaluators()
            if self.engine is not None and not self._push(task, res):
                return res
            seed = trial_seed(self.cfg.seed, task.number)
            values: list[float] = []
            t1 = time.perf_counter()
            fid = self.cfg.fidelity if task.split == "search" and task.level is not None else None
            for o, ev in zip(self.cfg.objectives, evs, strict=True):
                if ev is None:  # no held-out settings for this objective
                    values.append(math.nan)
                    continue
                idx = None
                sizes = ev.example_groups()
                if sizes is not None:
                    res.sizes[len(values)] = [int(n) for n in sizes]
                if fid is not None:
                    from .fidelity import Examples, new_indices

                    if sizes is None:
                        raise ValueError(f"objective {o.name!r}: evaluator {o.evaluator!r} cannot score example subsets")
                    idx = new_indices(fid.schedule, int(task.level or 0), sizes, self.cfg.seed, o.name, fid.by_count)
                    if not len(idx):  # this level adds no example to this objective (all were scored below)
                        res.examples[len(values)] = Examples.of([], [])
                        values.append(math.nan)
                        continue
                with torch.no_grad():  # examples only with fidelity: evaluators of plugins may predate it
                    out = ev.evaluate(self.model, self.tokenizer, seed=seed, **({} if idx is None else {"examples": idx}))
                if ev.metric not in out.metrics:
                    raise ValueError(
                        f"objective {o.name!r}: evaluator {o.evaluator!r} produced no metric {ev.metric!r} "
                        f"(it produced: {', '.join(sorted(out.metrics))})"
                    )
                v = float(out.metrics[ev.metric])
                for k, mv in out.metrics.items():
                    res.evaluations.append(
                        {
                            "objective_idx": len(values),
                            "split": task.split,
                            "evaluator": o.evaluator,
                            "metric": k,
                            "value": float(mv) if isinstance(mv, (int, float)) and math.isfinite(mv) else None,
                        }
                    )
                if not math.isfinite(v):
                    raise ValueError(f"objective {o.name!r}: evaluator {o.evaluator!r} returned {v} for {ev.metric!r}")
                if out.examples is not None:
                    problem = _examples_problem(o.name, o.evaluator, ev.metric, v, out.examples, idx)
                    if problem and idx is not None:
                        raise ValueError(problem)
                    if not problem:  # without fidelity they only count the examples scored
                        res.examples[len(values)] = out.examples
                elif idx is not None:
                    raise ValueError(f"objective {o.name!r}: evaluator {o.evaluator!r} gave no per-example scores of "
                                     f"{ev.metric!r}, so it cannot be scored on subsets; remove the fidelity section")
                values.append(v)
                for key, arr in (out.per_sample or {}).items():
                    res.per_sample[f"{o.name}/{key}"] = np.asarray(arr, dtype=np.float32)
                if out.margins and ev.metric in out.margins:
                    res.margins[len(values) - 1] = np.asarray(out.margins[ev.metric], dtype=np.float64)
            res.evaluate_s = time.perf_counter() - t1
            res.values = values
        except Exception as e:  # a failed trial is data, not a crash
            log.debug("trial %s failed:\n%s", task.number, traceback.format_exc())
            res.error = f"{type(e).__name__}: {e}"
            res.values = None
        return res


def _examples_problem(name: str, evaluator: str, metric: str, value: float, ex: Any, idx: Any) -> str | None:
    """Why an evaluator's per-example results are unusable (not the examples asked for, or
    they do not give the metric back), or None."""
    from .fidelity import combine

    if idx is not None and not np.array_equal(ex.index, np.asarray(idx)):
        return f"objective {name!r}: evaluator {evaluator!r} scored other examples than the {len(idx)} asked for"
    got = combine(ex)
    if not math.isclose(got, value, rel_tol=1e-6, abs_tol=1e-9):
        return (f"objective {name!r}: evaluator {evaluator!r}'s per-example scores give {got:.6g}, not its "
                f"{metric!r} of {value:.6g}, so it cannot be scored on subsets; remove the fidelity section")
    return None


# ----------------------------------------------------------------------------- pools


class InlinePool:
    """One worker in this process: zero setup; a trial runs inside ``poll``."""

    def __init__(self, config_yaml: str, base_dir: str | None):
        self.worker = TrialWorker(config_yaml, base_dir, f"local-0@{socket.gethostname()}")
        self._queue: list[TrialTask] = []
        self.n_workers = 1

    def free_slots(self) -> int:
        return 0 if self._queue else 1

    def submit(self, task: TrialTask) -> str:
        self._queue.append(task)
        return self.worker.worker_id

    def poll(self, timeout: float = 0.0) -> list[tuple[TrialTask, WorkerResult]]:
        if not self._queue:
            return []
        task = self._queue.pop(0)
        return [(task, self.worker.run(task))]

    def running(self) -> int:
        return len(self._queue)

    def close(self) -> None:
        pass


def _process_main(config_yaml: str, base_dir: str | None, worker_id: str, tasks: Any, results: Any) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parent = os.getppid()
    try:
        w = TrialWorker(config_yaml, base_dir, worker_id)
    except Exception as e:
        results.put(("init_error", worker_id, f"{type(e).__name__}: {e}"))
        return
    results.put(("ready", worker_id, None))
    while True:
        try:
            task = tasks.get(timeout=2.0)
        except queue.Empty:
            if os.getppid() != parent:  # the controller died (e.g. kill -9): free the device, exit
                return
            continue
        if task is None:
            return
        results.put(("result", worker_id, (task, w.run(task))))


class ProcessPool:
    """Local worker processes (spawned); used for count > 1 or a trial timeout on the local backend."""

    def __init__(self, config_yaml: str, base_dir: str | None, count: int, trial_timeout: float | None):
        import multiprocessing as mp

        self._ctx = mp.get_context("spawn")
        self._args = (config_yaml, base_dir)
        self._timeout = trial_timeout
        self._results = self._ctx.Queue()
        self._workers: dict[str, dict[str, Any]] = {}
        self.n_workers = count
        for i in range(count):
            self._start(f"local-{i}@{socket.gethostname()}")

    def _start(self, wid: str) -> None:
        tq = self._ctx.Queue()
        p = self._ctx.Process(target=_process_main, args=(*self._args, wid, tq, self._results), daemon=True)
        p.start()
        self._workers[wid] = {"proc": p, "tasks": tq, "ready": False, "task": None, "since": 0.0}

    def free_slots(self) -> int:
        return sum(1 for w in self._workers.values() if w["ready"] and w["task"] is None)

    def running(self) -> int:
        return sum(1 for w in self._workers.values() if w["task"] is not None)

    def submit(self, task: TrialTask) -> str:
        wid = next(k for k, w in self._workers.items() if w["ready"] and w["task"] is None)
        w = self._workers[wid]
        w["task"], w["since"] = task, time.monotonic()
        w["tasks"].put(task)
        return wid

    def _replace(self, wid: str) -> None:
        w = self._workers.pop(wid)
        if w["proc"].is_alive():
            w["proc"].kill()
        w["proc"].join(timeout=5)
        self._start(wid)

    def poll(self, timeout: float = 0.0) -> list[tuple[TrialTask, WorkerResult]]:
        out: list[tuple[TrialTask, WorkerResult]] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                kind, wid, payload = self._results.get(timeout=max(0.0, min(0.05, deadline - time.monotonic())))
                w = self._workers.get(wid)
                if kind == "ready" and w:
                    w["ready"] = True
                elif kind == "init_error":
                    from .errors import MergeSearchError

                    raise MergeSearchError(f"worker {wid} could not start: {payload}")
                elif kind == "result" and w:
                    w["task"] = None
                    out.append(payload)
            except queue.Empty:
                pass
            now = time.monotonic()
            for wid, w in list(self._workers.items()):
                t = w["task"]
                if t is None:
                    continue
                if not w["proc"].is_alive():
                    out.append((t, WorkerResult(t.number, t.split, error=f"worker {wid} died", worker=wid, died=True)))
                    self._replace(wid)
                elif self._timeout and now - w["since"] > self._timeout:
                    out.append((t, WorkerResult(t.number, t.split, error=f"timed out after {self._timeout:g}s", worker=wid)))
                    log.warning("trial %d timed out on %s; replacing the worker", t.number, wid)
                    self._replace(wid)
            if out or time.monotonic() >= deadline:
                return out

    def close(self) -> None:
        for w in self._workers.values():
            try:
                w["tasks"].put(None)
            except Exception:
                pass
        for w in self._workers.values():
            w["proc"].join(timeout=2)
            if w["proc"].is_alive():
                w["proc"].kill()
        self._workers.clear()


class RayPool:
    """One Ray actor per worker (``num_gpus`` per actor from the config).

    Each actor is given up to ``depth`` (2) trials at once: it runs them one after the other,
    so it starts the next trial while the controller records the last one (no idle gap of a
    Ray round trip + a store commit per trial). The next trial's timeout clock starts when
    the controller sees the previous one finish.
    """

    depth = 2

    def __init__(self, config_yaml: str, base_dir: str | None, workers_cfg: Any):
        import ray

        from .ray_actor import make_actor_class

        self._ray = ray
        self.cfg = workers_cfg
        # runtime_env: a working_dir / py_modules must be given to ray.init (job level); its folder
        # is unpacked as each worker's cwd, so workers resolve the config's relative paths there.
        job_env, actor_env = _split_runtime_env(workers_cfg.runtime_env, base_dir)
        self._actor_env = actor_env
        if job_env:
            base_dir = None
        if not ray.is_initialized():
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            if workers_cfg.address:
                log.info("joining Ray cluster at %s", workers_cfg.address)
                ray.init(address=workers_cfg.address, runtime_env=job_env)
            else:
                log.info("starting a local Ray (no workers.address given)")
                ray.init(include_dashboard=False, runtime_env=job_env)
            self._owns_ray = True
        else:
            if job_env:
                from .errors import MergeSearchError

                raise MergeSearchError(
                    "workers.runtime_env: working_dir / py_modules need a Ray started by mergesearch "
                    "(Ray is already initialised in this process); ship them with 'ray job submit --working-dir' instead"
                )
            self._owns_ray = False
        self._cls = make_actor_class()
        self._args = (config_yaml, base_dir)
        self.n_workers = workers_cfg.count
        self._workers: dict[str, dict[str, Any]] = {}
        for i in range(workers_cfg.count):
            self._start(f"ray-{i}")

    def _start(self, wid: str) -> None:
        opts: dict[str, Any] = dict(num_cpus=self.cfg.cpus_per_worker, num_gpus=self.cfg.gpus_per_worker, max_restarts=0)
        if self.cfg.resources:
            opts["resources"] = dict(self.cfg.resources)
        if self._actor_env:
            opts["runtime_env"] = dict(self._actor_env)
        actor = self._cls.options(**opts).remote(*self._args, wid)
        # inflight: [task, ref, started] in submission order; the actor runs them one by one
        self._workers[wid] = {"actor": actor, "ready_ref": actor.ready.remote(), "name": wid, "inflight": []}

    def free_slots(self) -> int:
        self._check_ready()
        return sum(self.depth - len(w["inflight"]) for w in self._workers.values() if w["ready_ref"] is None)

    def running(self) -> int:
        return sum(len(w["inflight"]) for w in self._workers.values())

    def _check_ready(self) -> None:
        pending = [w["ready_ref"] for w in self._workers.values() if w["ready_ref"] is not None]
        if not pending:
            return
        done, _ = self._ray.wait(pending, num_returns=len(pending), timeout=0)
        for w in self._workers.values():
            if w["ready_ref"] is not None and w["ready_ref"] in done:
                try:
                    w["name"] = self._ray.get(w["ready_ref"], timeout=10)
                except Exception as e:
                    from .errors import MergeSearchError

                    raise MergeSearchError(f"Ray worker {w['name']} could not start: {e}") from None
                w["ready_ref"] = None

    def submit(self, task: TrialTask) -> str:
        ready = [w for w in self._workers.values() if w["ready_ref"] is None and len(w["inflight"]) < self.depth]
        w = min(ready, key=lambda w: len(w["inflight"]))  # an idle worker first
        now = time.monotonic()
        w["inflight"].append([task, w["actor"].run.remote(task), now if not w["inflight"] else None])
        return str(w["name"])

    def _replace(self, wid: str, out: list[tuple[TrialTask, WorkerResult]], reason: str) -> None:
        """Kill and restart a worker; its queued tasks come back as died (the controller retries them)."""
        w = self._workers.pop(wid)
        try:
            self._ray.kill(w["actor"], no_restart=True)
        except Exception:
            pass
        for task, _ref, _t in w["inflight"]:
            out.append((task, WorkerResult(task.number, task.split, error=reason, worker=w["name"], died=True)))
        self._start(wid)

    def poll(self, timeout: float = 0.0) -> list[tuple[TrialTask, WorkerResult]]:
        refs = {item[1]: wid for wid, w in self._workers.items() for item in w["inflight"]}
        out: list[tuple[TrialTask, WorkerResult]] = []
        if refs:
            pending = list(refs)
            done, _ = self._ray.wait(pending, num_returns=len(pending), timeout=0)  # all that are ready
            if not done and timeout:
                done, _ = self._ray.wait(pending, num_returns=1, timeout=timeout)
            now = time.monotonic()
            for ref in done:
                wid = refs[ref]
                w = self._workers.get(wid)
                item = next((it for it in w["inflight"] if it[1] == ref), None) if w else None
                if item is None:  # its worker was replaced while handling an earlier ref of this poll
                    continue
                task = item[0]
                try:
                    res = self._ray.get(ref, timeout=60)
                except Exception as e:  # actor died (RayActorError, ActorDiedError, ...)
                    log.warning("worker %s died during trial %d: %s", w["name"], task.number, type(e).__name__)
                    self._replace(wid, out, f"worker {w['name']} died")
                    continue
                w["inflight"].remove(item)
                if w["inflight"] and w["inflight"][0][2] is None:
                    w["inflight"][0][2] = now  # the next queued task starts now
                out.append((task, res))
        elif timeout:  # no trial in flight: wait for a worker to come up
            starting = [w["ready_ref"] for w in self._workers.values() if w["ready_ref"] is not None]
            if starting:
                self._ray.wait(starting, num_returns=1, timeout=timeout)
            else:
                time.sleep(min(timeout, 0.05))
        if self.cfg.trial_timeout:
            now = time.monotonic()
            for wid, w in list(self._workers.items()):
                head = w["inflight"][0] if w["inflight"] else None
                if head is not None and head[2] is not None and now - head[2] > self.cfg.trial_timeout:
                    t = head[0]
                    w["inflight"].pop(0)
                    out.append((t, WorkerResult(t.number, t.split, error=f"timed out after {self.cfg.trial_timeout:g}s", worker=w["name"])))
                    log.warning("trial %d timed out on %s; replacing the worker", t.number, w["name"])
                    self._replace(wid, out, f"worker {w['name']} was replaced after a time-out")
        return out

    def close(self) -> None:
        for w in self._workers.values():
            try:
                self._ray.kill(w["actor"], no_restart=True)
            except Exception:
                pass
        self._workers.clear()
        if self._owns_ray:
            self._ray.shutdown()


def _split_runtime_env(env: dict[str, Any] | None, base_dir: str | None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(job-level part: working_dir/py_modules with relative paths resolved against the config's
    folder, actor-level part: everything else such as env_vars, pip)."""
    if not env:
        return None, None
    job = {k: v for k, v in env.items() if k in ("working_dir", "py_modules")}
    actor = {k: v for k, v in env.items() if k not in job}
    if "working_dir" in job and base_dir and "://" not in str(job["working_dir"]):
        from pathlib import Path

        wd = Path(str(job["working_dir"])).expanduser()
        job["working_dir"] = str(wd if wd.is_absolute() else (Path(base_dir) / wd).resolve())
    return job or None, actor or None


def make_pool(cfg: Any, config_yaml: str, base_dir: str | None) -> InlinePool | ProcessPool | RayPool:
    w = cfg.workers
    if w.backend == "ray":
        return RayPool(config_yaml, base_dir, w)
    if w.count == 1 and not w.trial_timeout:
        return InlinePool(config_yaml, base_dir)
    return ProcessPool(config_yaml, base_dir, w.count, w.trial_timeout)
