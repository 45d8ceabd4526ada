"""``python``: any objective as a Python callable named explicitly in the config.

Settings::

    function: "package.module:function"   # called as function(model, tokenizer, **kwargs)
    metric: "accuracy"                     # which returned metric is the objective value
    kwargs: {}                             # extra keyword arguments

The function returns ``dict[str, float]``, or ``(metrics, per_sample)`` where ``per_sample``
maps a name to per-example scores in [0, 1] (M2N2 uses them), or ``(metrics, per_sample,
margins)`` where ``margins`` maps an accuracy-like metric to per-example margins with
``metrics[k] == mean(margins[k] > 0)`` (e.g. the true class's logit minus the best other;
``mobo`` predicts the metric from them).

Example subsets (``fidelity``): set ``n_examples`` to the number of examples the function
scores; it is then called as ``function(model, tokenizer, examples=[...], **kwargs)`` with
a sorted list of indices in ``range(n_examples)``, scores exactly those, and returns
``per_sample[metric]``: each listed example's value of the metric (in [0, 1], in that
order), whose mean is the metric. Nothing from a config runs
unless the config names ``module:function`` here (or in ``models.factory``). A function that
raises, or returns a NaN/inf metric, fails the trial with that message; the run goes on.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from .base import EvalContext, EvalResult, EvaluationError, Evaluator, EvaluatorSettings


class PythonSettings(EvaluatorSettings):
    function: str = Field(description="'module:function' called as function(model, tokenizer, **kwargs)")
    metric: str = Field("value", description="the returned metric used as the objective value")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    n_examples: int | None = Field(None, gt=0, description="examples the function scores; needed for fidelity (it then gets examples=[...])")

    @field_validator("function")
    @classmethod
    def _spec(cls, v: str) -> str:
        mod, sep, attr = v.partition(":")
        if not sep or not mod or not attr:
            raise ValueError(f"function {v!r} is not 'module:function' (e.g. 'mypkg.scores:accuracy')")
        return v


class PythonEvaluator(Evaluator):
    name = "python"
    Settings = PythonSettings

    def __init__(self, settings: PythonSettings, ctx: EvalContext):
        super().__init__(settings, ctx)
        from search.registry import import_object

        try:
            self._fn = import_object(settings.function)
        except (ImportError, AttributeError) as e:
            raise EvaluationError(f"cannot import {settings.function!r}: {e}") from None

    @property
    def metric(self) -> str:
        return self.settings.metric

    @classmethod
    def check(cls, settings: PythonSettings, ctx: EvalContext) -> list[tuple[str, str]]:
        mod = settings.function.partition(":")[0]
        try:
            found = importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return [("function", f"module {mod!r} cannot be found; is it installed or on PYTHONPATH?")]
        return []

    @classmethod
    def subset_issue(cls, settings: EvaluatorSettings) -> tuple[str, str] | None:
        assert isinstance(settings, PythonSettings)
        if settings.n_examples is None:
            return ("n_examples", "fidelity needs the number of examples the function scores: set n_examples, and let the "
                    "function take examples=[...] and return per_sample[metric] for them (docs/fidelity.md)")
        return None

    def example_groups(self) -> list[int] | None:
        return [self.settings.n_examples] if self.settings.n_examples else None

    def evaluate(self, model: Any, tokenizer: Any, seed: int = 0, examples: Any = None) -> EvalResult:
        kw = dict(self.settings.kwargs)
        if examples is not None:
            kw["examples"] = [int(i) for i in examples]
        try:
            out = self._fn(model, tokenizer, **kw)
        except EvaluationError:
            raise
        except Exception as e:  # noqa: BLE001 - whatever the user's function raises fails this trial only
            raise EvaluationError(f"{self.settings.function} raised {type(e).__name__}: {e}") from e
        per: dict[str, np.ndarray] | None = None
        margins_raw: dict[str, Any] | None = None
        if isinstance(out, tuple) and len(out) == 3:
            out, per_raw, margins_raw = out
            out = (out, per_raw)
        if isinstance(out, tuple) and len(out) == 2:
            out, per_raw = out
            per = {str(k): np.asarray(v, dtype=np.float32) for k, v in (per_raw or {}).items()}
            for k, v in per.items():
                if v.size and not (np.all(np.isfinite(v)) and v.min() >= 0 and v.max() <= 1):
                    raise EvaluationError(f"{self.settings.function}: per-sample scores {k!r} must lie in [0, 1]")
        if not isinstance(out, dict):
            raise EvaluationError(f"{self.settings.function} returned {type(out).__name__}; expected dict[str, float]")
        metrics = {str(k): float(v) for k, v in out.items()}
        if self.metric not in metrics:
            raise EvaluationError(
                f"{self.settings.function} returned no metric {self.metric!r} (it returned: {', '.join(sorted(metrics)) or 'nothing'}); set settings.metric"
            )
        from ._common import margins_give_back, require_finite

        require_finite({self.metric: metrics[self.metric]}, self.settings.function)
        margins: dict[str, np.ndarray] = {}
        for k, v in (margins_raw or {}).items():
            m = np.asarray(v, dtype=np.float64).ravel()
            if str(k) not in metrics:
                raise EvaluationError(f"{self.settings.function}: margins for {k!r}, which is not a returned metric")
            if not margins_give_back(m, metrics[str(k)]):
                raise EvaluationError(
                    f"{self.settings.function}: margins[{k!r}] must be per-example margins with {k} == mean(margins > 0) "
                    f"(got mean {float((m > 0).mean()) if m.size else float('nan'):.6g} for {k} = {metrics[str(k)]:.6g}); return no margins for other metrics"
                )
            margins[str(k)] = m
        ex = None
        vals = (per or {}).get(self.metric)
        if examples is not None or self.settings.n_examples:
            from search.fidelity import Examples

            idx = np.asarray(examples if examples is not None else range(self.settings.n_examples or 0), dtype=np.int64)
            if vals is None or len(vals) != len(idx):
                raise EvaluationError(
                    f"{self.settings.function}: with n_examples set, return per_sample[{self.metric!r}] with one value per "
                    f"scored example ({len(idx)}); got {'none' if vals is None else len(vals)}"
                )
            m = margins.get(self.metric)
            ex = Examples.of(idx, vals, margin=m if m is not None and len(m) == len(idx) else None)
        return EvalResult(metrics=metrics, per_sample=per or None, margins=margins or None, examples=ex)
