"""Materialization speed and memory on CPU (not a test).

A Llama-shaped fp32 model of ~100M parameters (random weights, built from a LlamaConfig) and
3 experts (random perturbations) are saved as safetensors; each case then runs in a fresh
subprocess like a worker does: load the base model, ``build_materializer`` from the config's merge and model settings
(tensor-by-tensor reads), and time ``apply`` against a plain tensor copy measured in the
same process, interleaved with the merges so machine noise hits both alike.

Reported per case:
* merge_s: median seconds per materialization;
* copy floor: time of a plain copy of (experts + 2) x model bytes (``copy_Kp2_s``; the
  brief's floor: ratio = copy_time / merge_time, target >= 0.8 for task_arithmetic) and
  the traffic-matched floor, a copy whose read + write traffic equals the (K + 2) x model
  bytes a merge must move (``copy_traffic_s`` = (K + 2) / 2 model copies; stricter);
* peak memory: ru_maxrss of the worker process minus its RSS before loading anything but
  torch, over (experts + 2) x model bytes (the model itself + base + K task vectors).

    python bench/bench_materialize.py                # ~100M params, 2 torch threads
    python bench/bench_materialize.py --layers 2 --hidden 256 --vocab 4000   # quick
Writes bench/results/materialize.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERTS = ("e0", "e1", "e2")

CASES = [
    {"label": "task_arithmetic", "method": "task_arithmetic", "search": {"weight": [0.0, 1.0]}, "params": {}},
    {"label": "ties (density searched)", "method": "ties", "search": {"weight": [0.0, 1.0], "density": [0.1, 0.9]}, "params": {}},
    {"label": "ties (density fixed 0.5)", "method": "ties", "search": {"weight": [0.0, 1.0]}, "params": {"density": 0.5}},
    {"label": "dare_ties (density searched)", "method": "dare_ties", "search": {"weight": [0.0, 1.0], "density": [0.1, 0.9]}, "params": {}},
]


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_models(folder: Path, args: argparse.Namespace) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    conf = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
        tie_word_embeddings=False, max_position_embeddings=512,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(conf).eval()
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder / "base")
    for i, e in enumerate(EXPERTS):
        g = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            saved = [p.detach().clone() for p in model.parameters()]
            for p in model.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=g))
            model.save_pretrained(folder / e)
            for p, s in zip(model.parameters(), saved, strict=True):
                p.copy_(s)
    return {"params": n, "model_bytes": 4 * n}


def worker(spec: dict) -> dict:
    """One case, in a fresh process: what a search worker does at start and per trial."""
    import numpy as np
    import torch

    torch.set_num_threads(spec["threads"])
    rss0 = rss_bytes()
    from search.config import parse_config
    from search.merge.materializer import build_materializer
    from search.models import load_model
    from search.space import CoefficientSpace

    folder = Path(spec["folder"])
    cfg = parse_config({
        "name": "bench", "seed": 0,
        "models": {"base": str(folder / "base"), "experts": [{"name": e, "path": str(folder / e)} for e in EXPERTS]},
        "merge": {"method": spec["method"], "granularity": "layer", "search": spec["search"], "params": spec["params"],
                  "plan": "resident"},
        "objectives": [{"name": "o", "evaluator": "dummy", "direction": "maximize"}],
    })
    model = load_model(cfg.models.base, cfg)
    rss_model = rss_bytes()
    space = CoefficientSpace.build([n for n, _ in model.named_parameters()], list(EXPERTS), cfg.merge)
    t0 = time.perf_counter()
    mat = build_materializer(cfg.merge, cfg.models, model, space, "cpu", base_dir=cfg.base_dir, seed=cfg.seed)
    if spec.get("chunk"):
        mat.chunk = spec["chunk"]
    build_s = time.perf_counter() - t0
    maxrss_build = maxrss_bytes()

    pairs = [(e.param.data, e.base.view(e.param.shape)) for e in mat.entries]

    def copy_once() -> float:
        t = time.perf_counter()
        for p, b in pairs:
            p.copy_(b)
        return time.perf_counter() - t

    rng = np.random.default_rng(0)
    copy_once()
    mat.apply(rng.uniform(space.lower, space.upper), 0)  # warm-up
    merges, copies = [], []
    for r in range(spec["repeat"]):
        copies.append(copy_once())
        mat.apply(rng.uniform(space.lower, space.upper), r + 1)
        merges.append(mat.last_apply_seconds)
    K = len(EXPERTS)
    c1 = float(np.median(copies))
    m = float(np.median(merges))
    return {
        "build_s": build_s,
        "merge_s": m,
        "merge_min_s": float(np.min(merges)),
        "merges_s": merges,
        "copy_model_s": c1,
        "copy_Kp2_s": (K + 2) * c1,
        "copy_traffic_s": (K + 2) / 2 * c1,
        "ratio_copy_Kp2": (K + 2) * c1 / m,
        "ratio_traffic": (K + 2) / 2 * c1 / m,
        "rss_start": rss0,
        "rss_after_model": rss_model,
        "maxrss_after_build": maxrss_build,
        "maxrss_end": maxrss_bytes(),
        "held": mat.nbytes(),
        "plan": mat.plan.kind,
        "chunk": mat.chunk or 0,  # 0: the per-kernel default (methods.default_chunk)
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--intermediate", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--chunk", type=int, nargs="*", default=[0], help="kernel chunk sizes to try (0 = the default)")
    ap.add_argument("--cases", nargs="*", default=None, help="case labels to run (default: all)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "materialize.json"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))))
        return

    cases = [c for c in CASES if args.cases is None or c["label"] in args.cases or c["method"] in args.cases]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_materialize_") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        info = make_models(folder, args)
        print(f"model: {info['params'] / 1e6:.1f}M params, {info['model_bytes'] / 2**20:.0f} MiB fp32; "
              f"3 experts saved in {time.perf_counter() - t0:.1f}s", flush=True)
        for case in cases:
            for chunk in args.chunk:
                spec = {**case, "folder": str(folder), "threads": args.threads, "repeat": args.repeat, "chunk": chunk}
                env = {**os.environ, "PYTHONPATH": str(ROOT)}
                load0 = os.getloadavg()[0]
                proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                                      text=True, env=env, cwd=ROOT)
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if proc.returncode or line is None:
                    print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
                    raise SystemExit(f"case {case['label']} failed")
                r = json.loads(line[7:])
                M = info["model_bytes"]
                K = len(EXPERTS)
                r.update(case)
                r["loadavg_before"] = load0
                r["peak_total_over_Kp2"] = r["maxrss_end"] / ((K + 2) * M)
                r["peak_merge_over_Kp2"] = (r["maxrss_end"] - r["rss_start"]) / ((K + 2) * M)
                results.append(r)
                print(f"  done {case['label']} chunk={r['chunk']}: {r['merge_s'] * 1e3:.0f} ms", flush=True)

    out = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch_threads": args.threads, "loadavg_end": os.getloadavg()},
        "model": {**info, "layers": args.layers, "hidden": args.hidden, "intermediate": args.intermediate,
                  "vocab": args.vocab, "experts": len(EXPERTS), "dtype": "float32"},
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    M = info["model_bytes"]
    hdr = (f"{'case':30s} {'chunk':>8s} {'merge ms':>9s} {'min ms':>8s} {'copy(K+2)M ms':>14s} {'ratio':>6s} "
           f"{'traffic ms':>10s} {'ratio':>6s} {'build s':>8s} {'peak/(K+2)M':>12s}")
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        print(f"{r['label']:30s} {r['chunk']:>8d} {r['merge_s'] * 1e3:9.1f} {r['merge_min_s'] * 1e3:8.1f} "
              f"{r['copy_Kp2_s'] * 1e3:14.1f} {r['ratio_copy_Kp2']:6.2f} {r['copy_traffic_s'] * 1e3:10.1f} "
              f"{r['ratio_traffic']:6.2f} {r['build_s']:8.1f} {r['peak_total_over_Kp2']:6.2f} ({r['peak_merge_over_Kp2']:.2f})")
    print(f"(K+2)M = {5 * M / 2**20:.0f} MiB; peak = worker ru_maxrss / (K+2)M (in brackets: minus the RSS before "
          f"loading the model); wrote {args.out}")


if __name__ == "__main__":
    main()
