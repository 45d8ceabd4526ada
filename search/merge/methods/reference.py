"""Slow, obviously-correct numpy building blocks of the methods' ``reference`` formulas.

Selections by explicit sorting and rank indices, the DARE hash with numpy uint32 arithmetic
(wraps mod 2**32), sums in float64. The rank and threshold rules are written out here, not
shared with the kernels' plans (``search.merge.tensorplan``), so a wrong rule there shows. The kernels (``search.merge.kernels``) are tested against
these, never the other way round.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...seeding import derive_seed


def hash31(key: int, start: int, n: int) -> np.ndarray:
    """fmix32(i * 0x9E3779B1 + key) & 0x7FFFFFFF for i in start..start+n-1 (uint32 wraps)."""
    with np.errstate(over="ignore"):
        z = np.arange(start, start + n, dtype=np.uint64).astype(np.uint32)
        z = z * np.uint32(0x9E3779B1) + np.uint32(key & 0xFFFFFFFF)
        z = z ^ (z >> np.uint32(16))
        z = z * np.uint32(0x85EBCA6B)
        z = z ^ (z >> np.uint32(13))
        z = z * np.uint32(0xC2B2AE35)
        z = z ^ (z >> np.uint32(16))
    return z & np.uint32(0x7FFFFFFF)


def topk_keep(tau: np.ndarray, density: float) -> np.ndarray:
    """Keep entries with |tau| >= the k-th largest |tau|, k = int(density * n)."""
    n = tau.size
    k = int(float(density) * n)
    a = np.abs(tau.reshape(-1))
    if k <= 0:
        return np.zeros(n, dtype=bool)
    if k >= n:
        return np.ones(n, dtype=bool)
    thr = np.sort(a)[::-1][k - 1]
    return a >= thr


def band_keep(tau: np.ndarray, density: float, gamma: float) -> np.ndarray:
    """mergekit's magnitude_outliers by rank: drop the n_top largest, keep the next n_keep."""
    n = tau.size
    n_keep, n_top = int(float(density) * n), int(float(gamma) * n)
    n_top = max(min(n_top, n - n_keep), 0)  # the band never runs past the smallest
    order = np.argsort(-np.abs(tau.reshape(-1)), kind="stable")  # descending magnitude
    keep = np.zeros(n, dtype=bool)
    keep[order[n_top : n_top + n_keep]] = True
    return keep


def dare(tau: np.ndarray, density: float, seed: int, name: str, expert: int, rescale: str) -> np.ndarray:
    """Expert ``expert``'s DARE-dropped, rescaled task vector (float64)."""
    t = tau.reshape(-1).astype(np.float64)
    if density <= 0:
        return np.zeros_like(t)
    if density >= 1:
        return t
    key = derive_seed("dare", seed, name, expert) & 0xFFFFFFFF
    keep = hash31(key, 0, t.size) < np.uint32(int(density * 2**31))
    kept = np.where(keep, t, 0.0)
    if rescale == "inverse":
        return kept / density
    before, after = np.abs(t).sum(), np.abs(kept).sum()
    return kept * (before / after) if before > 0 and after > 0 else kept


def elect(deltas: Sequence[np.ndarray], weights: Sequence[float], normalize: bool) -> np.ndarray:
    """TIES sign election and disjoint mean on weighted deltas D_t = w_t * kept_t."""
    D = [w * d for w, d in zip(weights, deltas, strict=True)]
    S = np.sum(D, axis=0)
    E = np.where(S >= 0, 1.0, -1.0)
    num = np.zeros_like(S)
    den = np.zeros_like(S)
    for w, d in zip(weights, D, strict=True):
        agree = np.sign(d) == E
        num += np.where(agree, d, 0.0)
        den += np.where(agree, w, 0.0)
    if normalize:
        den[den == 0] = 1.0
        return num / den
    return num


def weighted_sum(weights: Sequence[float], vectors: Sequence[np.ndarray]) -> np.ndarray:
    """sum_t w_t v_t in float64."""
    return sum(float(w) * np.asarray(v, dtype=np.float64).reshape(-1) for w, v in zip(weights, vectors, strict=True))
