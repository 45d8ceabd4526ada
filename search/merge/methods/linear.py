"""``linear``: a weighted average of the experts.

theta_0 + sum_t w_t tau_t / sum_t w_t with ``normalize`` (the default). If |sum_t w_t| < 1e-12
the result is theta_0. Without normalize: theta_0 + sum_t w_t tau_t.
"""

from __future__ import annotations

import math
from typing import Any

from ...errors import ConfigIssue
from ..tensorplan import TensorPlan
from .base import MergeMethod, RecipeContext


class Linear(MergeMethod):
    name = "linear"
    params = {"weight": 1.0}
    options = {"normalize": True}
    mergekit = "linear"
    task_vectors = False
    summary = "theta_0 + sum_t w_t tau_t / sum_t w_t (a weighted average of the experts)"

    def check(self, search, params):
        issues = super().check(search, params)
        if "weight" in search and search["weight"][0] < 0:
            issues.append(ConfigIssue("merge.search.weight", "linear normalises by the sum of weights; use bounds >= 0"))
        return issues

    def plan(self, options, vals, numel, **_: Any) -> TensorPlan:
        tp = TensorPlan.start(vals["weight"])
        if options.get("normalize", True):
            W = math.fsum(tp.weights)
            tp.coeffs = [0.0] * len(tp.weights) if abs(W) < 1e-12 else [x / W for x in tp.weights]
        return tp

    def reference(self, base, taus, vals, options, *, name="", seed=0):
        from .reference import weighted_sum

        b = base.reshape(-1).astype("float64")
        s = weighted_sum(vals["weight"], taus)
        if options["normalize"]:
            W = sum(float(w) for w in vals["weight"])
            return b if abs(W) < 1e-12 else b + s / W
        return b + s

    def recipe_base_weight(self, options):
        return not bool(options.get("normalize", True))  # theta_0 + sum w tau = (1 - sum w) theta_0 + sum w theta

    def mergekit_parameters(self, options):
        return {"normalize": bool(options.get("normalize", True))}

    def recipe_notes(self, ctx: RecipeContext) -> list[tuple[str, bool]]:
        notes: list[tuple[str, bool]] = []
        W = ctx.values["weight"].sum(axis=1)
        zero = [ctx.groups[g] for g in range(len(ctx.groups)) if abs(W[g]) < 1e-12]
        if zero and bool(ctx.options.get("normalize", True)):
            notes.append((
                f"the weights of group(s) {', '.join(zero)} sum to 0: this merge keeps the base there, mergekit "
                "would divide by 0", True,
            ))
        notes.append((
            "linear: mergekit averages the expert weights directly rather than adding averaged task vectors to "
            "the base; the two agree up to float rounding", False,
        ))
        return notes


LINEAR = Linear()
