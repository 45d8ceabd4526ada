"""Subset of data for the GP strategies past a few thousand results.

An exact GP costs O(n^3) per hyperparameter fit and O(n^2) per prediction, so with a few
thousand told points a model step takes longer than a cluster gives it. Past ``cap``
successful results :func:`model_rows` picks which ones the models are fitted and
conditioned on: half the cap nearest the measured front (in objective space, each objective
scaled to its measured range: the acquisition works there), the other half drawn at random
from the rest (the global shape). The measured front itself, the points never to propose
again and the reference point still come from every result.
"""

from __future__ import annotations

import numpy as np

from ..pareto import pareto_mask


def min_front(F: np.ndarray) -> np.ndarray:
    """Non-dominated rows of minimisation-signed values ``F`` (n, k) (:func:`search.pareto.pareto_mask`)."""
    return pareto_mask(F, ["minimize"] * F.shape[1])


def model_rows(F: np.ndarray, cap: int | None, seed: int = 0, front: np.ndarray | None = None) -> np.ndarray | None:
    """Row indices (ascending) of at most ``cap`` of the minimisation-signed values ``F``
    (n, k) for the models; None when all ``n <= cap`` rows are used. Deterministic for
    ``seed``. ``front``: the front's mask of ``F`` when the caller has it."""
    n = len(F)
    if cap is None or n <= cap:
        return None
    span = np.maximum(F.max(0) - F.min(0), 1e-12)
    G = (F - F.min(0)) / span
    front = G[min_front(F) if front is None else front]
    # distance to the nearest front member, in chunks (n x front can be large)
    dist = np.empty(n)
    for a in range(0, n, 4096):
        dist[a : a + 4096] = np.sqrt(((G[a : a + 4096, None, :] - front[None, :, :]) ** 2).sum(-1)).min(1)
    near = np.argsort(dist, kind="stable")[: cap // 2]
    rest = np.setdiff1d(np.arange(n), near, assume_unique=True)
    far = np.random.default_rng(seed).choice(rest, size=cap - len(near), replace=False)
    return np.sort(np.concatenate([near, far]))
