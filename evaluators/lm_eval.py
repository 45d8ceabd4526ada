"""lm-evaluation-harness tasks, run in-process on the live merged model.

Built once per worker: the task dict (``TaskManager(...).load``: datasets, prompts) and, on the
first ``evaluate``, one ``HFLM`` wrapping the in-memory model object. Every trial then calls
``lm_eval.evaluator.evaluate(lm, task_dict, samples=..., bootstrap_iters=0)`` after the merge
has rewritten the weights in place. Nothing that depends on the weights is kept between
trials: no ``use_cache`` (lm-eval's response cache keys on the request only and returns stale
scores after the weights change), no request cache, and requests are rebuilt every call
(tests/test_evaluators.py checks a re-evaluation after an in-place weight change against a
freshly built evaluator).

Settings:

* ``tasks``: task, group or tag names. The shipped tasks (``evaluators/tasks/``, e.g.
  ``tinylm_add`` / ``tinylm_add_test``) and folders in ``include_path`` are found without
  indexing lm-eval's built-in tasks; that slow index is only built when a name is not local.
* ``metric``: result key such as ``"exact_match,none"`` (a bare ``"exact_match"`` means the
  first filter the task reports it under, usually ``none``); default: the first metric of the
  first task. The objective value is the mean of ``metric`` over the (leaf) tasks, so a group
  counts each of its subtasks equally.
* ``limit``: score a subset of this many documents per task. The subset is a seeded random
  choice (``subset: random``, seed ``subset_seed`` or derived from the run seed and the task
  name), the same for every trial of a run, so trials stay comparable; ``subset: first``
  takes the first ``limit`` documents.
* ``num_fewshot``, ``fewshot_seed`` (the few-shot sampler is re-seeded before every trial),
  ``batch_size``, ``max_length``, ``gen_kwargs`` (merged into each generation task's
  ``generation_kwargs``), ``include_path`` (task folders, relative to the config's folder;
  data files in your own YAMLs must be absolute paths, or relative to the working directory).

* ``engine``: ``hf`` (default) runs lm-eval's HF backend on the live model; ``vllm`` runs
  lm-eval's vLLM backend on the worker's one vLLM engine, into which every merge is pushed in
  place (``evaluators/vllm_engine.py``, options in the ``vllm:`` section, docs/engines.md).

Result: ``metrics[self.metric]`` is the objective value; ``metrics["<task>/<key>"]`` has every
per-task metric; ``per_sample[<task>]`` holds per-document scores (in doc order of the subset)
when the metric's per-document values lie in [0, 1] (exact match, accuracy). For
multiple-choice ``acc`` and ``acc_norm``, ``margins[metric]`` holds each document's
gold-choice loglikelihood minus the best other choice's (length-normalised for ``acc_norm``),
when the objective is exactly the fraction of them that are positive (one task, or tasks of
equal size); ``mobo`` models them instead of the accuracy. For greedy ``generate_until``
``exact_match`` (engine ``hf``), ``margins[metric]`` holds each document's teacher-forced
margin (``evaluators/generation_margins.py``: one forward pass over context + gold target,
min over the target's positions and the stop of the gold token's logit minus the best
other's), under the same rule: only where its signs give lm-eval's per-document exact match
back; a filter that rewrites the generation, loose exact-match options, sampling or several
gold targets give none (a debug log line says why). ``generation_margins: false`` skips the
pass (on the tiny-lm tasks it is about a fifth of an evaluation; strategies other than
``mobo`` / ``turbo`` do not use margins).

Example subsets (``fidelity``): the examples are the documents of every task (of its
``limit`` subset when one is set), numbered task after task; a subset is scored through
lm-eval's ``samples`` argument (those document ids per task, nothing else is run), and the
per-document scores of the metric come back as :attr:`EvalResult.examples`, one group per
task (the objective is the mean of the tasks' means). Metrics without per-document scores
in [0, 1] (e.g. a loglikelihood perplexity) cannot be scored on subsets: the trial fails and
says so.

Guards (``check``): unknown task names get close-name suggestions; objectives on well-known
public benchmark test sets (MMLU, GSM8K, ARC, HellaSwag, ...) are refused during the search
unless the config sets ``allow_public_test_sets: true`` (held-out reporting on them is fine);
a metric the task does not produce is reported with the metrics it does produce.

Failures: any exception inside lm-eval, a metric missing from the results, or a NaN/inf
objective raises :class:`~evaluators.base.EvaluationError`; the controller records the trial
as FAIL with that message.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from ._common import argmax_margins, margins_give_back, require_finite
from .base import EvalContext, EvalResult, EvaluationError, Evaluator, EvaluatorSettings
from .lm_eval_tasks import (
    SHIPPED_TASKS,
    builtin_task_names,
    materialized_shipped_tasks,
    public_benchmark,
    scan_tasks,
)
from .vllm_engine import VLLMOptions

log = logging.getLogger(__name__)


def _include_folders(settings: LMEvalSettings, ctx: EvalContext) -> list[Path]:
    return [ctx.resolve(p) for p in settings.include_path]


# ----------------------------------------------------------------------------- the evaluator


class LMEvalSettings(EvaluatorSettings):
    tasks: list[str] = Field(min_length=1, description="lm-eval task, group or tag names")
    metric: str | None = Field(None, description="result key, e.g. 'exact_match,none' (default: the first metric)")
    limit: int | None = Field(None, gt=0, description="documents per task (a seeded subset); none = all")
    subset: Literal["random", "first"] = Field("random", description="how `limit` picks documents")
    subset_seed: int | None = Field(None, description="seed of the random subset (default: derived from the run seed)")
    num_fewshot: int | None = Field(None, ge=0)
    fewshot_seed: int = Field(1234, description="few-shot sampler seed, reset before every trial")
    batch_size: int | Literal["auto"] = Field(
        "auto", description="requests per batch; 'auto' = lm-eval's largest-that-fits search on a GPU (once per worker), 32 on CPU"
    )
    max_length: int | None = Field(None, gt=0, description="context length (default: the model's)")
    include_path: list[str] = Field(default_factory=list, description="folders with task YAMLs")
    gen_kwargs: dict[str, Any] | None = Field(None, description="merged into generation tasks' generation_kwargs")
    confirm_run_unsafe_code: bool = Field(False, description="allow tasks that execute model-written code")
    engine: Literal["hf", "vllm"] = Field(
        "hf", description="'hf': lm-eval's HF backend on the live model; 'vllm': the worker's vLLM engine (docs/engines.md)"
    )
    vllm: VLLMOptions | None = Field(None, description="vLLM engine options (engine: vllm)")
    generation_margins: bool = Field(
        True, description="greedy exact-match generation: also report per-document margins (one teacher-forced pass; mobo models them)"
    )


def _choice_margins(samples: dict[str, list[dict[str, Any]]], tasks: dict[str, Any], metric: str, filt: str) -> Any:
    """Per-document margins behind multiple-choice ``acc`` / ``acc_norm``: the gold choice's
    loglikelihood minus the best other choice's (``acc_norm``: each divided by its choice's
    length in characters, as lm-eval does), for every task in ``tasks`` (doc order), or None
    where they would not give the metric back: another metric, a document with several gold
    answers or no loglikelihoods, a margin whose sign disagrees with lm-eval's own score."""
    import numpy as np

    if metric not in ("acc", "acc_norm"):
        return None
    parts = []
    for name, task in tasks.items():
        rows = sorted((r for r in samples.get(name, []) if r.get("filter") == filt), key=lambda r: r["doc_id"])
        if not rows:
            return None
        try:
            lls = [np.array([float(resp[0]) for resp in r["filtered_resps"]]) for r in rows]
            gold = [r["target"] for r in rows]
            right = np.array([float(r[metric]) for r in rows]) > 0.5
            if metric == "acc_norm":
                lens = [np.array([float(len(c)) for c in task.doc_to_choice(r["doc"])]) for r in rows]
                lls = [ll / n if len(n) == len(ll) and n.all() else None for ll, n in zip(lls, lens, strict=True)]
        except Exception:  # a task whose samples or choices are not what multiple_choice logs
            return None
        if any(ll is None or not isinstance(g, (int, np.integer)) or not 0 <= g < len(ll) for g, ll in zip(gold, lls, strict=True)):
            return None
        m = np.concatenate([argmax_margins([ll], [g]) for ll, g in zip(lls, gold, strict=True)])
        if not np.array_equal(m > 0, right):
            return None
        parts.append(m)
    if len({len(m) for m in parts}) != 1:  # the objective averages tasks: only equal sizes weigh documents equally
        return None
    return np.concatenate(parts)


