"""GPU sanity check and merge-speed benchmark for one NVIDIA GPU (PyTorch already installed).

    python bench/gpu_check.py             # ~1B Llama in bf16 on cuda; a few minutes at most
    python bench/gpu_check.py --tiny      # a tiny Llama on CPU: a smoke test of this script
    python bench/gpu_check.py --engines   # then the hf-vs-vllm engine section (bench/engine_bench.py)

What it does, in one process and on one device:

1. builds a Llama-shaped model from a ``LlamaConfig`` (random init, no hub; ~1.1B parameters:
   hidden 2048, 22 layers, MLP 5632, GQA 32/4 heads, vocab 32000) in bfloat16, and K = 3
   "experts" = base + small random perturbations (different per expert);
2. builds the project's merge engine (``search.merge.materializer.Materializer``) from these
   in-memory tensors with the ``resident`` plan, for ``task_arithmetic`` (weights searched)
   and ``ties`` (weight + density searched, per 4-layer block: the 7B GPU config's space), and
   times ``apply(x, trial_number)`` on random in-bounds coefficient vectors after warm-up;
3. measures the device-copy floor of the same traffic: a merge reads base + K task vectors
   and writes the model, (K + 2) x model bytes; a plain ``dst.copy_(src)`` of the model's
   bytes moves 2 x model bytes, so floor = copy time x (K + 2) / 2. Timed with CUDA events
   after warm-up (perf_counter on CPU). The ratio apply / floor is the number to watch
   (~1 would be bandwidth-bound; TIES does more passes than task arithmetic by design);
3b. times the ``streamed`` memory plan (task vectors in pinned host memory, copied tensor by
   tensor on a side CUDA stream, double-buffered) for ``task_arithmetic`` against plan (a)
   (``resident``, step 2) and against the host->device transfer floor: a pinned
   ``dst.copy_(src, non_blocking=True)`` of the model's bytes x K (the bytes a streamed
   merge must move over the bus per trial). On CPU (``--tiny``) the same code path runs
   synchronously and "host->device" is a host copy;
3c. checks every memory plan against ``resident`` on the device: task_arithmetic with
   ``streamed`` and ``streamed`` with the base streamed too, ties (density fixed) with
   ``sparse`` and ``streamed``; the largest absolute difference over all parameters and
   whether the merged models are bit-identical (``plan_equality`` in the JSON);
4. runs a small lm-eval generation task with the merged model on the device: the project's
   ``lm_eval`` evaluator on the shipped tiny-lm task data (``evaluators/tasks/tinylm``) with
   the tiny-lm byte tokenizer (the weights are random, so the score is ~0: this checks that
   evaluation runs on the GPU and how long it takes, not quality);
4b. with ``--engines``: the lm_eval engines hf and vllm per trial (materialize / push /
   evaluate seconds on a 200 x 256-token generation task and a loglikelihood task, the push
   against the device copy floor): ``bench/engine_bench.py``, under ``engines`` in the JSON
   (CPU-sized with ``--tiny``; the vllm half needs vLLM installed);
5. writes JSON to ``$OUT/gpu_check.json`` when ``$OUT`` is set, else
   ``bench/results/gpu_check.json`` (or ``--out``; ``gpu_check_tiny.json`` with ``--tiny``),
   and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

# ~1.1B parameters (the TinyLlama-1.1B shape); --tiny: a few hundred thousand
LLAMA_1B = dict(
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=22,
    num_attention_heads=32,
    num_key_value_heads=4,
    vocab_size=32000,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
)
LLAMA_TINY = dict(
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=8,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=512,
    max_position_embeddings=128,
    tie_word_embeddings=False,
)


# ----------------------------------------------------------------------------- timing


class Timer:
    """Median wall time of a callable: CUDA events on a GPU, perf_counter elsewhere."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def measure(self, fn: Any, reps: int, warmup: int = 2) -> list[float]:
        for i in range(warmup):
            fn(-1 - i)
        self.sync()
        out = []
        for i in range(reps):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn(i)
                end.record()
                end.synchronize()
                out.append(start.elapsed_time(end) / 1000.0)
            else:
                t0 = time.perf_counter()
                fn(i)
                out.append(time.perf_counter() - t0)
        return out


def _stats(xs: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(xs), "min_s": min(xs), "max_s": max(xs), "n": len(xs)}


# ----------------------------------------------------------------------------- model + experts


