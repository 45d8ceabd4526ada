"""Evaluators compute objective values of a merged model. Found by name in ``EVALUATORS``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from search.errors import ConfigIssue
from search.registry import Registry

from .base import EvalContext, EvalResult, EvaluationError, Evaluator, EvaluatorSettings

if TYPE_CHECKING:
    from search.config import SearchConfig

EVALUATORS: Registry[type[Evaluator]] = Registry(
    "evaluator",
    {
        "lm_eval": "evaluators.lm_eval:LMEvalEvaluator",
        "perplexity": "evaluators.perplexity:PerplexityEvaluator",
        "generation_length": "evaluators.generation_length:GenerationLengthEvaluator",
        "python": "evaluators.python:PythonEvaluator",
        "classification": "evaluators.classification:ClassificationEvaluator",
    },
    group="mergesearch.evaluators",
)


def context_for(cfg: SearchConfig | None, split: str = "search", device: str = "cpu") -> EvalContext:
    from pathlib import Path

    if cfg is None:
        return EvalContext(split=split, device=device)  # type: ignore[arg-type]
    return EvalContext(
        base_dir=Path(cfg.base_dir),
        device=device,
        seed=cfg.seed,
        split=split,  # type: ignore[arg-type]
        allow_public_test_sets=cfg.allow_public_test_sets,
    )


def validate_settings(name: str, settings: dict[str, Any], path: str, cfg: SearchConfig | None = None) -> list[ConfigIssue]:
    """Schema + ``check`` of one objective's evaluator settings; issues carry field paths under
    ``path`` (``objectives[i].settings`` or ``.heldout``), an evaluator that cannot be loaded
    names ``objectives[i].evaluator``."""
    from search.config import pydantic_issues

    try:
        cls = EVALUATORS.get(name)
    except ImportError as e:
        return [ConfigIssue(path.rsplit(".", 1)[0] + ".evaluator", f"evaluator {name!r} cannot be loaded: {e}")]
    try:
        s = cls.Settings(**settings)
    except ValidationError as e:
        return pydantic_issues(e, cls.Settings, prefix=path)
    ctx = context_for(cfg, split="heldout" if path.endswith("heldout") else "search")
    return [ConfigIssue(f"{path}.{f}" if f else path, m) for f, m in cls.check(s, ctx)]


def build_evaluator(name: str, settings: dict[str, Any], ctx: EvalContext) -> Evaluator:
    cls = EVALUATORS.get(name)
    return cls(cls.Settings(**settings), ctx)


__all__ = [
    "EVALUATORS",
    "EvalContext",
    "EvalResult",
    "EvaluationError",
    "Evaluator",
    "EvaluatorSettings",
    "build_evaluator",
    "context_for",
    "validate_settings",
]
