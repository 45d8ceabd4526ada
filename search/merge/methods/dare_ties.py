"""``dare_ties``: the DARE drop and rescale of ``dare_linear``, then the TIES election and
disjoint mean of ``ties`` on D_t = w_t * dare_t (divisor: the agreeing *weights* w_t)."""

from __future__ import annotations

from typing import Any

from ..tensorplan import TensorPlan
from .dare_linear import DareLinear


class DareTies(DareLinear):
    name = "dare_ties"
    options = {"lambda": 1.0, "normalize": True, "rescale": "inverse"}
    mergekit = "dare_ties"
    summary = "random drop (keep prob = density) with rescaling, then TIES sign election"

    def plan(self, options, vals, numel, *, name="", seed=0, l1=None, **_: Any) -> TensorPlan:
        return self.dare_plan(options, vals, name=name, seed=seed, l1=l1, elect=True,
                              normalize=bool(options.get("normalize", True)), lam=float(options.get("lambda", 1.0)))

    def reference(self, base, taus, vals, options, *, name="", seed=0):
        from .reference import elect

        kept = self.dropped(taus, vals, options, name, seed)
        return base.reshape(-1).astype("float64") + float(options["lambda"]) * elect(kept, vals["weight"], options["normalize"])


DARE_TIES = DareTies()