def build_model(shape: dict[str, Any], dtype: torch.dtype, device: torch.device, tok: Any, seed: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        **shape,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    model.to(dtype)
    model.eval()
    model.requires_grad_(False)
    return model


def make_experts(model: torch.nn.Module, k: int, scale: float, seed: int) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """The base (a copy of the model's weights) and k perturbed copies, on the model's device."""
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    experts = []
    for t in range(k):
        g = torch.Generator(device=next(model.parameters()).device).manual_seed(seed + 1000 * (t + 1))
        e = {}
        for n, b in base.items():
            std = float(b.float().std()) if b.numel() > 1 else 1.0
            noise = torch.randn(b.shape, generator=g, device=b.device, dtype=torch.float32)
            # sparse-ish deltas of varying size, so TIES has something to trim and elect
            noise.mul_(torch.rand(b.shape, generator=g, device=b.device) < 0.5)
            e[n] = (b.float() + noise.mul_(scale * (std or 1.0))).to(b.dtype)
        experts.append(e)
    return base, experts


def model_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


# ----------------------------------------------------------------------------- parts


def copy_floor(nbytes: int, dtype: torch.dtype, device: torch.device, timer: Timer, reps: int) -> dict[str, Any]:
    # one flat buffer in the model's dtype (a uint8 copy takes a slow path on CPU)
    n = nbytes // torch.empty(0, dtype=dtype).element_size()
    src = torch.randn(n, dtype=torch.float32, device=device).to(dtype)
    dst = torch.empty_like(src)
    nbytes = n * src.element_size()
    times = timer.measure(lambda _i: dst.copy_(src), reps, warmup=3)
    med = statistics.median(times)
    return {**_stats(times), "bytes": nbytes, "traffic_GBps": 2 * nbytes / med / 1e9}


def h2d_floor(nbytes: int, dtype: torch.dtype, device: torch.device, timer: Timer, reps: int) -> dict[str, Any]:
    """Pinned host -> device copy of ``nbytes`` (a plain host copy on CPU)."""
    n = nbytes // torch.empty(0, dtype=dtype).element_size()
    pin = device.type == "cuda"
    src = torch.empty(n, dtype=dtype, pin_memory=pin)
    src.copy_(torch.randn(n, dtype=torch.float32).to(dtype))
    dst = torch.empty(n, dtype=dtype, device=device)
    times = timer.measure(lambda _i: dst.copy_(src, non_blocking=pin), reps, warmup=3)
    med = statistics.median(times)
    return {**_stats(times), "bytes": n * src.element_size(), "pinned": pin, "GBps": n * src.element_size() / med / 1e9}


def build_space(model: torch.nn.Module, n_experts: int, method: str, granularity: str, search: dict[str, tuple[float, float]],
                params: dict[str, Any] | None = None) -> Any:
    """The coefficient space of ``model``'s parameters for ``n_experts`` experts e0, e1, ..."""
    from search.config import MergeConfig
    from search.space import CoefficientSpace

    cfg = MergeConfig(method=method, granularity=granularity, search=search, params=params or {})
    return CoefficientSpace.build([n for n, _ in model.named_parameters()], [f"e{t}" for t in range(n_experts)], cfg)


def bench_plans(
    model: torch.nn.Module,
    base: dict[str, torch.Tensor],
    experts: list[dict[str, torch.Tensor]],
    timer: Timer,
    reps: int,
    granularity: str,
    mbytes: int,
    dtype: torch.dtype,
    resident: dict[str, Any],
) -> dict[str, Any]:
    """Plan (b) ``streamed`` vs plan (a) ``resident`` (from ``resident``) and the transfer floor."""
    from search.merge.materializer import Materializer

    device = next(model.parameters()).device
    K = len(experts)
    h2d = h2d_floor(mbytes, dtype, device, timer, reps)
    h2d_floor_s = h2d["median_s"] * K
    space = build_space(model, K, "task_arithmetic", granularity, {"weight": (0.0, 1.0)})
    t0 = time.perf_counter()
    mat = Materializer(model, base, experts, space, "task_arithmetic", {}, run_seed=0, plan="streamed")
    timer.sync()
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(1)
    xs = [space.lower + rng.random(space.dim) * (space.upper - space.lower) for _ in range(reps + 4)]
    times = timer.measure(lambda i: mat.apply(xs[i % len(xs)], trial_number=2000 + i), reps, warmup=2)
    streamed = {
        "plan": mat.plan.describe(),
        "build_s": build_s,
        "apply": _stats(times),
        "held_bytes": mat.nbytes(),
        "ratio_to_h2d_floor": statistics.median(times) / h2d_floor_s,
    }
    return {
        "method": "task_arithmetic",
        "h2d": h2d,
        "h2d_floor_s": h2d_floor_s,
        "h2d_floor_definition": "median pinned host->device copy of model bytes x K (the bytes a streamed merge moves over the bus)",
        "resident": {"apply": resident["apply"], "plan": resident["plan"]},
        "streamed": streamed,
        "streamed_over_resident": statistics.median(times) / resident["apply"]["median_s"],
    }


def check_plans_equal(
    model: torch.nn.Module,
    base: dict[str, torch.Tensor],
    experts: list[dict[str, torch.Tensor]],
    granularity: str,
) -> dict[str, Any]:
    """Every memory plan against ``resident`` on the same coefficients, on this device.

    task_arithmetic (weights searched): streamed, streamed with the base streamed too;
    ties (weight searched, density fixed at 0.5): sparse, streamed. Reports the largest
    absolute difference over all parameters and whether the merged models are bit-identical.
    """
    from search.merge.materializer import Materializer
    from search.merge.plan import Plan

    K = len(experts)
    cases = {
        "task_arithmetic": ({"weight": (0.0, 1.0)}, {}, ["streamed", "streamed+base"]),
        "ties": ({"weight": (0.0, 1.0)}, {"density": 0.5}, ["sparse", "streamed"]),
    }
    out: dict[str, Any] = {}
    for method, (search, fixed, plans) in cases.items():
        space = build_space(model, K, method, granularity, search, fixed)
        rng = np.random.default_rng(7)
        xs = [space.lower + rng.random(space.dim) * (space.upper - space.lower) for _ in range(2)]
        ref: list[dict[str, torch.Tensor]] = []
        mat = Materializer(model, base, experts, space, method, {}, run_seed=0, plan="resident")
        for i, x in enumerate(xs):
            mat.apply(x, trial_number=i)
            ref.append({n: p.detach().clone() for n, p in model.named_parameters()})
        del mat
        for kind in plans:
            plan: str | Plan = Plan("streamed", stream_base=True) if kind == "streamed+base" else kind
            mat = Materializer(model, base, experts, space, method, {}, run_seed=0, plan=plan)
            worst, identical = 0.0, True
            for i, x in enumerate(xs):
                mat.apply(x, trial_number=i)
                for n, p in model.named_parameters():
                    d = (p.detach().float() - ref[i][n].float()).abs().max().item()
                    worst = max(worst, d)
                    identical = identical and torch.equal(p.detach(), ref[i][n])
            out[f"{method}/{kind}"] = {"plan": mat.plan.describe(), "max_abs_diff": worst, "bit_identical": identical}
            print(f"plan check {method}/{kind}: max |diff| vs resident {worst:.3g}, bit-identical {identical}", flush=True)
            del mat
        del ref
        if next(model.parameters()).device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def bench_method(
    method: str,
    search: dict[str, tuple[float, float]],
    model: torch.nn.Module,
    base: dict[str, torch.Tensor],
    experts: list[dict[str, torch.Tensor]],
    timer: Timer,
    reps: int,
    granularity: str,
) -> tuple[Any, dict[str, Any]]:
    from search.merge.materializer import Materializer

    space = build_space(model, len(experts), method, granularity, search)
    t0 = time.perf_counter()
    mat = Materializer(model, base, experts, space, method, {}, run_seed=0, plan="resident")
    timer.sync()
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    xs = [space.lower + rng.random(space.dim) * (space.upper - space.lower) for _ in range(reps + 4)]
    wall: list[float] = []

    def one(i: int) -> None:
        mat.apply(xs[i % len(xs)], trial_number=1000 + i)
        wall.append(mat.last_apply_seconds or float("nan"))

    times = timer.measure(one, reps, warmup=2)
    wall = wall[2:]  # drop the warm-up calls
    restore = timer.measure(lambda _i: mat.restore_base(), reps, warmup=1)
    out = {
        "coordinates": space.dim,
        "groups": len(space.groups),
        "searched": list(space.searched),
        "plan": mat.plan.describe(),
        "build_s": build_s,
        "apply": _stats(times),
        "apply_wall_s_median": statistics.median(wall) if wall else None,
        "restore_base": _stats(restore),
    }
    mat.apply(xs[0], trial_number=1)  # leave a merged model in place for the evaluation
    return mat, out


def run_generation(model: torch.nn.Module, tok: Any, device: torch.device, limit: int, max_gen_toks: int) -> dict[str, Any]:
    """The project's lm_eval evaluator on tinylm_add (falls back to plain generate if absent)."""
    t0 = time.perf_counter()
    try:
        from evaluators import EVALUATORS, build_evaluator, context_for

        EVALUATORS.get("lm_eval")
    except Exception as e:  # the evaluator module is not there (or lm-eval is missing)
        return _plain_generate(model, tok, device, limit, max_gen_toks, reason=f"{type(e).__name__}: {e}")
    settings = {"tasks": ["tinylm_add"], "metric": "exact_match,none", "limit": limit}
    ctx = context_for(None, split="search", device=str(device))
    try:
        ev = build_evaluator("lm_eval", settings, ctx)
    except Exception as e:
        return _plain_generate(model, tok, device, limit, max_gen_toks, reason=f"lm_eval evaluator: {type(e).__name__}: {e}")
    build_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    res = ev.evaluate(model, tok, seed=0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {
        "how": "evaluators.lm_eval (lm-eval harness, HFLM on the live model)",
        "task": "tinylm_add",
        "limit": limit,
        "build_s": build_s,
        "evaluate_s": time.perf_counter() - t1,
        "metrics": {k: float(v) for k, v in res.metrics.items() if isinstance(v, (int, float))},
    }


def _plain_generate(model: torch.nn.Module, tok: Any, device: torch.device, limit: int, max_gen_toks: int, reason: str) -> dict[str, Any]:
    path = ROOT / "evaluators" / "tasks" / "tinylm" / "add_validation.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()][:limit]
    prompts = [r["prompt"] for r in rows]
    t0 = time.perf_counter()
    enc = tok(prompts, return_tensors="pt", padding=True).to(device)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_gen_toks, do_sample=False, pad_token_id=tok.pad_token_id)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    texts = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    em = float(np.mean([t.split("\n")[0].strip() == r["answer"] for t, r in zip(texts, rows, strict=True)]))
    return {
        "how": f"model.generate on {path.name} (fallback: {reason})",
        "task": "tinylm_add",
        "limit": len(prompts),
        "evaluate_s": time.perf_counter() - t0,
        "metrics": {"exact_match": em},
    }


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny model on CPU (smoke test of this script)")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --tiny)")
    ap.add_argument("--experts", type=int, default=3)
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (default 10; 3 with --tiny)")
    ap.add_argument("--limit", type=int, default=None, help="lm-eval documents (default 100; 8 with --tiny)")
    ap.add_argument("--no-plans", action="store_true", help="skip the memory-plan comparison (streamed vs resident)")
    ap.add_argument("--out", default=None, help="JSON path (default $OUT/ or bench/results/, gpu_check[_tiny].json)")
    ap.add_argument("--engines", action="store_true", help="also time the lm_eval engines hf vs vllm (bench/engine_bench.py)")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    device = torch.device(args.device or ("cpu" if args.tiny else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device visible to torch (use --tiny for a CPU smoke test)", file=sys.stderr)
        return 2
    if device.type == "cpu":
        torch.set_num_threads(1)  # one thread per process on small CPU machines (docs/facts.md)
    reps = args.reps or (3 if args.tiny else 10)
    limit = args.limit or (8 if args.tiny else 100)
    shape = LLAMA_TINY if args.tiny else LLAMA_1B
    dtype = torch.bfloat16
    timer = Timer(device)

    from search.zoo.tiny_lm import build_tokenizer

    tok = build_tokenizer()
    model = build_model(shape, dtype, device, tok, seed=0)
    n_params = sum(p.numel() for p in model.parameters())
    mbytes = model_bytes(model)
    base, experts = make_experts(model, args.experts, scale=0.02, seed=0)
    K = len(experts)
    print(f"model: {n_params / 1e9:.3f}B parameters, {mbytes / 2**30:.2f} GiB in {dtype}, {K} experts, device {device}", flush=True)

    result: dict[str, Any] = {
        "script": "bench/gpu_check.py",
        "tiny": args.tiny,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "model": {"shape": shape, "parameters": n_params, "bytes": mbytes, "dtype": str(dtype)},
        "experts": K,
        "granularity": "block:4",
    }

    floor = copy_floor(mbytes, dtype, device, timer, reps)
    floor_s = floor["median_s"] * (K + 2) / 2
    result["copy"] = floor
    result["floor_s"] = floor_s
    result["floor_definition"] = "median dst.copy_(src) time of model bytes x (K + 2) / 2 (same read+write traffic as a merge)"

    methods = {
        "task_arithmetic": {"weight": (0.0, 1.0)},
        "ties": {"weight": (0.0, 1.0), "density": (0.2, 1.0)},
    }
    result["methods"] = {}
    for method, search in methods.items():
        mat, out = bench_method(method, search, model, base, experts, timer, reps, "block:4")
        out["ratio_to_floor"] = out["apply"]["median_s"] / floor_s
        result["methods"][method] = out
        print(f"{method}: apply {out['apply']['median_s'] * 1e3:.1f} ms ({out['ratio_to_floor']:.2f}x floor), plan {out['plan']}", flush=True)
        del mat
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if not args.no_plans:
        plans = bench_plans(model, base, experts, timer, reps, "block:4", mbytes, dtype, result["methods"]["task_arithmetic"])
        plans["device_copy_floor_s"] = floor_s
        plans["resident_ratio_to_floor"] = result["methods"]["task_arithmetic"]["ratio_to_floor"]
        result["plans"] = plans
        print(f"plans (task_arithmetic): resident {plans['resident']['apply']['median_s'] * 1e3:.1f} ms, streamed "
              f"{plans['streamed']['apply']['median_s'] * 1e3:.1f} ms ({plans['streamed']['ratio_to_h2d_floor']:.2f}x the "
              f"host->device floor {plans['h2d_floor_s'] * 1e3:.1f} ms)", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        result["plan_equality"] = check_plans_equal(model, base, experts, "block:4")
        # the plan checks left another merge in place: put the ties merge back
        mat, _ = bench_method("ties", methods["ties"], model, base, experts, timer, 1, "block:4")
        del mat
    del base, experts
    if device.type == "cuda":
        torch.cuda.empty_cache()
        result["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(device)

    # the model now holds the last method's merge (ties): evaluate it
    result["generation"] = run_generation(model, tok, device, limit, max_gen_toks=8)
    if args.engines:
        sys.path.insert(0, str(ROOT / "bench"))
        import engine_bench

        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        result["engines"] = engine_bench.run(cpu_smoke=args.tiny, device=str(device))
    result["total_s"] = time.perf_counter() - t_start

    fname = "gpu_check_tiny.json" if args.tiny else "gpu_check.json"  # a smoke test never overwrites GPU numbers
    out_path = Path(args.out) if args.out else (Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "bench" / "results") / fname
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print_table(result)
    if "engines" in result:
        engine_bench.print_table(result["engines"])
    print(f"wrote {out_path}")
    return 0


def print_table(r: dict[str, Any]) -> None:
    ms = lambda s: f"{s * 1e3:10.2f}"  # noqa: E731
    print()
    print(f"device {r['device_name']} ({r['device']}), torch {r['torch']}, model {r['model']['parameters'] / 1e9:.3f}B {r['model']['dtype']}, K={r['experts']}")
    print(f"{'what':<34}{'median ms':>10}{'x floor':>9}")
    print(f"{'copy of model bytes':<34}{ms(r['copy']['median_s'])}{'':>9}   {r['copy']['traffic_GBps']:.1f} GB/s read+write")
    print(f"{'floor = copy x (K+2)/2':<34}{ms(r['floor_s'])}{1.0:9.2f}")
    for m, o in r["methods"].items():
        print(f"{'apply ' + m:<34}{ms(o['apply']['median_s'])}{o['ratio_to_floor']:9.2f}")
        print(f"{'  restore_base (per-tensor copy)':<34}{ms(o['restore_base']['median_s'])}{o['restore_base']['median_s'] / r['floor_s']:9.2f}")
        print(f"{'  build (task vectors, plan)':<34}{ms(o['build_s'])}")
    if "plans" in r:
        p = r["plans"]
        print(f"{'host->device copy of model bytes':<34}{ms(p['h2d']['median_s'])}{'':>9}   {p['h2d']['GBps']:.1f} GB/s")
        print(f"{'h2d floor = that x K':<34}{ms(p['h2d_floor_s'])}{p['h2d_floor_s'] / r['floor_s']:9.2f}")
        print(f"{'plan (a) resident, task_arith.':<34}{ms(p['resident']['apply']['median_s'])}{p['resident_ratio_to_floor']:9.2f}")
        st = p["streamed"]
        print(f"{'plan (b) streamed, task_arith.':<34}{ms(st['apply']['median_s'])}{st['apply']['median_s'] / r['floor_s']:9.2f}"
              f"   {st['ratio_to_h2d_floor']:.2f}x the h2d floor")
    g = r["generation"]
    print(f"{'lm-eval ' + g['task'] + ' x' + str(g['limit']):<34}{ms(g['evaluate_s'])}{'':>9}   {g['metrics']}")
    print(f"{'total':<34}{ms(r['total_s'])}")


if __name__ == "__main__":
    sys.exit(main())
