"""What the teacher-forced generation margins cost, and that they give lm-eval's scores back (not a test).

On the tiny-lm zoo (``search/zoo/tiny_lm.py``), for ``--merges`` seeded random task-arithmetic
merges of the add and reverse experts (weights in [0, 1.5]), one ``lm_eval`` evaluator per task
(``tinylm_add``, ``tinylm_reverse``: greedy exact match, ``--limit`` documents each) evaluates
the live model in place. Per trial it records the whole evaluation's seconds (greedy
generation, lm-eval's scoring, and the teacher-forced pass), the teacher-forced pass's own
seconds (timed separately on the same samples), and whether the margins' signs equal
lm-eval's per-document exact match. One torch thread.

    python bench/bench_generation_margins.py                 # 8 merges, all 200 documents
    python bench/bench_generation_margins.py --merges 3 --limit 50
Writes bench/results/generation_margins.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--merges", type=int, default=8)
    ap.add_argument("--limit", type=int, default=None, help="documents per task (default: all 200)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "generation_margins.json"))
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evaluators import EvalContext, build_evaluator
    from evaluators.generation_margins import teacher_forced_margins
    from evaluators.lm_eval import _quiet_progress_bars
    from search.zoo import zoo_path

    torch.set_num_threads(1)
    root = zoo_path("zoo:tiny-lm/base", build=True).parent
    states = {n: AutoModelForCausalLM.from_pretrained(root / n).state_dict() for n in ("base", "add", "reverse")}
    model = AutoModelForCausalLM.from_pretrained(root / "base").eval()
    tok = AutoTokenizer.from_pretrained(root / "base")
    tasks = ("tinylm_add", "tinylm_reverse")
    settings = {"limit": args.limit} if args.limit else {}
    evs = {t: build_evaluator("lm_eval", {"tasks": [t], **settings}, EvalContext(seed=args.seed)) for t in tasks}
    rng = np.random.default_rng(args.seed)
    rows = []
    for i in range(args.merges):
        w = rng.uniform(0.0, 1.5, 2)
        with torch.no_grad():
            for k, p in model.state_dict().items():
                b = states["base"][k]
                p.copy_(b + w[0] * (states["add"][k] - b) + w[1] * (states["reverse"][k] - b))
        row = {"merge": i, "weights": [round(float(v), 4) for v in w]}
        for t, ev in evs.items():
            t0 = time.perf_counter()
            res = ev.evaluate(model, tok)
            total = time.perf_counter() - t0
            # the teacher-forced pass alone, again, on the same samples (lm-eval's logged requests)
            from lm_eval.evaluator import evaluate as lm_evaluate

            with torch.no_grad(), _quiet_progress_bars():
                out = lm_evaluate(lm=ev._lm, task_dict=ev.task_dict, samples=dict(ev.samples) or None, bootstrap_iters=0, log_samples=True)
            t1 = time.perf_counter()
            with torch.no_grad():
                m = teacher_forced_margins(ev._lm, ev.tasks, out["samples"], "exact_match", "none", ev._stop_tokens)
            tf = time.perf_counter() - t1
            per = res.per_sample[t]
            row[t] = {
                "exact_match": res.metrics["exact_match,none"],
                "docs": int(len(per)),
                "eval_s": round(total, 4),
                "margins_s": round(tf, 4),
                "margins_reported": res.margins is not None,
                "signs_equal": bool(m is not None and np.array_equal(m > 0, per > 0.5)),
            }
        rows.append(row)
        print(f"merge {i} {row['weights']}: " + "; ".join(
            f"{t} em {row[t]['exact_match']:.3f} eval {row[t]['eval_s']:.2f}s margins {row[t]['margins_s']:.3f}s "
            f"{'ok' if row[t]['signs_equal'] else 'MISMATCH'}" for t in tasks), flush=True)
    summary = {}
    for t in tasks:
        ev_s = [r[t]["eval_s"] for r in rows]
        tf_s = [r[t]["margins_s"] for r in rows]
        summary[t] = {
            "eval_s_mean": round(float(np.mean(ev_s)), 4),
            "margins_s_mean": round(float(np.mean(tf_s)), 4),
            "margins_share_of_eval": round(float(np.mean(tf_s) / np.mean(ev_s)), 4),
            "all_signs_equal": all(r[t]["signs_equal"] for r in rows),
            "all_reported": all(r[t]["margins_reported"] for r in rows),
            "exact_match_range": [min(r[t]["exact_match"] for r in rows), max(r[t]["exact_match"] for r in rows)],
        }
    result = {"meta": {"merges": args.merges, "limit": args.limit, "seed": args.seed, "torch_threads": 1}, "rows": rows, "summary": summary}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n{'task':16s} {'docs':>5s} {'eval s/trial':>13s} {'margins s':>10s} {'share':>7s}  signs == lm-eval")
    for t, s in summary.items():
        print(f"{t:16s} {rows[0][t]['docs']:5d} {s['eval_s_mean']:13.3f} {s['margins_s_mean']:10.3f} {s['margins_share_of_eval']:7.3f}  "
              f"{'all' if s['all_signs_equal'] else 'NOT all'} ({args.merges} merges; exact match {s['exact_match_range'][0]:.3f}-{s['exact_match_range'][1]:.3f})")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
