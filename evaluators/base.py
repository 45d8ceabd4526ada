"""The evaluator protocol.

An evaluator is built once per worker (``__init__``: load data, build tasks, tokenize) and then
called once per trial with the live merged model, whose weights changed in place since the
last call (``evaluate``). It must hold no state that depends on the weights between calls.

Hooks:

* ``Settings``: pydantic schema of the objective's ``settings`` mapping (validated by
  ``search validate`` without loading models; modules import torch/lm_eval lazily).
* ``check(settings, ctx)`` (classmethod): extra checks that need files or registries but
  no model (task names resolve, data files exist); returns ``(field, message)`` pairs.
* ``metric``: the metric name whose value is the objective value.
* ``evaluate(model, tokenizer, seed)``: returns :class:`EvalResult`. Raising, or returning a
  NaN/inf objective value, makes the trial FAIL with that message; the run goes on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict


class EvaluatorSettings(BaseModel):
    """Base of every evaluator's settings schema."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class EvalContext:
    """Where an evaluator runs: paths resolve against ``base_dir``; ``split`` tells search vs held-out."""

    base_dir: Path = field(default_factory=Path.cwd)
    device: str = "cpu"
    seed: int = 0
    split: Literal["search", "heldout"] = "search"
    allow_public_test_sets: bool = False

    def resolve(self, p: str | Path) -> Path:
        p = Path(p).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)


@dataclass
class EvalResult:
    """Named metrics; optional per-example scores in [0, 1] keyed by task/subset.

    ``margins``: for a metric that is a fraction of examples right (an accuracy), the
    per-example margins behind it, keyed by the metric's name: ``metrics[k] ==
    mean(margins[k] > 0)`` exactly (for a classifier: the true class's logit minus the
    largest other logit). Margins are smooth in the merge coefficients where the accuracy
    is a step function, so model-based strategies (``mobo``) predict the accuracy from them.
    """

    metrics: dict[str, float]
    per_sample: dict[str, np.ndarray] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    margins: dict[str, np.ndarray] | None = None


class EvaluationError(Exception):
    """An evaluation failed for this trial (recorded as FAIL with this message)."""


class Evaluator(ABC):
    name: ClassVar[str]
    Settings: ClassVar[type[EvaluatorSettings]] = EvaluatorSettings

    def __init__(self, settings: EvaluatorSettings, ctx: EvalContext):
        self.settings = settings
        self.ctx = ctx

    @property
    @abstractmethod
    def metric(self) -> str:
        """Name of the metric reported as the objective value."""

    @abstractmethod
    def evaluate(self, model: Any, tokenizer: Any, seed: int = 0) -> EvalResult: ...

    @classmethod
    def check(cls, settings: EvaluatorSettings, ctx: EvalContext) -> list[tuple[str, str]]:
        return []

    def close(self) -> None:  # noqa: B027 - an optional hook, deliberately a no-op by default
        """Release resources (optional)."""
