"""``ties``: trim each task vector to its top-density magnitudes, elect a sign, disjoint mean.

mergekit-compatible (mergekit 0.1.5 gave the same tensors bit for bit; docs/facts.md).
k_t = int(d_t * numel). Keep the entries of tau_t with |tau_t| >= the k_t-th largest |tau_t|
(k_t = 0: nothing kept; k_t >= numel: everything kept). Weighted deltas D_t = w_t * kept_t.
Elected sign E = +1 where sum_t D_t >= 0, else -1. An entry of D_t *agrees* when
sign(D_t) == E (zeros never agree). merged = sum_t D_t [agree_t]; with ``normalize``
(default) divide by sum_t w_t [agree_t] (0 -> 1). theta_0 + lambda * merged.
"""

from __future__ import annotations

from typing import Any

from ..tensorplan import TensorPlan, ties_k
from .base import MAGNITUDE_TIE_NOTE, ROUNDING_NOTE, MergeMethod, RecipeContext


class Ties(MergeMethod):
    name = "ties"
    params = {"weight": 1.0, "density": 0.5}
    bounds = {"density": (0.0, 1.0)}
    options = {"lambda": 1.0, "normalize": True}
    kept_param = "density"
    trim = ("density",)
    magnitude_trim = True
    mergekit = "ties"
    summary = "per-tensor top-k trim at density, sign election on weighted deltas, disjoint mean"

    def plan(self, options, vals, numel, *, kth=None, pretrimmed=False, **_: Any) -> TensorPlan:
        tp = TensorPlan.start(vals["weight"], elect=True, normalize=bool(options.get("normalize", True)),
                              lam=float(options.get("lambda", 1.0)))
        for t in range(len(tp.weights)):
            k = ties_k(vals["density"][t], numel)
            if k <= 0:
                tp.coeffs[t] = 0.0
            elif k < numel and not pretrimmed:
                if kth is None:
                    raise ValueError("ties needs magnitude thresholds (kth)")
                tp.lo[t] = kth(t, k)
        return tp

    def rank_range(self, n, bounds):
        lo, hi = bounds.get("density", (0.0, 1.0))
        return max(1, ties_k(lo, n)), min(n, ties_k(hi, n))

    def reference(self, base, taus, vals, options, *, name="", seed=0):
        import numpy as np

        from .reference import elect, topk_keep

        kept = [np.where(topk_keep(t, vals["density"][i]), t.reshape(-1).astype(np.float64), 0.0) for i, t in enumerate(taus)]
        return base.reshape(-1).astype(np.float64) + float(options["lambda"]) * elect(kept, vals["weight"], options["normalize"])

    def recipe_notes(self, ctx: RecipeContext) -> list[tuple[str, bool]]:
        notes: list[tuple[str, bool]] = []
        # mergekit keeps at least one entry of a tensor whose int(density * numel) is 0; we drop the expert
        dens = ctx.values["density"]
        tiny = [
            (n, ctx.experts[e]) for n, k in ctx.numels.items() for e in range(len(ctx.experts))
            if 0 < dens[ctx.tensor_group[n], e] and int(float(dens[ctx.tensor_group[n], e]) * k) == 0
        ]
        if tiny:
            notes.append((
                f"{len(tiny)} (tensor, expert) pairs keep 0 entries here (int(density * numel) = 0, first: "
                f"{tiny[0][0]} of {tiny[0][1]}); mergekit keeps 1 entry of each", True,
            ))
        notes.append((MAGNITUDE_TIE_NOTE, False))
        if float(ctx.options.get("lambda", 1.0)) != 1.0:
            notes.append((ROUNDING_NOTE, False))
        return notes


TIES = Ties()
