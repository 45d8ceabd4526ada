"""Controller overhead per trial and worker busy fraction.

* overhead: a no-op evaluator on the toy MLP, local (in-process) and Ray (2 workers): wall time
  of the search loop (first trial recorded -> last trial finished) minus the time workers spent
  materializing and evaluating, per trial.
* busy fraction: 2 Ray workers with a 200 ms evaluator: worker time / (2 x loop wall time), and
  per worker over its own span (excludes actor start-up skew and the end-of-budget tail).

Writes bench/results/controller.json and prints a table. Targets: < 2 ms overhead per trial,
>= 97% busy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
os.environ["PYTHONPATH"] = str(REPO)


def run_case(root: Path, tmp: Path, name: str, backend: str, count: int, budget: int, delay: float) -> dict:
    import yaml

    from search.controller import launch
    from search.store import Store
    from tests.toy_problem import toy_config

    cfg = toy_config(root, name=name, budget=budget, backend=backend, count=count, store=str(tmp / f"{name}.db"))
    cfg["objectives"] = [
        {"name": "c", "evaluator": "python", "direction": "maximize",
         "settings": {"function": "tests.toy_problem:noop", "metric": "closeness", "kwargs": {"delay": delay}}}
    ]
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    assert launch(str(p)) == 0
    total = time.perf_counter() - t0
    st = Store.open(str(tmp / f"{name}.db"), readonly=True)
    trials = st.trials(st.study(name).id)
    start = min(t.started_at for t in trials)
    end = max(t.finished_at for t in trials)
    work = sum((t.materialize_s or 0) + (t.evaluate_s or 0) for t in trials)
    loop = end - start
    # per worker: its work over its own span (first trial dispatched -> last finished), so
    # actor start-up skew and the end-of-budget tail do not count as idleness
    spans = {}
    for t in trials:
        lo, hi, w = spans.get(t.worker, (t.started_at, t.finished_at, 0.0))
        spans[t.worker] = (min(lo, t.started_at), max(hi, t.finished_at), w + (t.materialize_s or 0) + (t.evaluate_s or 0))
    per_worker_busy = sum(w for _, _, w in spans.values()) / sum(hi - lo for lo, hi, _ in spans.values())
    return {
        "case": name,
        "busy_fraction_per_worker_span": per_worker_busy,
        "backend": backend,
        "workers": count,
        "trials": len(trials),
        "evaluator_delay_s": delay,
        "loop_wall_s": loop,
        "total_wall_s_incl_startup": total,
        "worker_time_s": work,
        "overhead_ms_per_trial": 1000 * (loop * count - work) / len(trials),
        "wall_ms_per_trial": 1000 * loop / len(trials),
        "busy_fraction": work / (count * loop),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=300)
    ap.add_argument("--busy-trials", type=int, default=60)
    args = ap.parse_args()
    import ray

    from tests.toy_problem import make_toy_models

    tmp = Path(tempfile.mkdtemp(prefix="bench_ctrl_"))
    root = tmp / "toy"
    make_toy_models(root)
    os.environ["TOY_ROOT"] = str(root)
    rows = [run_case(root, tmp, "noop_local", "local", 1, args.trials, 0.0)]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        rows.append(run_case(root, tmp, "noop_ray", "ray", 2, args.trials, 0.0))
        rows.append(run_case(root, tmp, "busy_ray_200ms", "ray", 2, args.busy_trials, 0.2))
    finally:
        ray.shutdown()
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "controller.json").write_text(json.dumps(rows, indent=2))
    print(f"{'case':<16}{'trials':>7}{'loop s':>9}{'overhead ms/trial':>19}{'wall ms/trial':>15}{'busy (loop)':>13}{'busy (per worker)':>19}")
    for r in rows:
        print(f"{r['case']:<16}{r['trials']:>7}{r['loop_wall_s']:>9.2f}{r['overhead_ms_per_trial']:>19.2f}{r['wall_ms_per_trial']:>15.2f}"
              f"{r['busy_fraction']:>13.1%}{r['busy_fraction_per_worker_span']:>19.1%}")


if __name__ == "__main__":
    main()
