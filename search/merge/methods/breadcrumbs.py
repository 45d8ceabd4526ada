"""``breadcrumbs``: drop the largest and the smallest magnitudes, then task arithmetic
(mergekit's ``magnitude_outliers`` ranks).

n = numel, n_keep = int(d_t n), n_top = int(g_t n); if n_top + n_keep > n then
n_top = n - n_keep. Drop the n_top largest |tau_t| (entries >= the n_top-th largest; none if
n_top = 0) and everything below the (n_top + n_keep)-th largest, i.e. keep the band of ranks
(n_top, n_top + n_keep]; n_keep = 0 drops the expert. So the kept share of the whole tensor
is d_t. Then theta_0 + lambda * sum_t w_t kept_t.
"""

from __future__ import annotations

from typing import Any

from ..tensorplan import TensorPlan, breadcrumbs_ranks
from .base import MAGNITUDE_TIE_NOTE, ROUNDING_NOTE, MergeMethod, RecipeContext


class Breadcrumbs(MergeMethod):
    name = "breadcrumbs"
    params = {"weight": 1.0, "density": 0.9, "gamma": 0.01}
    bounds = {"density": (0.0, 1.0), "gamma": (0.0, 1.0)}
    options = {"lambda": 1.0}
    kept_param = "density"
    trim = ("density", "gamma")
    magnitude_trim = True
    mergekit = "breadcrumbs"
    summary = "per tensor drop the top-gamma outliers and all below the top-density, then task arithmetic"

    def plan(self, options, vals, numel, *, kth=None, pretrimmed=False, **_: Any) -> TensorPlan:
        lam = float(options.get("lambda", 1.0))
        tp = TensorPlan.start(vals["weight"], [lam * float(x) for x in vals["weight"]])
        for t in range(len(tp.weights)):
            n_top, n_keep = breadcrumbs_ranks(vals["density"][t], vals["gamma"][t], numel)
            if n_keep <= 0:
                tp.coeffs[t] = 0.0
                continue
            if pretrimmed:
                continue
            if kth is None:
                raise ValueError("breadcrumbs needs magnitude thresholds (kth)")
            if n_top + n_keep < numel:
                tp.lo[t] = kth(t, n_top + n_keep)
            if n_top > 0:
                tp.hi[t] = kth(t, n_top)
        return tp

    def reference(self, base, taus, vals, options, *, name="", seed=0):
        import numpy as np

        from .reference import band_keep, weighted_sum

        kept = [np.where(band_keep(t, vals["density"][i], vals["gamma"][i]), t.reshape(-1).astype(np.float64), 0.0)
                for i, t in enumerate(taus)]
        return base.reshape(-1).astype(np.float64) + float(options["lambda"]) * weighted_sum(vals["weight"], kept)

    def recipe_notes(self, ctx: RecipeContext) -> list[tuple[str, bool]]:
        return [(MAGNITUDE_TIE_NOTE, False), (ROUNDING_NOTE, False)]


BREADCRUMBS = Breadcrumbs()
