"""MAP's surrogate maths: quadratic features, link functions, the two-step fit, and the
hyperspherical angles of mixing proportions (used by :mod:`search.strategies.map`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def quad_features(U: np.ndarray) -> np.ndarray:
    """[u_i^2, u_i u_j (i<j), u_i, 1] for each row (MAP's parameter order)."""
    U = np.atleast_2d(np.asarray(U, dtype=np.float64))
    n, k = U.shape
    iu = np.triu_indices(k, 1)
    return np.hstack([U**2, U[:, iu[0]] * U[:, iu[1]], U, np.ones((n, 1))])


def n_quad_params(k: int) -> int:
    return (k + 1) * (k + 2) // 2


_EPS = 1e-3


def _sigmoid(t):
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(t)))


def _logit(y):
    y = np.clip(y, _EPS, 1 - _EPS)
    return np.log(y) - np.log1p(-y)


def _softplus(t):
    t = np.asarray(t)
    return np.logaddexp(0.0, t)


def _inv_softplus(y):
    y = np.maximum(y, _EPS)
    return y + np.log(-np.expm1(-y))


_LINKS = {
    "sigmoid": (_sigmoid, _logit),
    "softplus": (_softplus, _inv_softplus),
    "identity": (lambda t: np.asarray(t), lambda y: np.asarray(y)),
}


def auto_link(y: np.ndarray) -> str:
    y = np.asarray(y)
    if len(y) and np.all((y >= 0) & (y <= 1)):
        return "sigmoid"
    if len(y) and np.all(y >= 0):
        return "softplus"
    return "identity"


@dataclass
class QuadSurrogate:
    """``link(quad_features(u) @ theta)``."""

    theta: np.ndarray
    link: str

    def predict(self, U: np.ndarray) -> np.ndarray:
        return _LINKS[self.link][0](quad_features(U) @ self.theta)


def fit_quadratic(U: np.ndarray, y: np.ndarray, link: str, ridge: float = 1e-6) -> QuadSurrogate:
    """Linear least squares on the link scale, then nonlinear least squares started from it."""
    from scipy.optimize import least_squares

    Phi = quad_features(U)
    y = np.asarray(y, dtype=np.float64)
    g, ginv = _LINKS[link]
    t = ginv(y)
    p = Phi.shape[1]
    A = Phi.T @ Phi + max(ridge, 1e-10) * len(y) * np.eye(p)
    theta0 = np.linalg.solve(A, Phi.T @ t)
    if link == "identity":
        return QuadSurrogate(theta0, link)
    sr = math.sqrt(max(ridge, 0.0) * len(y))

    def resid(th):
        r = g(Phi @ th) - y
        return np.concatenate([r, sr * th]) if sr else r

    try:
        res = least_squares(resid, theta0, method="trf", max_nfev=50 * p)
        theta = res.x if np.all(np.isfinite(res.x)) else theta0
    except Exception:  # noqa: BLE001 - a failed refinement keeps the linear start
        theta = theta0
    return QuadSurrogate(theta, link)


def hyperspherical_angles(U: np.ndarray) -> np.ndarray:
    """Angles (n, k-1) in [0, pi/2] of non-negative points (n, k); for k = 1 the scaled coordinate."""
    U = np.maximum(np.atleast_2d(U), 0.0)
    if U.shape[1] == 1:
        return U * (np.pi / 2)
    tail = np.sqrt(np.cumsum((U**2)[:, ::-1], axis=1)[:, ::-1])
    return np.arctan2(tail[:, 1:], U[:, :-1])


def direction(phi: np.ndarray) -> np.ndarray:
    """Unit vector (k,) with non-negative entries from k-1 hyperspherical angles."""
    k = len(phi) + 1
    v = np.empty(k)
    s = 1.0
    for j in range(k - 1):
        v[j] = s * math.cos(phi[j])
        s *= math.sin(phi[j])
    v[k - 1] = s
    return np.maximum(v, 0.0)
