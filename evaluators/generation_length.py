"""Mean number of generated tokens on a prompt set: a cost objective (minimise ``mean_tokens``).

Prompts come from a local file (``path``: ``.txt`` one prompt per non-empty line, ``.jsonl``
the string field ``prompt_field``) or from an lm-eval task (``task``: its documents'
``doc_to_text``, zero-shot; shipped tasks and ``include_path`` folders as in the ``lm_eval``
evaluator; the task's ``until`` strings are the default stop strings).

Generation is greedy, batched with left padding, at most ``max_new_tokens`` new tokens.
The length of one answer is the number of generated tokens before the first EOS token; when
a stop string (``stop``) appears first, the answer is the text before it and its length is
that text's token count. Answers that hit ``max_new_tokens`` count as that many.

Metrics: ``mean_tokens`` (objective by default), ``max_tokens``, ``truncated`` (fraction of
answers that hit ``max_new_tokens``). No per-sample scores (counts do not lie in [0, 1]).
Example subsets (``fidelity``): the examples are the prompts (``combine``: ``mean`` for
``mean_tokens`` and ``truncated``, ``max`` for ``max_tokens``).

Failures: an exception during generation or a non-finite metric raises
:class:`~evaluators.base.EvaluationError`; the trial is recorded as FAIL.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from ._common import check_data_file, model_device, read_texts, require_finite
from .base import EvalContext, EvalResult, EvaluationError, Evaluator, EvaluatorSettings


class GenerationLengthSettings(EvaluatorSettings):
    path: str | None = Field(None, description=".txt or .jsonl file of prompts")
    prompt_field: str = Field("prompt", description="jsonl field holding the prompt")
    task: str | None = Field(None, description="an lm-eval task whose prompts to use (instead of path)")
    include_path: list[str] = Field(default_factory=list, description="folders with task YAMLs")
    max_new_tokens: int = Field(64, gt=0)
    stop: list[str] | None = Field(None, description="stop strings (default: the task's 'until', else none)")
    batch_size: int = Field(16, gt=0)
    limit: int | None = Field(None, gt=0, description="use only the first N prompts")
    add_special_tokens: bool = True
    metric: Literal["mean_tokens", "max_tokens", "truncated"] = "mean_tokens"

    @model_validator(mode="after")
    def _one_source(self) -> GenerationLengthSettings:
        if (self.path is None) == (self.task is None):
            raise ValueError("give exactly one prompt source: path (a .txt/.jsonl file) or task (an lm-eval task)")
        return self


class GenerationLengthEvaluator(Evaluator):
    name: ClassVar[str] = "generation_length"
    Settings: ClassVar[type[EvaluatorSettings]] = GenerationLengthSettings
    settings: GenerationLengthSettings

    @classmethod
    def check(cls, settings: EvaluatorSettings, ctx: EvalContext) -> list[tuple[str, str]]:
        assert isinstance(settings, GenerationLengthSettings)
        if settings.path is not None:
            return check_data_file(settings.path, ctx)
        from .lm_eval import LMEvalEvaluator, LMEvalSettings

        sub = LMEvalSettings(tasks=[settings.task], include_path=settings.include_path)
        return [("task" if f.startswith("tasks") else f, m) for f, m in LMEvalEvaluator.check(sub, ctx)]

    def __init__(self, settings: EvaluatorSettings, ctx: EvalContext):
        super().__init__(settings, ctx)
        s = self.settings
        stop = s.stop
        if s.path is not None:
            prompts = read_texts(ctx.resolve(s.path), field=s.prompt_field, per_line=True)
        else:
            prompts, until = _task_prompts(s.task or "", [ctx.resolve(p) for p in s.include_path])
            if stop is None:
                stop = until
        self.prompts = prompts[: s.limit] if s.limit else prompts
        self.stop = [x for x in (stop or []) if x]

    @property
    def metric(self) -> str:
        return self.settings.metric

    @classmethod
    def subset_issue(cls, settings: EvaluatorSettings) -> tuple[str, str] | None:
        return None

    def example_groups(self) -> list[int] | None:
        return [len(self.prompts)]

    def answer_lengths(self, model: Any, tokenizer: Any, prompts: list[str] | None = None) -> tuple[list[int], list[bool]]:
        """Token count of each prompt's greedy answer (all prompts, or ``prompts``), and whether it hit ``max_new_tokens``."""
        import torch

        s = self.settings
        prompts = self.prompts if prompts is None else prompts
        eos = tokenizer.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos_ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos]) - {None}
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos_ids), 0)
        device = model_device(model)
        lengths: list[int] = []
        truncated: list[bool] = []
        old_side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        try:
            for b in range(0, len(prompts), s.batch_size):
                chunk = prompts[b : b + s.batch_size]
                enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=s.add_special_tokens)
                enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
                kwargs: dict[str, Any] = {}
                if self.stop:
                    kwargs = {"stop_strings": self.stop, "tokenizer": tokenizer}
                with torch.no_grad():
                    out = model.generate(
                        **enc, max_new_tokens=s.max_new_tokens, do_sample=False, pad_token_id=pad,
                        eos_token_id=sorted(eos_ids) or None, **kwargs,
                    )
                new = out[:, enc["input_ids"].shape[1] :].tolist()
                for toks in new:
                    n, hit_eos = len(toks), False
                    for i, t in enumerate(toks):
                        if t in eos_ids:
                            n, hit_eos = i, True
                            break
                    toks = toks[:n]
                    cut = None
                    if self.stop:
                        text = tokenizer.decode(toks, skip_special_tokens=True)
                        hits = [text.find(x) for x in self.stop if x in text]
                        if hits:
                            cut = text[: min(hits)]
                    if cut is not None:
                        lengths.append(len(tokenizer(cut, add_special_tokens=False)["input_ids"]) if cut else 0)
                        truncated.append(False)
                    else:
                        lengths.append(n)
                        truncated.append(not hit_eos and n >= s.max_new_tokens)
        finally:
            tokenizer.padding_side = old_side
        return lengths, truncated

    def evaluate(self, model: Any, tokenizer: Any, seed: int = 0, examples: Any = None) -> EvalResult:
        if tokenizer is None:
            raise EvaluationError("generation_length needs a tokenizer; the model source has none (set models.tokenizer)")
        import numpy as np

        from search.fidelity import Examples

        idx = np.arange(len(self.prompts)) if examples is None else np.asarray(examples, dtype=np.int64)
        try:
            lengths, truncated = self.answer_lengths(model, tokenizer, [self.prompts[i] for i in idx])
        except EvaluationError:
            raise
        except Exception as e:
            raise EvaluationError(f"generation_length failed: {type(e).__name__}: {e}") from e
        metrics = {
            "mean_tokens": sum(lengths) / len(lengths),
            "max_tokens": float(max(lengths)),
            "truncated": sum(truncated) / len(truncated),
        }
        require_finite(metrics, "generation_length")
        m = self.settings.metric
        ex = Examples.of(idx, truncated if m == "truncated" else lengths, combine="max" if m == "max_tokens" else "mean")
        return EvalResult(metrics=metrics, per_sample=None, info={"prompts": len(lengths)}, examples=ex)


def _task_prompts(task: str, include: list[Any]) -> tuple[list[str], list[str]]:
    """Zero-shot prompts of an lm-eval task and its ``until`` stop strings."""
    from lm_eval.tasks import TaskManager

    from .lm_eval_tasks import SHIPPED_TASKS, materialized_shipped_tasks, scan_tasks

    local = scan_tasks([SHIPPED_TASKS, *include])
    tm = TaskManager(include_path=[str(materialized_shipped_tasks()), *map(str, include)], include_defaults=task not in local)
    try:
        tasks = tm.load([task])["tasks"]
    except (KeyError, ValueError) as e:
        raise EvaluationError(f"generation_length: cannot load task {task!r}: {e}") from e
    prompts: list[str] = []
    until: list[str] = []
    for t in tasks.values():
        for doc in t.eval_docs:
            text = t.doc_to_text(doc)
            if not isinstance(text, str):
                raise EvaluationError(f"generation_length: task {task!r} does not give text prompts")
            prompts.append(text)
        gk = t.get_config("generation_kwargs") or {}
        u = gk.get("until") or []
        until += [u] if isinstance(u, str) else list(u)
    if not prompts:
        raise EvaluationError(f"generation_length: task {task!r} has no documents")
    return prompts, until
