"""How well mobo's models predict an accuracy, with margins and without (not a test).

Issue 18 asks mobo to lead without per-example margins. This bench measures the ceiling of
that: how closely each model predicts the accuracy of the next point a run evaluates, from
the points before it. One mobo run per seed (``--budget`` evaluations, margins on, so its
points are the ones a strong run visits late: near the front) is recorded on ``--config``;
then, at every ``--step``-th point t from ``--start`` on, each model is fitted on points
< t and predicts the accuracy at point t:

* ``margins``: mobo's margin model (one GP per example sharing a kernel; the predicted
  accuracy is the fraction of examples with a positive predicted margin);
* ``value-logit``: mobo's model without margins (a GP on the empirical logit of the
  accuracy, with its binomial variance as known noise, ``value_warp`` / ``value_noise``);
* ``value-raw``: a GP on the accuracy itself (mobo before issue 18);
* ``outcomes``: the margin model given each example's 0/1 correctness as +-1 (what an
  evaluator without margins can still report per example);
* ``irt``: a 3-dimensional logistic item-response model fitted to the 0/1 matrix
  (``P(correct) = sigmoid(theta_t . a_i + b_i)``), its per-trial logits fed to the margin
  model as margins.

Reported: the mean absolute error of the predicted accuracy per objective (in accuracy
units; one example of an objective with n examples is 1/n), and the share of predictions
off by more than one example.

    python bench/bench_value_models.py                       # digits3, 2 seeds, 200 evaluations
Writes bench/results/value_models.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("OMP_NUM_THREADS", "1")

MODELS = ("margins", "value-logit", "value-raw", "outcomes", "irt")


def fit_irt(Y: np.ndarray, d: int = 3, lam: float = 1.0, lam_b: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MAP fit of ``logit P(Y[t, i] = 1) = theta_t . a_i + b_i`` (Gaussian priors) by L-BFGS."""
    from scipy.optimize import minimize

    T, N = Y.shape
    Z = 2.0 * Y - 1.0
    u, s, vt = np.linalg.svd(Z - Z.mean(0), full_matrices=False)
    k = min(d, len(s))
    th0, a0 = np.zeros((T, d)), np.zeros((N, d))
    th0[:, :k], a0[:, :k] = u[:, :k] * np.sqrt(s[:k]), vt[:k].T * np.sqrt(s[:k]) * 0.2
    p = Y.mean(0)
    b0 = np.log((p + 0.05) / (1.0 - p + 0.05))

    def split(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return x[: T * d].reshape(T, d), x[T * d: T * d + N * d].reshape(N, d), x[T * d + N * d:]

    def loss(x: np.ndarray) -> tuple[float, np.ndarray]:
        th, a, b = split(x)
        L = th @ a.T + b
        f = np.sum(np.logaddexp(0.0, L) - Y * L) + 0.5 * lam * (np.sum(th**2) + np.sum(a**2)) + 0.5 * lam_b * np.sum(b**2)
        G = 1.0 / (1.0 + np.exp(-L)) - Y
        return f, np.concatenate([(G @ a + lam * th).ravel(), (G.T @ th + lam * a).ravel(), G.sum(0) + lam_b * b])

    r = minimize(loss, np.concatenate([th0.ravel(), a0.ravel(), b0]), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return split(r.x)


def predict(model: str, U: np.ndarray, V: np.ndarray, M: np.ndarray, t: int, n_ex: int) -> float:
    """The accuracy ``model`` predicts at point ``t`` from points < t (maximised values)."""
    from search.strategies.gp import GaussianProcess, SharedKernelGP
    from search.strategies.mobo import _LogitPredictor

    X, x = U[:t], U[t: t + 1]
    if model == "value-logit":
        gp = _LogitPredictor(GaussianProcess(U.shape[1]), n_ex, -1.0, True)
        gp.fit(X, -V[:t])
        return float(-gp.predict(x)[0][0])
    if model == "value-raw":
        gp = GaussianProcess(U.shape[1])
        gp.fit(X, V[:t])
        return float(gp.predict(x)[0][0])
    if model == "margins":
        T = M[:t]
    elif model == "outcomes":
        T = 2.0 * (M[:t] > 0) - 1.0
    else:
        th, a, b = fit_irt((M[:t] > 0).astype(np.float64))
        T = th @ a.T + b
    mg = SharedKernelGP(U.shape[1])
    mg.fit(X, T)
    return float((mg.predict_mean(x) > 0).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "digits3.yaml"))
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--budget", type=int, default=200)
    ap.add_argument("--start", type=int, default=100)
    ap.add_argument("--step", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "value_models.json"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from bench_strategies import Evaluated, load_problems, run_one

    cfg_path = Path(args.config).resolve()
    cfg = next(iter(load_problems([cfg_path]).values()))
    ev = Evaluated(cfg, cfg_path.parent)
    lo, hi = np.asarray(ev.problem(args.budget).lower), np.asarray(ev.problem(args.budget).upper)
    names = [o.name for o in ev.cfg.objectives]
    margins: list[dict[int, np.ndarray]] = []

    class Recording:  # the evaluations run_one asks for, keeping every point's margins
        def problem(self, budget: int):
            return ev.problem(budget)

        def __call__(self, x: np.ndarray, number: int, split: str = "search"):
            vals, per, m = ev(x, number, split)
            margins.append(m or {})
            return vals, per, m

    err: dict[str, list[list[float]]] = {m: [] for m in MODELS}
    n_ex: list[int] = []
    for seed in range(args.seeds):
        margins.clear()
        t0 = time.perf_counter()
        run = run_one(Recording(), "mobo", {}, seed, args.budget, 2)  # type: ignore[arg-type]
        print(f"mobo seed {seed}: {args.budget} evaluations in {time.perf_counter() - t0:.1f}s", flush=True)
        U = (run["X"] - lo) / np.where(hi > lo, hi - lo, 1.0)
        for j, name in enumerate(names):
            if run["failed"] or any(j not in m for m in margins):
                raise SystemExit(f"objective {name!r}: a point has no margins (a failed trial, or an evaluator that reports "
                                 "none); this bench needs margins on every point")
            M = np.vstack([m[j] for m in margins])
            n_ex.append(M.shape[1])
            for model in MODELS:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    e = [abs(predict(model, U, run["V"][:, j], M, t, M.shape[1]) - run["V"][t, j])
                         for t in range(args.start, args.budget, args.step)]
                err[model].append([float(v) for v in e])
            print(f"  {name}: {M.shape[1]} examples", flush=True)
    out: dict[str, Any] = {
        "meta": {"config": str(cfg_path.relative_to(ROOT) if cfg_path.is_relative_to(ROOT) else cfg_path), "seeds": args.seeds,
                 "budget": args.budget, "start": args.start, "step": args.step, "objectives": names,
                 "python": platform.python_version(), "started": time.strftime("%Y-%m-%d %H:%M:%S")},
        "models": {},
    }
    print(f"\nmean |predicted - measured accuracy| at points {args.start}..{args.budget} (one example = 1/n); share off by > 1 example")
    print(f"{'model':12s} " + " ".join(f"{n:>16s}" for n in names) + f" {'all':>16s}")
    k = len(names)
    for model in MODELS:
        rows = err[model]  # seed-major, objective-minor
        per_obj = [np.concatenate([rows[s * k + j] for s in range(args.seeds)]) for j in range(k)]
        over = [np.concatenate([np.asarray(rows[s * k + j]) > 1.0 / n_ex[s * k + j] + 1e-9 for s in range(args.seeds)]) for j in range(k)]
        out["models"][model] = {"mae": [float(e.mean()) for e in per_obj], "over_one_example": [float(o.mean()) for o in over],
                                "mae_all": float(np.concatenate(per_obj).mean()), "over_all": float(np.concatenate(over).mean())}
        r = out["models"][model]
        print(f"{model:12s} " + " ".join(f"{m:.4f} / {o:4.0%}".rjust(16) for m, o in zip(r["mae"], r["over_one_example"], strict=True))
              + f"{r['mae_all']:.4f} / {r['over_all']:4.0%}".rjust(17))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
