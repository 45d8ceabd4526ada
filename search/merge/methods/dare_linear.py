"""``dare_linear``: random drop with rescaling (DARE), then task arithmetic.

Keep each entry of tau_t with probability d_t (a Bernoulli mask), rescale the kept entries by
1/d_t (``rescale: inverse``, default) or by sum|tau_t| / sum|kept_t| so the L1 norm matches the
original delta (``rescale: l1``, mergekit's current behaviour; no rescale if nothing is kept).
d_t <= 0 drops the expert, d_t >= 1 keeps everything unscaled. Then
theta_0 + lambda * sum_t w_t dare_t.

Masks: entry i of tensor ``name`` for expert t is kept when
fmix32(i * 0x9E3779B1 + key) & 0x7FFFFFFF < floor(d_t * 2**31) (murmur3's 32-bit finaliser,
arithmetic mod 2**32), key = the low 32 bits of derive_seed("dare", trial_seed(run_seed,
trial), name, t). This counter-based hash is a pure function of (run seed, trial number,
tensor name, expert index, element index): identical across processes and devices
(CPU/CUDA), independent of tensor iteration order and of chunking, and different for
different trial numbers. (32-bit integer ops: 2-5x cheaper than 64-bit ones on CPU.)
"""

from __future__ import annotations

from typing import Any

from ..tensorplan import TensorPlan, dare_key, dare_threshold
from .base import MergeMethod, RecipeContext


class DareLinear(MergeMethod):
    name = "dare_linear"
    params = {"weight": 1.0, "density": 0.5}
    bounds = {"density": (0.0, 1.0)}
    options = {"lambda": 1.0, "rescale": "inverse"}
    choices = {"rescale": ("inverse", "l1")}
    kept_param = "density"
    trim = ("density",)
    random = True
    mergekit = "dare_linear"
    summary = "random drop (keep prob = density) with rescaling, then task arithmetic"

    def dare_plan(self, options, vals, *, name, seed, l1, **flags: Any) -> TensorPlan:
        """The DARE masks and rescaling of every expert: coefficients w_t / d_t (``rescale:
        inverse``) or w_t with the full L1 norms for ``rescale: l1``; ``flags`` as TensorPlan's."""
        tp = TensorPlan.start(vals["weight"], **flags)
        for t in range(len(tp.weights)):
            d = float(vals["density"][t])
            if d <= 0.0:
                tp.coeffs[t] = 0.0
            elif d < 1.0:
                tp.dare[t] = (dare_key(seed, name, t), dare_threshold(d))
                if options.get("rescale", "inverse") == "l1":
                    if l1 is None:
                        raise ValueError("rescale l1 needs the task vectors' L1 norms")
                    tp.l1[t] = float(l1[t])
                else:
                    tp.coeffs[t] = tp.weights[t] * (1.0 / d)
        return tp

    def needs_l1(self, options):
        return options.get("rescale", "inverse") == "l1"

    def plan(self, options, vals, numel, *, name="", seed=0, l1=None, **_: Any) -> TensorPlan:
        tp = self.dare_plan(options, vals, name=name, seed=seed, l1=l1)
        lam = float(options.get("lambda", 1.0))
        tp.coeffs = [lam * c for c in tp.coeffs]
        return tp

    def dropped(self, taus, vals, options, name, seed) -> list:
        from .reference import dare

        return [dare(t, float(vals["density"][i]), seed, name, i, options["rescale"]) for i, t in enumerate(taus)]

    def reference(self, base, taus, vals, options, *, name="", seed=0):
        from .reference import weighted_sum

        kept = self.dropped(taus, vals, options, name, seed)
        return base.reshape(-1).astype("float64") + float(options["lambda"]) * weighted_sum(vals["weight"], kept)

    def mergekit_parameters(self, options):
        return {**super().mergekit_parameters(options), "rescale": True}  # mergekit's only rescale (L1); see the notes

    def recipe_notes(self, ctx: RecipeContext) -> list[tuple[str, bool]]:
        notes = [(
            f"{self.name} drops entries at random: mergekit draws its own masks (torch.bernoulli on its own RNG "
            "stream), not this trial's (a hash of the run seed, the trial number, the tensor and the expert), so "
            "its merge differs entry by entry", True,
        )]
        if ctx.options.get("rescale", "inverse") != "l1":
            notes.append((
                "this run rescaled the kept entries by 1/density (rescale: inverse); mergekit's rescale restores "
                "each task vector's L1 norm instead (rescale: l1 here)", True,
            ))
        return notes


DARE_LINEAR = DareLinear()
