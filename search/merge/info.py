"""What each merge method takes, without importing torch (used by config validation)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import UnknownNameError, did_you_mean


@dataclass(frozen=True)
class MethodInfo:
    """A merge method's per-(group, expert) parameters and its global options.

    ``params``: per-group, per-expert parameters that may be searched or fixed, with defaults
    (None = must be given when not searched). ``options``: global options with defaults.
    """

    name: str
    params: dict[str, float | None]
    options: dict[str, Any] = field(default_factory=dict)
    sparsifying: bool = False
    random: bool = False
    mergekit: str | None = None
    summary: str = ""


METHODS: dict[str, MethodInfo] = {
    m.name: m
    for m in [
        MethodInfo(
            "linear",
            {"weight": 1.0},
            {"normalize": True},
            mergekit="linear",
            summary="theta_0 + sum_t w_t tau_t / sum_t w_t (a weighted average of the experts)",
        ),
        MethodInfo(
            "task_arithmetic",
            {"weight": 1.0},
            {"lambda": 1.0},
            mergekit="task_arithmetic",
            summary="theta_0 + lambda * sum_t w_t tau_t",
        ),
        MethodInfo(
            "ties",
            {"weight": 1.0, "density": 0.5},
            {"lambda": 1.0, "normalize": True},
            sparsifying=True,
            mergekit="ties",
            summary="per-tensor top-k trim at density, sign election on weighted deltas, disjoint mean",
        ),
        MethodInfo(
            "dare_ties",
            {"weight": 1.0, "density": 0.5},
            {"lambda": 1.0, "normalize": True, "rescale": "inverse"},
            sparsifying=True,
            random=True,
            mergekit="dare_ties",
            summary="random drop (keep prob = density) with rescaling, then TIES sign election",
        ),
        MethodInfo(
            "dare_linear",
            {"weight": 1.0, "density": 0.5},
            {"lambda": 1.0, "rescale": "inverse"},
            sparsifying=True,
            random=True,
            mergekit="dare_linear",
            summary="random drop (keep prob = density) with rescaling, then task arithmetic",
        ),
        MethodInfo(
            "breadcrumbs",
            {"weight": 1.0, "density": 0.9, "gamma": 0.01},
            {"lambda": 1.0},
            sparsifying=True,
            mergekit="breadcrumbs",
            summary="per tensor drop the top-gamma outliers and all below the top-density, then task arithmetic",
        ),
    ]
}


def method_info(name: str) -> MethodInfo:
    if name not in METHODS:
        raise UnknownNameError(f"unknown merge method {name!r}{did_you_mean(name, METHODS)}")
    return METHODS[name]