#: lm-eval metrics aggregated over tokens or words, not a mean of per-document scores in [0, 1]
_NOT_PER_DOCUMENT = frozenset({"perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte"})


def _split_metric(metric: str) -> tuple[str, str]:
    name, _, filt = metric.partition(",")
    return name, (filt or "none")


def _normalize_metric(metric: str, produced: list[str] | None = None) -> str:
    """``metric,filter``; a bare metric name takes the first filter the task reports it under
    (``none`` when unknown)."""
    if "," not in metric and produced:
        for key in produced:
            if key.split(",", 1)[0] == metric:
                return key
    name, filt = _split_metric(metric)
    return f"{name},{filt}"


class LMEvalEvaluator(Evaluator):
    name: ClassVar[str] = "lm_eval"
    Settings: ClassVar[type[EvaluatorSettings]] = LMEvalSettings
    settings: LMEvalSettings

    # ------------------------------------------------------------------ checks (no model)
    @classmethod
    def check(cls, settings: EvaluatorSettings, ctx: EvalContext) -> list[tuple[str, str]]:
        assert isinstance(settings, LMEvalSettings)
        issues: list[tuple[str, str]] = []
        folders = _include_folders(settings, ctx)
        for i, p in enumerate(folders):
            if not p.is_dir():
                issues.append((f"include_path[{i}]", f"no such folder {str(p)!r}"))
        if ctx.split == "search" and not ctx.allow_public_test_sets:
            for i, t in enumerate(settings.tasks):
                b = public_benchmark(t)
                if b:
                    issues.append((
                        f"tasks[{i}]",
                        f"{t!r} is a public benchmark ({b}) test set: tuning merge coefficients on it overfits "
                        "the benchmark and makes its scores meaningless. Search on a validation split (your own "
                        "task YAML) and report the benchmark as a held-out objective, or set "
                        "allow_public_test_sets: true at the top of the config if you know what you are doing",
                    ))
        if issues:
            return issues
        local = scan_tasks([SHIPPED_TASKS, *folders])
        unknown = [(i, t) for i, t in enumerate(settings.tasks) if t not in local]
        if unknown:
            builtin = builtin_task_names()
            for i, t in unknown:
                if t not in builtin:
                    close = difflib.get_close_matches(t, list(local), n=3, cutoff=0.6)
                    close += [c for c in difflib.get_close_matches(t, list(builtin), n=3, cutoff=0.75) if c not in close]
                    hint = ("; did you mean " + " or ".join(repr(c) for c in close[:4]) + "?") if close else ""
                    issues.append((f"tasks[{i}]", f"unknown lm-eval task {t!r}{hint} (shipped and include_path tasks: "
                                   f"{', '.join(sorted(n for n, e in local.items() if e.kind == 'task')[:12])})"))
        if settings.vllm is not None and settings.engine != "vllm":
            issues.append(("vllm", "vLLM options only apply with engine: vllm; set engine: vllm or remove the section"))
        if settings.metric and not issues:
            for t in settings.tasks:
                entry = local.get(t)
                produced = entry.produced_metrics() if entry else None
                if produced is not None and _normalize_metric(settings.metric, produced) not in produced:
                    issues.append(("metric", f"task {t!r} does not report {settings.metric!r}; it reports: {', '.join(produced)}"))
        return issues

    # ------------------------------------------------------------------ construction
    def __init__(self, settings: EvaluatorSettings, ctx: EvalContext):
        super().__init__(settings, ctx)
        from lm_eval.tasks import TaskManager

        for name in ("lm_eval", "lm-eval"):
            logging.getLogger(name).setLevel(logging.WARNING)
        s = self.settings
        folders = _include_folders(s, ctx)
        local = scan_tasks([SHIPPED_TASKS, *folders])
        include = [str(materialized_shipped_tasks()), *(str(p) for p in folders)]
        tm = TaskManager(include_path=include, include_defaults=any(t not in local for t in s.tasks))
        try:
            loaded = tm.load(list(s.tasks))
        except (KeyError, ValueError) as e:
            raise EvaluationError(f"lm_eval: cannot load tasks {s.tasks}: {e}") from e
        self.task_dict = loaded
        self.tasks: dict[str, Any] = dict(loaded["tasks"])
        for task in self.tasks.values():
            if task.get_config("output_type") == "generate_until" and s.gen_kwargs:
                task.set_config(key="generation_kwargs", value=dict(s.gen_kwargs), update=True)
            if s.num_fewshot is not None:
                task.set_config(key="num_fewshot", value=s.num_fewshot)
            elif task.get_config("num_fewshot") is None:
                task.set_config(key="num_fewshot", value=0)

        # metrics each task reports (metric,filter), from the built task objects
        self.produced: dict[str, list[str]] = {}
        for name, task in self.tasks.items():
            filters = [f.name for f in getattr(task, "_filters", [])] or ["none"]
            metrics = list(getattr(task, "_metric_fn_list", {}))
            self.produced[name] = [f"{m},{f}" for f in filters for m in metrics]
        first = next(iter(self.produced.values()), [])
        self._metric = _normalize_metric(s.metric, first) if s.metric else (first[0] if first else "acc,none")
        self._metric_problem: str | None = None
        for name, prod in self.produced.items():
            if prod and self._metric not in prod:
                self._metric_problem = f"task {name!r} does not report {self._metric!r}; it reports: {', '.join(prod)}"
                break

        # the fixed document subset of each task (same for every trial)
        from search.seeding import derive_seed

        self.samples: dict[str, list[int]] = {}
        self.n_docs: dict[str, int] = {}
        for name, task in self.tasks.items():
            n = len(task.eval_docs)
            self.n_docs[name] = n
            if s.limit is not None and s.limit < n:
                if s.subset == "first":
                    idx = list(range(s.limit))
                else:
                    import numpy as np

                    seed = s.subset_seed if s.subset_seed is not None else derive_seed("lm_eval-subset", ctx.seed, name)
                    idx = sorted(int(i) for i in np.random.default_rng(seed).choice(n, size=s.limit, replace=False))
                self.samples[name] = idx
        self._lm: Any = None
        self._lm_model: Any = None
        self.engine: Any = None
        self._stop_tokens: dict[int, Any] = {}  # generation margins: stop-token ids per tokenizer

    @property
    def metric(self) -> str:
        return self._metric

    @classmethod
    def subset_issue(cls, settings: EvaluatorSettings) -> tuple[str, str] | None:
        metric = str(getattr(settings, "metric", "") or "").split(",")[0]
        if metric in _NOT_PER_DOCUMENT:
            return ("metric", f"{metric!r} has no per-document scores in [0, 1], so it cannot be scored on example subsets; "
                              "remove the fidelity section or use an accuracy-like metric (acc, exact_match)")
        return None

    def _docs(self) -> list[list[int]]:
        """The document ids each task scores (its ``limit`` subset, or all), in task order."""
        return [self.samples.get(n) or list(range(self.n_docs[n])) for n in self.tasks]

    def example_groups(self) -> list[int] | None:
        return [len(d) for d in self._docs()]

    def attach_engine(self, engine: Any) -> None:
        """Run on the worker's vLLM engine (``engine: vllm``); the worker pushes every merge into it."""
        self.engine = engine
        self._lm = None

    def _get_lm(self, model: Any, tokenizer: Any) -> Any:
        if self.settings.engine == "vllm":
            if self.engine is None:
                raise EvaluationError("lm_eval: engine 'vllm' but the worker started no vLLM engine")
            if self._lm is None:
                from .vllm_engine import engine_lm

                self._lm = engine_lm(self.engine, tokenizer, self.settings.batch_size, self.settings.max_length)
            return self._lm
        if self._lm is None or self._lm_model is not model:
            from lm_eval.models.huggingface import HFLM

            # HFLM warns that a model object (not a name) was passed: that is the point here
            hf_log = logging.getLogger("lm_eval.models.huggingface")
            level = hf_log.level
            hf_log.setLevel(logging.ERROR)
            from ._common import model_device

            bs = self.settings.batch_size
            if bs == "auto" and model_device(model).type == "cpu":
                bs = 32  # lm-eval's auto search probes for out-of-memory errors: only meaningful on a GPU
            try:
                self._lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=bs, max_length=self.settings.max_length)
            finally:
                hf_log.setLevel(level)
            if bs == "auto":
                # lm-eval probes again in every generate_until call (forward passes at the
                # longest context until one fits); the model's shape and the device do not
                # change between trials, so probe once per worker and keep the size.
                t0 = time.perf_counter()
                found = int(self._lm._detect_batch_size())
                self._lm.batch_size_per_gpu = found
                log.info("lm_eval: batch size %d (lm-eval's search at the longest context, once per worker: %.1fs)",
                         found, time.perf_counter() - t0)
            self._lm_model = model
        return self._lm

    # ------------------------------------------------------------------ per trial
    def evaluate(self, model: Any, tokenizer: Any, seed: int = 0, examples: Any = None) -> EvalResult:
        if self._metric_problem:
            raise EvaluationError(f"lm_eval: {self._metric_problem}")
        if tokenizer is None:
            raise EvaluationError("lm_eval needs a tokenizer; the model source has none (set models.tokenizer)")
        import numpy as np
        import torch
        from lm_eval.evaluator import evaluate as lm_evaluate

        s = self.settings
        docs = self._docs()
        offsets = np.cumsum([0] + [len(d) for d in docs])
        idx = np.arange(offsets[-1]) if examples is None else np.asarray(examples, dtype=np.int64)
        names = list(self.tasks)
        samples: dict[str, list[int]] | None = dict(self.samples) or None
        task_dict = self.task_dict
        if examples is not None:
            g_of = np.searchsorted(offsets, idx, side="right") - 1
            samples = {n: [docs[g][int(i - offsets[g])] for i in idx[g_of == g]] for g, n in enumerate(names)}
            names = [n for n in names if samples[n]]
            samples = {n: samples[n] for n in names}
            if len(names) < len(self.tasks):  # a task with no document in this subset is not run at all
                task_dict = {"tasks": {n: self.tasks[n] for n in names}, "groups": {}, "group_map": {}}
        for task in self.tasks.values():
            task.set_fewshot_seed(seed=s.fewshot_seed)
        torch.manual_seed(seed)  # only matters for sampling gen_kwargs
        try:
            lm = self._get_lm(model, tokenizer)
            with torch.no_grad(), _quiet_progress_bars():
                out = lm_evaluate(
                    lm=lm,
                    task_dict=task_dict,
                    limit=None,
                    samples=samples,
                    bootstrap_iters=0,
                    log_samples=True,
                    confirm_run_unsafe_code=s.confirm_run_unsafe_code,
                )
        except EvaluationError:
            raise
        except Exception as e:
            raise EvaluationError(f"lm_eval on {list(self.tasks)} failed: {type(e).__name__}: {e}") from e
        if out is None:
            raise EvaluationError("lm_eval returned no results")
        res = self._result(out, names)
        gen_parts = self._add_generation_margins(res, out, lm, names) if res.margins is None else None
        res.examples = self._examples(res, out, idx, names, offsets, gen_parts)
        return res

    def _add_generation_margins(self, res: EvalResult, out: dict[str, Any], lm: Any, names: list[str]) -> list[Any] | None:
        """Greedy exact-match margins from one teacher-forced pass per task
        (evaluators/generation_margins.py), set on ``res`` where they give the objective back;
        lm-eval's HF backend only. Returns each task's margins (None where a task has none) for
        the example subsets, which keep them per task."""
        if not self.settings.generation_margins:
            return None
        if self.settings.engine != "hf":
            log.debug("generation margins: none (engine %r: the teacher-forced pass runs on the HF model)", self.settings.engine)
            return None
        import numpy as np

        from .generation_margins import teacher_forced_margins

        mname, filt = _split_metric(self._metric)
        parts = []
        try:
            with _quiet_progress_bars():
                for n in names:
                    m = teacher_forced_margins(lm, {n: self.tasks[n]}, out.get("samples") or {}, mname, filt, self._stop_tokens)
                    if m is None:
                        return None
                    parts.append(m)
        except Exception as e:  # margins are an extra: the trial's scores stand without them
            log.debug("generation margins: none (%s: %s)", type(e).__name__, e)
            return None
        if len({len(m) for m in parts}) != 1:
            log.debug("generation margins: none for the objective (tasks of different sizes: the objective does not "
                      "weigh documents equally); the example subsets keep them per task")
        elif parts:
            m = np.concatenate(parts)
            if margins_give_back(m, res.metrics[self._metric]):
                res.margins = {self._metric: m}
        return parts

    def _examples(self, res: EvalResult, out: dict[str, Any], idx: Any, names: list[str], offsets: Any,
                  gen_parts: list[Any] | None = None) -> Any:
        """The per-document scores of the metric as :class:`~search.fidelity.Examples` (None
        when a task has no per-document scores in [0, 1] for every scored document), with each
        document's multiple-choice margin, or its greedy exact-match margin (``gen_parts``, per
        task), where every task has them (per task: the objective's weighting of tasks is the
        examples' groups)."""
        import numpy as np

        from search.fidelity import Examples

        per = res.per_sample or {}
        if any(n not in per for n in names):
            return None
        vals = np.concatenate([per[n] for n in names]) if names else np.zeros(0)
        if len(vals) != len(idx):
            return None
        group = np.searchsorted(offsets, idx, side="right") - 1
        mname, filt = _split_metric(self._metric)
        parts = [_choice_margins(out.get("samples") or {}, {n: self.tasks[n]}, mname, filt) for n in names]
        m = np.concatenate(parts) if parts and all(p is not None for p in parts) else None
        if m is None and gen_parts is not None and len(gen_parts) == len(names):  # greedy exact-match margins
            m = np.concatenate(gen_parts) if gen_parts else None
        return Examples.of(idx, vals, group=group, margin=m if m is not None and len(m) == len(idx) else None)

    def _result(self, out: dict[str, Any], names: list[str] | None = None) -> EvalResult:
        import numpy as np

        names = list(self.tasks) if names is None else names
        results = out.get("results", {})
        metrics: dict[str, float] = {}
        per_task: list[float] = []
        for name in names:
            res = results.get(name)
            if res is None:
                raise EvaluationError(f"lm_eval produced no results for task {name!r}")
            for k, v in res.items():
                if k in ("alias", "sample_len", "sample_count") or "_stderr" in k or isinstance(v, (str, bool)) or v is None:
                    continue
                if isinstance(v, (int, float)):
                    metrics[f"{name}/{k}"] = float(v)
            if self._metric not in res:
                produced = [k for k in res if k not in ("alias", "sample_len", "sample_count") and "_stderr" not in k]
                raise EvaluationError(f"lm_eval: task {name!r} does not report {self._metric!r}; it reports: {', '.join(produced)}")
            per_task.append(float(res[self._metric]))
        metrics[self._metric] = float(np.mean(per_task))
        require_finite({self._metric: metrics[self._metric]}, f"lm_eval {list(self.tasks)}")

        per_sample: dict[str, np.ndarray] = {}
        mname, filt = _split_metric(self._metric)
        for name, rows in (out.get("samples") or {}).items():
            if name not in names:
                continue
            rows = sorted((r for r in rows if r.get("filter") == filt), key=lambda r: r["doc_id"])
            try:
                vals = np.array([float(r[mname]) for r in rows], dtype=np.float64)
            except (KeyError, TypeError, ValueError):
                continue
            if len(vals) and np.all(np.isfinite(vals)) and vals.min() >= 0.0 and vals.max() <= 1.0:
                per_sample[name] = vals
        margins = _choice_margins(out.get("samples") or {}, {n: self.tasks[n] for n in names}, mname, filt)
        if margins is not None and not margins_give_back(margins, metrics[self._metric]):
            margins = None  # the objective is not the fraction of these examples right (e.g. a group's weighting)
        info = {
            "n_docs": {n: len(self.samples.get(n, [])) or self.n_docs[n] for n in self.tasks},
            "subset": {n: idx for n, idx in self.samples.items()},
        }
        return EvalResult(metrics=metrics, per_sample=per_sample or None, info=info,
                          margins={self._metric: margins} if margins is not None else None)

    def close(self) -> None:
        self._lm = None
        self._lm_model = None


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """Silence lm-eval's per-trial tqdm bars (request building, generation): a search runs
    hundreds of evaluations and has its own progress bar. lm-eval passes ``disable=`` itself,
    so the module-level ``tqdm`` names are swapped for one that forces ``disable=True``."""
    import importlib

    from tqdm import tqdm as _tqdm

    def silent(*args: Any, **kwargs: Any) -> Any:
        kwargs["disable"] = True
        return _tqdm(*args, **kwargs)

    saved = []
    for name in ("lm_eval.api.task", "lm_eval.models.huggingface", "lm_eval.models.vllm_causallms", "lm_eval.api.model",
                 "lm_eval.evaluator"):
        try:  # the vLLM backend only when it is in use (importing it needs vllm)
            mod = sys.modules.get(name) if name.endswith("vllm_causallms") else importlib.import_module(name)
        except ImportError:
            continue
        if mod is None:
            continue
        if hasattr(mod, "tqdm"):
            saved.append((mod, mod.tqdm))
            mod.tqdm = silent
    try:
        yield
    finally:
        for mod, orig in saved:
            mod.tqdm = orig
