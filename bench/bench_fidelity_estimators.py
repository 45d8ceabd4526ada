"""How well a few examples predict a merge's full-set accuracy: the plain subset mean against
estimators learned from the run's earlier full evaluations (not a test).

Reads the fidelity-off runs that ``bench_fidelity.py`` left under ``bench/results/fidelity/``
(``--runs``, a glob; every trial scored on every example, per-example 0/1 results in the store).
For each run and objective, in finish order, trial t's full-set accuracy is estimated from k
of its examples (``--fractions`` of them) using only the trials before it (from the
``--history``-th trial on; the learned parts are refitted every ``--refit`` trials):

* ``subset``: the mean over a seeded random k-subset (what a fidelity level measures);
* ``paired``: the subset mean corrected by the ``--neighbours`` earlier trials closest to t on
  that subset: mean over them of (their full accuracy - their subset mean); the difference the
  paired promotion rule estimates, turned into a value;
* ``anchor``: at most k anchor examples, the medoids of a k-means clustering of the examples by
  their 0/1 results across the earlier trials (one per distinct pattern when there are at most
  k), each weighted by its cluster's size (anchor points: examples that stand for the others);
* ``irt``: a d-dimensional logistic item-response model fitted to the earlier trials
  (``bench_value_models.fit_irt``); t's ability is fitted on its seeded random k-subset and the
  unscored examples are predicted.

Reports the mean absolute error per estimator and fraction (and its ratio to ``subset``'s), over
every (run, objective, trial) estimated.

    python bench/bench_fidelity_estimators.py --runs 'bench/results/fidelity/tiny-lm-1000-*-off-*.db'
Writes bench/results/fidelity_estimators.json (``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from bench_value_models import fit_irt  # noqa: E402  (the item-response fit, shared)

ESTIMATORS = ("subset", "paired", "anchor", "irt")


def load_matrices(path: str) -> dict[str, np.ndarray]:
    """Per objective (per-sample key), the 0/1 results of every complete trial, in finish order."""
    from search.pareto import _finish_order
    from search.store import COMPLETE, open_run

    store, study = open_run(Path(path).stem, path)
    try:
        rows: dict[str, list[np.ndarray]] = {}
        for t in _finish_order(store.trials(study.id, states=[COMPLETE])):
            for k, v in store.per_sample(t.id).items():
                if v.ndim == 1 and np.all((v == 0) | (v == 1)):
                    rows.setdefault(k, []).append(v.astype(np.float64))
        return {k: np.stack(v) for k, v in rows.items() if len({len(r) for r in v}) == 1}
    finally:
        store.close()


def anchors(H: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """k examples standing for the others and their shares of the examples: the examples are
    grouped by their 0/1 results across the earlier trials (the columns of ``H``); with at most
    k distinct patterns, one example per pattern, else the medoids of a k-means over the
    patterns (weighted by how many examples share each)."""
    from sklearn.cluster import KMeans

    patterns, first, inverse, counts = np.unique(H.T, axis=0, return_index=True, return_inverse=True, return_counts=True)
    N = H.shape[1]
    if len(patterns) <= k:
        return first, counts / N
    km = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(patterns, sample_weight=counts)
    idx, w = [], []
    for c in range(k):
        members = np.flatnonzero(km.labels_ == c)
        if not len(members):
            continue
        d = np.sum((patterns[members] - km.cluster_centers_[c]) ** 2, axis=1)
        idx.append(int(first[members[np.argmin(d)]]))
        w.append(int(counts[members].sum()))
    return np.asarray(idx), np.asarray(w, dtype=np.float64) / N


def irt_ability(a: np.ndarray, b: np.ndarray, y: np.ndarray, lam: float = 1.0) -> np.ndarray:
    """MAP ability of one trial from its results ``y`` on items (a, b) (Gaussian prior)."""
    from scipy.optimize import minimize

    def loss(th: np.ndarray) -> tuple[float, np.ndarray]:
        L = a @ th + b
        g = 1.0 / (1.0 + np.exp(-L)) - y
        return float(np.sum(np.logaddexp(0.0, L) - y * L) + 0.5 * lam * th @ th), a.T @ g + lam * th

    return minimize(loss, np.zeros(a.shape[1]), jac=True, method="L-BFGS-B").x


def estimate_run(Y: np.ndarray, fractions: list[float], history: int, refit: int, neighbours: int, seed: int,
                 irt_dim: int, anchor_max: int = 100) -> dict[str, dict[str, list[float]]]:
    """Absolute errors per fraction and estimator over the trials of one run's objective."""
    T, N = Y.shape
    rng = np.random.default_rng(seed)
    perm = rng.permutation(N)  # nested seeded subsets, as a fidelity level draws them
    truth = Y.mean(1)
    err: dict[str, dict[str, list[float]]] = {f"{f:g}": {e: [] for e in ESTIMATORS} for f in fractions}
    ks = {f: min(N, max(1, int(round(f * N)))) for f in fractions}  # examples scored per fraction
    fitted: dict[str, Any] = {}
    for t in range(history, T):
        H, y = Y[:t], Y[t]
        if (t - history) % refit == 0:
            fitted = {"irt": fit_irt(H, d=irt_dim)}
            for f, k in ks.items():
                if k <= anchor_max:
                    fitted[f"anchor{f}"] = anchors(H, k, seed)
        for f, k in ks.items():
            S = perm[:k]
            e = err[f"{f:g}"]
            sub = y[S].mean()
            e["subset"].append(abs(sub - truth[t]))
            near = np.argsort(np.abs(H[:, S] - y[S]).sum(1), kind="stable")[:neighbours]
            e["paired"].append(abs(sub + np.mean(H[near].mean(1) - H[near][:, S].mean(1)) - truth[t]))
            if f"anchor{f}" in fitted:
                idx, w = fitted[f"anchor{f}"]
                e["anchor"].append(abs(float(w @ y[idx]) - truth[t]))
            _, A, B = fitted["irt"]
            th = irt_ability(A[S], B[S], y[S])
            p = 1.0 / (1.0 + np.exp(-(A @ th + B)))
            p[S] = y[S]
            e["irt"].append(abs(p.mean() - truth[t]))
    return err


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default=str(ROOT / "bench" / "results" / "fidelity" / "*-off-*.db"))
    ap.add_argument("--fractions", default="0.02,0.05,0.1,0.3")
    ap.add_argument("--history", type=int, default=10, help="earlier full trials before the first estimate")
    ap.add_argument("--refit", type=int, default=10, help="refit the anchors and the item-response model every so many trials")
    ap.add_argument("--neighbours", type=int, default=5)
    ap.add_argument("--irt-dim", type=int, default=3)
    ap.add_argument("--anchor-max", type=int, default=100, help="no anchor estimate above this many examples (k-means cost)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "fidelity_estimators.json"))
    args = ap.parse_args()
    fractions = [float(v) for v in args.fractions.split(",")]
    paths = sorted(glob.glob(args.runs))
    if not paths:
        raise SystemExit(f"--runs: no store matches {args.runs!r} (run bench/bench_fidelity.py first)")
    t0 = time.time()
    allerr: dict[str, dict[str, list[float]]] = {f"{f:g}": {e: [] for e in ESTIMATORS} for f in fractions}
    per_run: dict[str, Any] = {}
    for i, path in enumerate(paths):
        for key, Y in load_matrices(path).items():
            if len(Y) <= args.history:
                continue
            err = estimate_run(Y, fractions, args.history, args.refit, args.neighbours, seed=i, irt_dim=args.irt_dim,
                               anchor_max=args.anchor_max)
            per_run[f"{Path(path).stem}:{key}"] = {f: {e: float(np.mean(v)) for e, v in d.items() if v} for f, d in err.items()}
            for f, d in err.items():
                for e, v in d.items():
                    allerr[f][e].extend(v)
        print(f"  {Path(path).stem}: done ({time.time() - t0:.0f}s)", flush=True)
    summary = {f: {e: {"mae": float(np.mean(v)), "p90": float(np.quantile(v, 0.9)), "n": len(v)} for e, v in d.items() if v}
               for f, d in allerr.items()}
    print("\nmean absolute error of the full-set accuracy estimated from k of N examples (ratio to the subset mean's)")
    print(" | ".join(["fraction", *ESTIMATORS, "estimates"]))
    for f, d in summary.items():
        base = d["subset"]["mae"]
        cells = [f] + ["-" if e not in d else f"{d[e]['mae']:.4f} ({d[e]['mae'] / base:.2f})" if base > 0 else f"{d[e]['mae']:.4f}"
                      for e in ESTIMATORS]
        print(" | ".join(cells + [str(d["subset"]["n"])]))
    out = {"args": vars(args), "machine": platform.platform(), "runs": paths, "summary": summary, "per_run": per_run,
           "wall_s": time.time() - t0}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"\nwrote {args.out} ({out['wall_s']:.0f}s)")


if __name__ == "__main__":
    main()
