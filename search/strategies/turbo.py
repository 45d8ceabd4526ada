"""TuRBO: mobo with trust regions and tied lengthscales, for 64-512 coordinates.

Layer-wise merges of deep models with several experts and searched densities have hundreds
of coordinates. :mod:`search.strategies.mobo` models every coordinate with its own lengthscale
and draws half its candidates from the whole box; both fail there: a few hundred points
cannot fit hundreds of lengthscales, and random points in a 200-dimensional box are all far
from anything measured. This strategy keeps mobo's machinery (initial design with the seed
points, one GP per objective, the margins model for accuracies whose evaluator reports
per-example margins, optimistic hypervolume improvement, local moves into the front's gaps,
kriging-believer fantasies for asking ahead, one model step for a large ask) and changes two things:

1. Kernel (:class:`~search.strategies.gp.TiedGaussianProcess`): the coordinates of one
   (expert, parameter) share one lengthscale over all layers and groups, so the model has
   (experts x params) + 2 hyperparameters whatever the depth. Coordinates without
   ``<group>/<expert>/<param>`` names share one lengthscale.
2. Candidates (TuRBO, Eriksson et al. 2019, with a front instead of a best point): every
   model candidate starts from a measured front member and re-draws a random subset of its
   coordinates (``perturb`` of them on average, at least one) uniformly inside a box of side
   ``length`` around it, per coordinate scaled by its lengthscale relative to the
   geometric mean; the acquisition picks the best. A told result that joins the measured
   front is a success, any other successful result a failure: ``succ_tol`` successes in a
   row double ``length`` (up to ``tr_max``), ``fail_tol`` failures in a row halve it; below
   ``tr_min`` it restarts at ``tr_length``.

``state_dict`` adds the trust region's length and counters to mobo's state, so a resumed
run proposes exactly what the uninterrupted run would have.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import Field

from .base import TrialResult
from .gp import GaussianProcess, SharedKernelGP, TiedGaussianProcess
from .mobo import MOBOOptions, MOBOStrategy, _MarginPredictor


class TurboOptions(MOBOOptions):
    max_dim: int = Field(512, ge=1, description="largest search dimension accepted")
    tr_length: float = Field(0.4, gt=0.0, le=1.0, description="initial side of the trust region (fraction of each coordinate's range)")
    tr_min: float = Field(2.0**-7, gt=0.0, description="below this side the trust region restarts at tr_length")
    tr_max: float = Field(0.8, gt=0.0, le=1.0, description="largest side of the trust region")
    succ_tol: int = Field(3, ge=1, description="successes in a row (results joining the front) that double the side")
    fail_tol: int = Field(8, ge=1, description="failures in a row (results off the front) that halve the side")
    perturb: float = Field(20.0, gt=0.0, description="coordinates re-drawn per candidate, on average")
    value_warp: bool = Field(False, description="as mobo's (off here: not measured on turbo's problems)")


class TurboStrategy(MOBOStrategy):
    """mobo with trust regions around the measured front and tied lengthscales (see module docstring)."""

    name = "turbo"
    Options = TurboOptions

    def __init__(self, problem, options=None, seed: int = 0):
        super().__init__(problem, options, seed)
        self._ties = _ties(problem.names, problem.dim)
        self._n_design = len(self._init)  # candidate ids below this are the initial design
        self._tr = {"length": float(self.options.tr_length), "succ": 0, "fail": 0, "restarts": 0}

    _too_large_hint = "granularity (schedule:K, block:K)"

    # ------------------------------------------------------------------ model
    def _new_gp(self, theta: np.ndarray | None) -> GaussianProcess:
        return TiedGaussianProcess(self._ties, theta)

    def _new_margin_gp(self, theta: np.ndarray | None) -> SharedKernelGP:
        return SharedKernelGP(self.problem.dim, gp=TiedGaussianProcess(self._ties, theta))

    # ------------------------------------------------------------------ trust region
    def tell(self, results: Sequence[TrialResult]) -> None:
        for r in results:
            if r.ok and int(r.candidate.id) >= self._n_design:
                f = self.problem.minimization(np.asarray(r.values, dtype=np.float64))
                prev = [y for y in self._Y if y is not None]
                joins = not prev or not np.any(np.all(self.problem.minimization(np.asarray(prev)) <= f, axis=1))
                self._update_region(bool(joins))
            super().tell([r])

    def _update_region(self, success: bool) -> None:
        tr, o = self._tr, self.options
        if success:
            tr["succ"], tr["fail"] = tr["succ"] + 1, 0
        else:
            tr["succ"], tr["fail"] = 0, tr["fail"] + 1
        if tr["succ"] >= o.succ_tol:
            tr["length"], tr["succ"] = min(2.0 * tr["length"], o.tr_max), 0
        elif tr["fail"] >= o.fail_tol:
            tr["length"], tr["fail"] = tr["length"] / 2.0, 0
            if tr["length"] < o.tr_min:
                tr["length"] = float(o.tr_length)
                tr["restarts"] += 1

    def _model_info(self) -> dict[str, Any]:
        return {"tr_length": self._tr["length"]}

    def _candidates(self, gps, front_U, front_F, ref, n_top: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Scored candidates in the trust region around the measured front (``n_top`` unused:
        no refinement step)."""
        d, m, rng = self.problem.dim, self.options.n_candidates, self._rng
        logs = [np.log((g.gp if isinstance(g, _MarginPredictor) else g).input_lengthscales()) for g in gps]
        w = np.exp(np.mean(logs, axis=0))
        w = w / np.exp(np.mean(np.log(w)))
        half = self._tr["length"] * w / 2.0
        centers = front_U[rng.integers(0, len(front_U), m)]
        lo, hi = np.clip(centers - half, 0.0, 1.0), np.clip(centers + half, 0.0, 1.0)
        mask = rng.random((m, d)) < min(1.0, self.options.perturb / d)
        mask[np.arange(m), rng.integers(0, d, m)] = True
        C = np.where(mask, lo + rng.random((m, d)) * (hi - lo), centers)
        L = self._optimistic(gps, C)
        return C, L, self._acquisition(L, front_F, ref)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "tr": dict(self._tr)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._tr = dict(state["tr"])


def _ties(names: Sequence[str], dim: int) -> np.ndarray:
    """Lengthscale class of each coordinate: its ``<expert>/<param>`` (all one class without names)."""
    if len(names) != dim or not all(n.count("/") >= 2 for n in names):
        return np.zeros(dim, dtype=np.int64)
    keys = [n.split("/", 1)[1] for n in names]
    index: dict[str, int] = {}
    return np.array([index.setdefault(k, len(index)) for k in keys], dtype=np.int64)

