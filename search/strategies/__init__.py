"""Search strategies, found by name. See :mod:`search.strategies.base` for the protocol."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from ..errors import ConfigIssue
from ..registry import Registry
from .base import Candidate, Objective, Problem, Strategy, StrategyOptions, TrialResult

if TYPE_CHECKING:
    from ..config import SearchConfig

STRATEGIES: Registry[type[Strategy]] = Registry(
    "strategy",
    {
        "random": "search.strategies.random:RandomStrategy",
        "sobol": "search.strategies.random:SobolStrategy",
        "cmaes": "search.strategies.cmaes:CMAESStrategy",
        "nsga2": "search.strategies.nsga2:NSGA2Strategy",
        "map": "search.strategies.map:MAPStrategy",
        "m2n2": "search.strategies.m2n2:M2N2Strategy",
        "optuna": "search.strategies.optuna:OptunaStrategy",
        "mobo": "search.strategies.mobo:MOBOStrategy",
        "turbo": "search.strategies.turbo:TurboStrategy",
    },
    group="mergesearch.strategies",
)


def validate_options(name: str, options: dict[str, Any], cfg: SearchConfig | None = None) -> list[ConfigIssue]:
    """Check ``strategy.options`` against the strategy's Options schema."""
    from ..config import pydantic_issues

    try:
        cls = STRATEGIES.get(name)
    except ImportError as e:  # a strategy module failed to import: report, do not crash
        return [ConfigIssue("strategy.name", f"strategy {name!r} cannot be loaded: {e}")]
    try:
        opts = cls.Options(**options)
    except ValidationError as e:
        return pydantic_issues(e, cls.Options, prefix="strategy.options")
    info: dict[str, Any] = {}
    if cfg is not None:
        info = {"n_objectives": len(cfg.objectives), "n_experts": len(cfg.models.experts), "config": cfg}
    return [ConfigIssue("strategy.options", m) for m in cls.check(opts, info)]


__all__ = [
    "STRATEGIES",
    "Candidate",
    "Objective",
    "Problem",
    "Strategy",
    "StrategyOptions",
    "TrialResult",
    "validate_options",
]
