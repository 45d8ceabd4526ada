"""Memory plans (resident / streamed / sparse): the decision rule, equal results across plans,
and a start-up memory bound for sharded safetensors checkpoints (measured in a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from search.merge.materializer import Materializer
from search.merge.plan import Plan, choose_plan, plan_bytes, sparse_bytes_per_element
from tests.test_materializer import EXPERTS, METHODS, make_space, rand_x, tiny_llama

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20


# ----------------------------------------------------------------------------- the rule


def test_choose_plan_follows_the_documented_rule():
    M, K, T = 1000 * MiB, 3, 50 * MiB
    kw = dict(max_tensor_bytes=T, elem_bytes=2, density=0.2)
    # plenty of memory: resident ((K+1) M = 4000 MiB)
    p = choose_plan(M, K, 10_000 * MiB, None, "task_arithmetic", False, **kw)
    assert (p.kind, p.stream_base, p.device_bytes) == ("resident", False, 4000 * MiB)
    # without a budget only 80 % of the free memory counts
    assert choose_plan(M, K, 4500 * MiB, None, "task_arithmetic", False, **kw).kind == "streamed"
    assert choose_plan(M, K, 5000 * MiB, None, "task_arithmetic", False, **kw).kind == "resident"
    # a budget caps it; the budget never exceeds the free memory
    assert choose_plan(M, K, 10_000 * MiB, 3000 * MiB, "task_arithmetic", False, **kw).kind == "streamed"
    assert choose_plan(M, K, 2000 * MiB, 50_000 * MiB, "task_arithmetic", False, **kw).kind == "streamed"
    # sparse only for fixed magnitude trims, and before streamed
    p = choose_plan(M, K, 10_000 * MiB, 3000 * MiB, "ties", False, **kw)
    assert p.kind == "sparse"
    s = sparse_bytes_per_element(0.2, 2)
    assert s == pytest.approx(1 / 8 + 0.4)  # the bitmask beats int32 indices at density 0.2
    assert p.device_bytes == M + int(K * (M / 2) * s) + K * T
    assert choose_plan(M, K, 10_000 * MiB, 3000 * MiB, "breadcrumbs", False, **kw).kind == "sparse"
    for method in ("ties", "breadcrumbs"):  # searched density: no sparse
        p = choose_plan(M, K, 10_000 * MiB, 3000 * MiB, method, True, **kw)
        assert p.kind == "streamed" and "sparse skipped" in p.reason
    for method in ("dare_ties", "dare_linear", "linear"):
        assert choose_plan(M, K, 10_000 * MiB, 3000 * MiB, method, False, **kw).kind == "streamed"
    # streamed keeps the base on the device while M + 2 K T fits, else streams it too
    p = choose_plan(M, K, 10_000 * MiB, 1300 * MiB, "task_arithmetic", False, **kw)
    assert (p.kind, p.stream_base, p.device_bytes) == ("streamed", False, M + 2 * K * T)
    p = choose_plan(M, K, 10_000 * MiB, 1200 * MiB, "task_arithmetic", False, **kw)
    assert (p.kind, p.stream_base, p.device_bytes) == ("streamed", True, 2 * (K + 1) * T)
    # nothing fits: the smallest footprint, flagged
    p = choose_plan(M, K, 10_000 * MiB, 100 * MiB, "task_arithmetic", False, **kw)
    assert (p.kind, p.stream_base, p.fits) == ("streamed", True, False) and "no plan fits" in p.reason
    # on CPU (host is the device) streaming saves nothing: resident stays preferred
    p = choose_plan(M, K, 10_000 * MiB, 3000 * MiB, "task_arithmetic", False, host_is_device=True, **kw)
    assert p.kind == "resident" and not p.fits
    assert choose_plan(M, K, 10_000 * MiB, 3000 * MiB, "ties", False, host_is_device=True, **kw).kind == "sparse"
    # sorted magnitudes (searched density) live in host memory: they count on CPU only
    p = choose_plan(M, K, 10_000 * MiB, 4500 * MiB, "ties", True, sorted_bytes=2000 * MiB, **kw)
    assert p.kind == "resident" and p.host_bytes == 2000 * MiB
    p = choose_plan(M, K, 10_000 * MiB, 4500 * MiB, "ties", True, sorted_bytes=2000 * MiB, host_is_device=True, **kw)
    assert p.kind == "resident" and not p.fits and p.device_bytes == 6000 * MiB
    # a named plan is honoured
    assert choose_plan(M, K, 10_000 * MiB, None, "ties", False, requested="streamed", **kw).kind == "streamed"
    with pytest.raises(ValueError, match="sparse"):
        choose_plan(M, K, 10_000 * MiB, None, "task_arithmetic", False, requested="sparse", **kw)


def test_plan_bytes_formulas():
    M, K, T = 400, 3, 40
    assert plan_bytes("resident", M, K)[0] == 4 * M
    assert plan_bytes("streamed", M, K, max_tensor_bytes=T)[:2] == (M + 2 * K * T, K * M)
    assert plan_bytes("streamed", M, K, max_tensor_bytes=T, stream_base=True)[:2] == (2 * (K + 1) * T, (K + 1) * M)
    assert plan_bytes("streamed", M, K, max_tensor_bytes=T, host_is_device=True)[:2] == (M + 2 * K * T + K * M, 0)


# ----------------------------------------------------------------------------- plans agree


@pytest.fixture(scope="module")
def tiny():
    model = tiny_llama(tie=True)
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    experts = []
    for i in range(len(EXPERTS)):
        g = torch.Generator().manual_seed(300 + i)
        experts.append({k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in base.items()})
    return model, base, experts


def model_bytes(model, elem=4):
    return sum(p.numel() for p in model.parameters()) * elem


def budget_gb(nbytes: float) -> float:
    return nbytes / 2**30


def merged(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def run_plan(tiny, method, plan, *, fixed=False, storage_dtype=None, accumulate=False, **kw):
    model, base, experts = tiny
    if fixed:
        params = {"density": 0.3} | ({"gamma": 0.05} if method == "breadcrumbs" else {})
        space, _ = make_space(model, method, "block:2", search={"weight": (0.0, 1.5)}, params=params)
    else:
        space, _ = make_space(model, method, "block:2", ["self_attn", "mlp"])
    mat = Materializer(model, base, experts, space, method, {}, run_seed=1, plan=plan, storage_dtype=storage_dtype,
                       accumulate_fp32=accumulate, chunk=kw.pop("chunk", None), **kw)
    outs = []
    for trial in (4, 5):
        mat.apply(rand_x(space, trial), trial)
        outs.append(merged(model))
    return mat, outs


def assert_same(a, b, exact=True, what=""):
    for (n, x), (_, y) in zip(a.items(), b.items(), strict=True):
        if exact:
            assert torch.equal(x, y), f"{what} {n}"
        else:
            torch.testing.assert_close(x, y, msg=f"{what} {n}")


STREAMED = Plan("streamed", False)
STREAMED_BASE = Plan("streamed", True)
SPARSE = Plan("sparse", False)


@pytest.mark.parametrize("method", METHODS)
def test_streamed_plans_equal_resident_exactly(tiny, method):
    _, ref = run_plan(tiny, method, "resident")
    for plan in (STREAMED, STREAMED_BASE):
        mat, got = run_plan(tiny, method, plan, chunk=100)  # small chunks: many chunks per tensor too
        assert mat.plan.kind == "streamed"
        for a, b in zip(ref, got, strict=True):
            assert_same(a, b, what=f"{method} {plan.kind}")


@pytest.mark.parametrize("method", ["ties", "breadcrumbs"])
def test_sparse_plan_equals_resident_exactly(tiny, method):
    mat0, ref = run_plan(tiny, method, "resident", fixed=True)
    mat, got = run_plan(tiny, method, SPARSE, fixed=True)
    for a, b in zip(ref, got, strict=True):
        assert_same(a, b, what=method)
    held = mat.nbytes()
    assert held["task_vectors"] == 0 and 0 < held["sparse_task_vectors"] < mat0.nbytes()["task_vectors"]


@pytest.mark.parametrize("method", METHODS)
def test_bf16_storage_plans_agree(tiny, method):
    """The GPU dtype path (bf16 storage and arithmetic), run on CPU: every plan gives the same
    bits as resident; linear methods stay within bf16 rounding of the float32 result."""
    fixed = method in ("ties", "breadcrumbs")
    _, ref = run_plan(tiny, method, "resident", fixed=fixed, storage_dtype=torch.bfloat16)
    plans = [STREAMED, STREAMED_BASE] + ([SPARSE] if fixed else [])
    for plan in plans:
        _, got = run_plan(tiny, method, plan, fixed=fixed, storage_dtype=torch.bfloat16)
        for a, b in zip(ref, got, strict=True):
            assert_same(a, b, what=f"bf16 {method} {plan.kind}")
    if method in ("linear", "task_arithmetic"):
        _, f32 = run_plan(tiny, method, "resident")
        for acc in (False, True):
            _, b16 = run_plan(tiny, method, STREAMED, storage_dtype=torch.bfloat16, accumulate=acc)
            for a, b in zip(f32, b16, strict=True):
                for n in a:
                    torch.testing.assert_close(b[n], a[n], rtol=2**-6, atol=2**-8, msg=n)


def test_small_budget_forces_sparse_and_streamed(tiny, caplog):
    import logging

    caplog.set_level(logging.INFO, "search.merge")
    model, base, experts = tiny
    M = model_bytes(model)
    big = 64 * 2**30
    # between sparse and resident: ties with a fixed density goes sparse (host is the device, as on CPU)
    mat, _ = run_plan(tiny, "ties", "auto", fixed=True, memory_budget_gb=budget_gb(3.0 * M))
    assert mat.plan.kind == "sparse" and mat.plan.fits
    assert "merge plan sparse" in caplog.text and "expected materialization" in caplog.text
    # with room: resident
    mat, _ = run_plan(tiny, "ties", "auto", fixed=True, memory_budget_gb=budget_gb(10 * M))
    assert mat.plan.kind == "resident"
    # a searched density cannot be sparse; on an accelerator-like device (host memory apart)
    # a budget under (K+1) M streams the task vectors, under M the base too
    mat, _ = run_plan(tiny, "ties", "auto", memory_budget_gb=budget_gb(2.0 * M), free_bytes=big, host_is_device=False)
    assert (mat.plan.kind, mat.plan.stream_base) == ("streamed", False)
    mat, _ = run_plan(tiny, "task_arithmetic", "auto", memory_budget_gb=budget_gb(0.5 * M), free_bytes=big, host_is_device=False)
    assert (mat.plan.kind, mat.plan.stream_base) == ("streamed", True)
    held = mat.nbytes()
    assert held["buffers"] > 0 and held["buffers"] < 0.5 * M


def test_requesting_sparse_for_dare_is_a_config_error(tiny):
    from search.errors import ConfigError

    with pytest.raises(ConfigError, match="merge.plan"):
        run_plan(tiny, "dare_ties", "sparse", fixed=True)


# ----------------------------------------------------------------------------- start-up memory

_PROBE = textwrap.dedent(
    """
    import json, resource, sys
    import psutil, torch
    torch.set_num_threads(1)
    from search.config import parse_config
    from search.merge.materializer import build_materializer
    from search.models import load_model
    from search.space import CoefficientSpace
    folder, method, plan = sys.argv[1], sys.argv[2], sys.argv[3]
    merge = {"method": method, "plan": plan, "granularity": "layer", "search": {"weight": [0.0, 1.0]}}
    if method == "ties":
        merge["params"] = {"density": 0.1}
    cfg = parse_config({"name": "p", "models": {"base": folder + "/base", "experts": [
        {"name": f"e{i}", "path": f"{folder}/e{i}"} for i in range(3)]}, "merge": merge,
        "objectives": [{"name": "o", "evaluator": "x", "direction": "maximize"}]})
    model = load_model(cfg.models.base, cfg)
    space = CoefficientSpace.build([n for n, _ in model.named_parameters()], ["e0", "e1", "e2"], cfg.merge)
    def hwm():  # peak RSS since the last reset (VmHWM), else the process's ru_maxrss
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    try:  # reset the high-water mark so model loading's transients do not count
        open("/proc/self/clear_refs", "w").write("5")
        reset = True
    except OSError:
        reset = False
    before_rss = psutil.Process().memory_info().rss
    before_peak = hwm()
    mat = build_materializer(cfg.merge, cfg.models, model, space, "cpu", base_dir=cfg.base_dir, seed=cfg.seed)
    peak = hwm()
    held = sum(mat.nbytes().values())
    print("RESULT " + json.dumps({"before_rss": before_rss, "before_peak": before_peak, "peak": peak, "reset": reset,
                                  "held": held, "parts": mat.nbytes(), "model_bytes": mat.model_bytes(), "plan": mat.plan.kind,
                                  "largest": max(e.numel for e in mat.entries) * 4}))
    """
)


@pytest.fixture(scope="module")
def sharded_models(tmp_path_factory):
    """Base + 3 experts of a ~13M-parameter Llama (53 MB fp32), saved in 20 MB shards."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("sharded")
    conf = LlamaConfig(vocab_size=8000, hidden_size=384, intermediate_size=1024, num_hidden_layers=4,
                       num_attention_heads=6, num_key_value_heads=6, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(conf)
    model.save_pretrained(folder / "base", max_shard_size="20MB")
    for i in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        model.save_pretrained(folder / f"e{i}", max_shard_size="20MB")
    assert len(list((folder / "e0").glob("*.safetensors"))) >= 3
    return folder


@pytest.mark.parametrize("method,plan", [("task_arithmetic", "resident"), ("ties", "sparse")])
def test_startup_peak_memory_with_sharded_checkpoints(sharded_models, method, plan):
    """Bound: the start-up peak grows by at most what the plan holds + 4 x the largest
    tensor's float32 bytes (the transients of one tensor: its checkpoint copy / task vector,
    |tau|, a partition copy and masks) + 48 MiB of allocator slack (ties/sparse once grew by
    35 MiB more than held + transients on a clean CI run; 32 MiB was too tight). Holding the K expert
    models (or their state dicts) whole would add K x model bytes (3x here, where the
    largest tensor, the 8000 x 384 embedding, is 23 % of the model)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(sharded_models), method, plan], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    r = json.loads(line[7:])
    assert r["plan"] == plan
    M = r["model_bytes"]
    growth = r["peak"] - r["before_rss"]  # an upper bound of the build's own growth
    bound = r["held"] + 4 * r["largest"] + 48 * MiB
    assert bound < r["held"] + 3 * M  # the bound does separate it from holding the experts whole
    assert growth <= bound, f"start-up grew by {growth / MiB:.0f} MiB; bound {bound / MiB:.0f} MiB ({r})"
    if plan == "sparse":  # density 0.1: bitmask + values, ~0.13 of each dense float32 task vector
        assert r["parts"]["task_vectors"] == 0 and r["parts"]["sparse_task_vectors"] < 0.2 * 3 * M
    else:
        assert r["parts"]["task_vectors"] == 3 * M and r["parts"]["base"] == M


@pytest.mark.parametrize("method", ["ties", "dare_ties", "breadcrumbs", "dare_linear"])
def test_accumulate_fp32_with_bf16_storage_is_float32_arithmetic(tiny, method):
    """bf16 storage + merge.accumulate_fp32 (the GPU option): the arithmetic runs in float32 on
    the bf16-rounded task vectors, so it equals float32 storage fed those same rounded values."""
    model, base, experts = tiny
    b16 = {k: v.to(torch.bfloat16).float() for k, v in base.items()}
    e16 = [{k: (v.float() - base[k].float()).to(torch.bfloat16).float() + b16[k] for k, v in e.items()} for e in experts]
    # taus stored in bf16 are round(e - b) computed in float32 from the bf16-rounded base
    space, _ = make_space(model, method, "block:2")
    x = rand_x(space, 8)
    m1 = Materializer(model, b16, e16, space, method, {}, run_seed=2, storage_dtype=torch.bfloat16, accumulate_fp32=True)
    assert all(e.work == torch.float32 for e in m1.entries)
    m1.apply(x, 8)
    got = merged(model)
    m2 = Materializer(model, b16, e16, space, method, {}, run_seed=2)
    m2.apply(x, 8)
    for n, p in model.named_parameters():
        torch.testing.assert_close(got[n], p.detach(), rtol=0, atol=0, msg=n)
