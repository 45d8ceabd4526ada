"""What a trial needs to merge one tensor (``TensorPlan``) and the scalar rules the merge
methods share to build it: DARE keys and thresholds, TIES and breadcrumbs ranks.

No torch here: merge methods build plans from these, config validation imports the methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..seeding import derive_seed


@dataclass
class TensorPlan:
    """Everything a trial needs to merge one tensor: per-expert scalars.

    ``coeffs[t]`` multiplies the (trimmed, masked) tau_t; 0 skips expert t. For TIES-style
    methods (``elect``) it is w_t times the DARE scale and ``lam`` is applied at the end;
    ``weights`` are the raw w_t for the divisor. ``lo``/``hi`` are magnitude bounds
    (keep lo <= |tau| < hi). ``dare`` holds (key, threshold) per expert; ``l1`` the full L1
    norm of tau_t when the DARE scale matches L1 norms (computed per trial).
    """

    coeffs: list[float]
    weights: list[float]
    lo: list[float | None]
    hi: list[float | None]
    dare: list[tuple[int, int] | None]
    l1: list[float | None]
    elect: bool = False
    normalize: bool = False
    lam: float = 1.0

    @classmethod
    def start(cls, weights: Sequence[float], coeffs: list[float] | None = None, **flags: Any) -> TensorPlan:
        """A plan with nothing trimmed: coefficients ``coeffs`` (default: the weights) and ``flags``
        (``elect``, ``normalize``, ``lam``); a method then fills in what it trims."""
        w = [float(v) for v in weights]
        K = len(w)
        return cls(list(w) if coeffs is None else coeffs, w, [None] * K, [None] * K, [None] * K, [None] * K, **flags)

    @property
    def trimmed(self) -> bool:
        """True when some expert has magnitude bounds or a DARE mask."""
        return any(v is not None for v in self.lo + self.hi + self.dare)


def dare_key(seed: int, name: str, expert: int) -> int:
    """Per-(trial, tensor, expert) key of the DARE hash (32 bits)."""
    return derive_seed("dare", seed, name, expert) & 0xFFFFFFFF


def dare_threshold(density: float) -> int:
    """Keep an entry when its 31-bit hash is below this: floor(density * 2**31)."""
    return int(min(max(float(density), 0.0), 1.0) * 2147483648.0)


def ties_k(density: float, n: int) -> int:
    return int(float(density) * n)


def breadcrumbs_ranks(density: float, gamma: float, n: int) -> tuple[int, int]:
    """(n_top, n_keep) of the breadcrumbs band (mergekit's magnitude_outliers ranks)."""
    n_keep = int(float(density) * n)
    n_top = int(float(gamma) * n)
    if n_top + n_keep > n:
        n_top = n - n_keep
    return max(n_top, 0), max(n_keep, 0)
