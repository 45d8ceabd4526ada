"""``task_arithmetic``: theta_0 + lambda * sum_t w_t tau_t."""

from __future__ import annotations

from typing import Any

from ..tensorplan import TensorPlan
from .base import ROUNDING_NOTE, MergeMethod, RecipeContext


class TaskArithmetic(MergeMethod):
    name = "task_arithmetic"
    params = {"weight": 1.0}
    options = {"lambda": 1.0}
    mergekit = "task_arithmetic"
    summary = "theta_0 + lambda * sum_t w_t tau_t"

    def plan(self, options, vals, numel, **_: Any) -> TensorPlan:
        lam = float(options.get("lambda", 1.0))
        return TensorPlan.start(vals["weight"], [lam * float(x) for x in vals["weight"]])

    def reference(self, base, taus, vals, options, *, name="", seed=0):
        from .reference import weighted_sum

        return base.reshape(-1).astype("float64") + float(options["lambda"]) * weighted_sum(vals["weight"], taus)

    def recipe_notes(self, ctx: RecipeContext) -> list[tuple[str, bool]]:
        return [(ROUNDING_NOTE, False)]


TASK_ARITHMETIC = TaskArithmetic()
