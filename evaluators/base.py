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
* ``evaluate(model, tokenizer, seed, examples=None)``: returns :class:`EvalResult`. Raising,
  or returning a NaN/inf objective value, makes the trial FAIL with that message; the run goes on.

Example subsets (``fidelity`` in the config, docs/fidelity.md). An evaluator that can score
a subset of its examples says how many it has with ``example_groups()`` (sizes of its
groups of examples, e.g. one per lm-eval task; their concatenation is numbered 0..N-1) and
takes ``examples``: a sorted integer array of indices into that numbering. It then scores
exactly those examples, computes its metrics on them, and returns their per-example results
in :attr:`EvalResult.examples` (a :class:`search.fidelity.Examples` in the same order, whose
``combine`` gives the objective metric back). ``examples=None`` means every example (the
evaluator should still fill ``EvalResult.examples`` when it can: the store counts them).
``subset_issue(settings)`` (classmethod) says why an objective cannot be scored on subsets
(``(field, message)``) or None; ``search validate`` refuses fidelity with it. The default is
the refusal, so an evaluator that does not implement subsets is never given any.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from search.fidelity import Examples


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
    examples: Examples | None = None  # per-example results of the objective metric (see the module docstring)


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
    def evaluate(self, model: Any, tokenizer: Any, seed: int = 0, examples: np.ndarray | None = None) -> EvalResult: ...

    @classmethod
    def check(cls, settings: EvaluatorSettings, ctx: EvalContext) -> list[tuple[str, str]]:
        return []

    @classmethod
    def subset_issue(cls, settings: EvaluatorSettings) -> tuple[str, str] | None:
        """Why this objective cannot be scored on example subsets, or None when it can."""
        return ("", f"evaluator {cls.name!r} cannot score example subsets (it takes no 'examples' argument); "
                    "remove the fidelity section or use an evaluator that can")

    def example_groups(self) -> list[int] | None:
        """Sizes of the groups of examples ``examples`` indexes (None: no subsets)."""
        return None

    def close(self) -> None:  # noqa: B027 - an optional hook, deliberately a no-op by default
        """Release resources (optional)."""
