"""A small exact Gaussian process for surrogate-based strategies (numpy + scipy only).

Inputs are expected in the unit cube, targets are standardised internally. Kernel: Matern
5/2 with one lengthscale per input (ARD) times a signal variance, plus Gaussian noise.
Hyperparameters (log lengthscales, log signal variance, log noise variance) maximise the
log marginal likelihood plus weak log-normal priors, by L-BFGS-B with analytic gradients,
started from the previous fit (warm start) and from a fixed default; deterministic for the
same data. Between hyperparameter fits :meth:`GaussianProcess.condition` re-factorises
the kernel matrix only (one Cholesky), which is what "fantasy" observations of pending
points use.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import cho_solve, cholesky, solve_triangular
from scipy.optimize import minimize

SQRT5 = np.sqrt(5.0)
#: bounds of (log lengthscale, log signal variance, log noise variance) in standardised units
LOG_LS = (np.log(0.02), np.log(20.0))
LOG_SF2 = (np.log(0.05), np.log(20.0))
LOG_NOISE = (np.log(1e-6), np.log(0.5))
#: log-normal prior means / sds: lengthscale ~ 0.5 of the cube side, unit signal, small noise
PRIOR_LS = (np.log(0.5), 1.0)
PRIOR_SF2 = (0.0, 1.0)
PRIOR_NOISE = (np.log(1e-3), 2.0)


def _sqdist(A: np.ndarray, B: np.ndarray, ls: np.ndarray) -> np.ndarray:
    a, b = A / ls, B / ls
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def matern52(A: np.ndarray, B: np.ndarray, ls: np.ndarray, sf2: float) -> np.ndarray:
    r = np.sqrt(_sqdist(A, B, ls))
    return sf2 * (1.0 + SQRT5 * r + (5.0 / 3.0) * r * r) * np.exp(-SQRT5 * r)


class GaussianProcess:
    """Exact GP regression on one target. ``theta`` = (log ls_1..d, log sf2, log noise)."""

    def __init__(self, dim: int, theta: np.ndarray | None = None):
        self.dim = int(dim)
        self.theta = np.asarray(theta, dtype=np.float64) if theta is not None else self.default_theta(dim)
        self.X = np.zeros((0, dim))
        self.y = np.zeros(0)
        self._mean, self._std = 0.0, 1.0
        #: known extra noise variance of the first observations, in target units (e.g. values
        #: measured on example subsets); observations past its end have none
        self.extra_noise: np.ndarray | None = None

    @staticmethod
    def default_theta(dim: int) -> np.ndarray:
        """The prior means: the fit's fixed start."""
        return np.concatenate([np.full(dim, PRIOR_LS[0]), [PRIOR_SF2[0], PRIOR_NOISE[0]]])

    @staticmethod
    def _prior_sd(dim: int) -> np.ndarray:
        return np.concatenate([np.full(dim, PRIOR_LS[1]), [PRIOR_SF2[1], PRIOR_NOISE[1]]])

    def _bounds(self) -> list[tuple[float, float]]:
        return [LOG_LS] * self.dim + [LOG_SF2, LOG_NOISE]

    # ------------------------------------------------------------------ fitting
    def _scaled_sqdist(self, ls: np.ndarray, X: np.ndarray) -> list[np.ndarray]:
        """Squared distances between the rows of X, one matrix per lengthscale, each over its
        lengthscale squared."""
        return [(X[:, i : i + 1] - X[:, i : i + 1].T) ** 2 / ls[i] ** 2 for i in range(self.dim)]

    def _nll(self, theta: np.ndarray, X: np.ndarray, y: np.ndarray, fixed: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        d = self.dim
        ls, sf2, noise = np.exp(theta[:d]), np.exp(theta[d]), np.exp(theta[d + 1])
        n = len(y)
        diff2 = self._scaled_sqdist(ls, X)
        r = np.sqrt(np.maximum(sum(diff2), 0.0))
        e = np.exp(-SQRT5 * r)
        Kf = sf2 * (1.0 + SQRT5 * r + (5.0 / 3.0) * r * r) * e
        K = Kf + (noise + 1e-9) * np.eye(n) + np.diag(self._extra(n))
        if fixed is not None:
            K[np.diag_indices(n)] += fixed
        try:
            L = cholesky(K, lower=True)
        except np.linalg.LinAlgError:
            return 1e10, np.zeros_like(theta)
        alpha = cho_solve((L, True), y)
        nll = 0.5 * y @ alpha + np.log(np.diag(L)).sum() + 0.5 * n * np.log(2 * np.pi)
        W = cho_solve((L, True), np.eye(n)) - np.outer(alpha, alpha)  # dNLL/dK = W / 2
        grad = np.empty_like(theta)
        common = sf2 * (5.0 / 3.0) * (1.0 + SQRT5 * r) * e
        for i in range(d):
            grad[i] = 0.5 * np.sum(W * common * diff2[i])
        grad[d] = 0.5 * np.sum(W * Kf)
        grad[d + 1] = 0.5 * noise * np.trace(W)
        # priors (negative log density, up to constants)
        sd = self._prior_sd(d)
        z = (theta - self.default_theta(d)) / sd
        nll += 0.5 * float(z @ z)
        grad += z / sd
        return float(nll), grad

    def fit(self, X: np.ndarray, y: np.ndarray, *, restarts: bool = True, maxiter: int = 200,
            noise: np.ndarray | None = None) -> None:
        """Fit hyperparameters to (X, y) and condition on them. ``noise``: known noise variance
        of each observation (target units), added to the fitted homoscedastic noise."""
        X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)
        ys = self._standardise(y)
        fixed = None if noise is None else np.asarray(noise, dtype=np.float64) / self._std**2
        starts = [self.theta]
        if restarts and not np.allclose(self.theta, self.default_theta(self.dim)):
            starts.append(self.default_theta(self.dim))
        best = (np.inf, self.theta)
        for t0 in starts:
            res = minimize(self._nll, np.clip(t0, *np.array(self._bounds()).T), args=(X, ys, fixed), jac=True, method="L-BFGS-B",
                           bounds=self._bounds(), options={"maxiter": maxiter})
            if np.isfinite(res.fun) and res.fun < best[0]:
                best = (float(res.fun), np.asarray(res.x))
        self.theta = best[1]
        self.condition(X, y, noise=noise)

    def _standardise(self, y: np.ndarray) -> np.ndarray:
        self._mean = float(np.mean(y)) if len(y) else 0.0
        s = float(np.std(y)) if len(y) > 1 else 1.0
        self._std = s if s > 1e-12 else 1.0
        return (y - self._mean) / self._std

    def condition(self, X: np.ndarray, y: np.ndarray, noise: np.ndarray | None = None) -> None:
        """Condition on (X, y) with the current hyperparameters (no refit); ``noise`` as in :meth:`fit`."""
        ys = self._standardise(np.asarray(y, dtype=np.float64))
        self.factorise(X, None if noise is None else np.asarray(noise, dtype=np.float64) / self._std**2)
        self._alpha = cho_solve((self._L, True), ys)
        self.y = np.asarray(y, dtype=np.float64)

    def _extra(self, n: int) -> np.ndarray:
        """:attr:`extra_noise` of ``n`` observations in standardised units (zeros past its end)."""
        out = np.zeros(n)
        if self.extra_noise is not None:
            k = min(n, len(self.extra_noise))
            out[:k] = np.nan_to_num(np.asarray(self.extra_noise[:k], dtype=np.float64), posinf=1e6) / self._std**2
        return out

    def input_lengthscales(self) -> np.ndarray:
        """The lengthscale of every input."""
        return np.exp(self.theta[: self.dim])

    def factorise(self, X: np.ndarray, fixed: np.ndarray | None = None) -> None:
        """The Cholesky factor of the kernel matrix of ``X`` (noise and jitter included;
        ``fixed``: per-point noise variances in standardised units, added to the diagonal)."""
        self.X = np.asarray(X, dtype=np.float64)
        d, n = self.dim, len(self.X)
        sf2, noise = np.exp(self.theta[d]), np.exp(self.theta[d + 1])
        K = matern52(self.X, self.X, self.input_lengthscales(), sf2) + (noise + 1e-9) * np.eye(n) + np.diag(self._extra(n))
        if fixed is not None:
            K[np.diag_indices(n)] += fixed
        jitter = 0.0
        while True:
            try:
                self._L = cholesky(K + jitter * np.eye(n), lower=True)
                break
            except np.linalg.LinAlgError:
                jitter = max(1e-8, 10 * jitter)

    # ------------------------------------------------------------------ prediction
    def cross_kernel(self, Xs: np.ndarray) -> np.ndarray:
        """Kernel values between ``Xs`` and the conditioned inputs, (len(Xs), len(X))."""
        return matern52(np.asarray(Xs, dtype=np.float64), self.X, self.input_lengthscales(), np.exp(self.theta[self.dim]))

    def predict(self, Xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation of the latent function, in target units."""
        Ks = self.cross_kernel(Xs)
        mu = Ks @ self._alpha
        v = solve_triangular(self._L, Ks.T, lower=True)
        var = np.maximum(np.exp(self.theta[self.dim]) - (v * v).sum(0), 1e-12)
        return mu * self._std + self._mean, np.sqrt(var) * self._std


class SharedKernelGP:
    """Independent GPs on many targets (columns of ``Y``) that share one kernel.

    For per-example margins: hundreds of targets of the same inputs, each a smooth function
    of the coefficients. One Cholesky serves all columns; each column is standardised on its
    own. The shared hyperparameters are fitted (:meth:`fit`) on the targets' first principal
    component (the direction most of their variation shares), by :class:`GaussianProcess`.
    """

    def __init__(self, dim: int, theta: np.ndarray | None = None, gp: GaussianProcess | None = None):
        self.gp = gp if gp is not None else GaussianProcess(dim, theta)

    @property
    def theta(self) -> np.ndarray:
        return self.gp.theta

    def fit(self, X: np.ndarray, Y: np.ndarray, *, restarts: bool = True) -> None:
        """Fit the shared hyperparameters, then condition on (X, Y)."""
        Z = self._standardise(np.asarray(Y, dtype=np.float64))
        if len(Z) > 1 and np.any(Z):
            u, s, _ = np.linalg.svd(Z, full_matrices=False)
            self.gp.fit(X, u[:, 0] * s[0], restarts=restarts)  # leaves the factorisation of X
        else:
            self.gp.factorise(X)
        self._alpha = cho_solve((self.gp._L, True), Z)

    def _standardise(self, Y: np.ndarray) -> np.ndarray:
        self._mean = Y.mean(0) if len(Y) else np.zeros(Y.shape[1])
        sd = Y.std(0) if len(Y) > 1 else np.ones(Y.shape[1])
        self._std = np.where(sd > 1e-12, sd, 1.0)
        return (Y - self._mean) / self._std

    def condition(self, X: np.ndarray, Y: np.ndarray) -> None:
        """Condition every column on (X, Y) with the current shared hyperparameters."""
        Z = self._standardise(np.asarray(Y, dtype=np.float64))
        self.gp.factorise(X)
        self._alpha = cho_solve((self.gp._L, True), Z)

    def predict_mean(self, Xs: np.ndarray) -> np.ndarray:
        """Posterior means (len(Xs), n_targets) in target units."""
        return (self.gp.cross_kernel(Xs) @ self._alpha) * self._std + self._mean


class TiedGaussianProcess(GaussianProcess):
    """:class:`GaussianProcess` whose inputs share lengthscales by class (``ties[i]`` = the class
    of input ``i``): ``theta`` = (log ls per class, log sf2, log noise).

    For hundreds of inputs and a few hundred observations, where one lengthscale per input
    cannot be learned: a layer-wise merge ties each (expert, parameter)'s coordinates over all
    layers. The prior mean of a class's lengthscale is 0.5 x sqrt(its size), so that random
    points are as far apart in kernel units as in a one-input-per-class problem."""

    def __init__(self, ties: np.ndarray, theta: np.ndarray | None = None):
        self.ties = np.asarray(ties, dtype=np.int64)
        self.sizes = np.bincount(self.ties).astype(np.float64)
        super().__init__(len(self.sizes), theta)
        self._sq: list[np.ndarray] | None = None  # per-class squared distances of the data being fitted

    def fit(self, X: np.ndarray, y: np.ndarray, *, restarts: bool = True, maxiter: int = 200,
            noise: np.ndarray | None = None) -> None:
        """As :meth:`GaussianProcess.fit`; the per-class distances (independent of theta) are computed once."""
        self._sq = self._class_sqdist(np.asarray(X, dtype=np.float64))
        try:
            super().fit(X, y, restarts=restarts, maxiter=maxiter, noise=noise)
        finally:
            self._sq = None

    def default_theta(self, dim: int) -> np.ndarray:  # type: ignore[override]
        return np.concatenate([PRIOR_LS[0] + 0.5 * np.log(self.sizes), [PRIOR_SF2[0], PRIOR_NOISE[0]]])

    def _bounds(self) -> list[tuple[float, float]]:
        return [(LOG_LS[0], LOG_LS[1] + 0.5 * float(np.log(s))) for s in self.sizes] + [LOG_SF2, LOG_NOISE]

    def _class_sqdist(self, X: np.ndarray) -> list[np.ndarray]:
        out = []
        for c in range(self.dim):
            Xc = X[:, self.ties == c]
            sq = (Xc * Xc).sum(1)
            out.append(np.maximum(sq[:, None] + sq[None, :] - 2.0 * Xc @ Xc.T, 0.0))
        return out

    def _scaled_sqdist(self, ls: np.ndarray, X: np.ndarray) -> list[np.ndarray]:
        sq = self._sq if self._sq is not None else self._class_sqdist(X)
        return [v / ls[c] ** 2 for c, v in enumerate(sq)]

    def input_lengthscales(self) -> np.ndarray:
        """The lengthscale of every input (its class's)."""
        return np.exp(self.theta[: self.dim])[self.ties]
