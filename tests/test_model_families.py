"""Every model family through the whole pipeline.

Per family, tiny random checkpoints built from a transformers config (2 decoder layers, base +
2 experts = base + seeded random deltas, the tiny-lm byte tokenizer): ``search validate``,
``search launch`` of 4 trials (perplexity objective), the coefficient space's groups and
tensor names, export of a trial, reload with transformers (tied embeddings still tied),
re-scoring equal to the stored value, and the mergekit recipe (one slice per layer, every
tensor's parameters resolving to the trial's). A family whose class this transformers lacks
is skipped with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

TINY_DATA = Path(__file__).resolve().parents[1] / "evaluators" / "tasks" / "tinylm"
ATTN = {"num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "max_position_embeddings": 128}

# family -> (model class, config class, config kwargs, embedding tensor, head tensors)
FAMILIES: dict[str, tuple[str, str, dict[str, Any], str, tuple[str, ...]]] = {
    "llama": ("LlamaForCausalLM", "LlamaConfig", {**ATTN, "tie_word_embeddings": False},
              "model.embed_tokens.weight", ("model.norm.weight", "lm_head.weight")),
    "mistral": ("MistralForCausalLM", "MistralConfig", {**ATTN, "tie_word_embeddings": False},
                "model.embed_tokens.weight", ("model.norm.weight", "lm_head.weight")),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", {**ATTN, "tie_word_embeddings": True},
              "model.embed_tokens.weight", ("model.norm.weight",)),
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config", {**ATTN, "head_dim": 8, "tie_word_embeddings": True},
              "model.embed_tokens.weight", ("model.norm.weight",)),
    "gemma2": ("Gemma2ForCausalLM", "Gemma2Config", {**ATTN, "head_dim": 8},
               "model.embed_tokens.weight", ("model.norm.weight",)),
    "gemma3": ("Gemma3ForCausalLM", "Gemma3TextConfig", {**ATTN, "head_dim": 8},
               "model.embed_tokens.weight", ("model.norm.weight",)),
    "phi3": ("Phi3ForCausalLM", "Phi3Config", {**ATTN, "tie_word_embeddings": False},
             "model.embed_tokens.weight", ("model.norm.weight", "lm_head.weight")),
    "gpt2": ("GPT2LMHeadModel", "GPT2Config", {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 128},
             "transformer.wte.weight", ("transformer.ln_f.weight", "transformer.ln_f.bias")),
    "gpt_neox": ("GPTNeoXForCausalLM", "GPTNeoXConfig", {**ATTN, "tie_word_embeddings": False},
                 "gpt_neox.embed_in.weight", ("gpt_neox.final_layer_norm.weight", "lm_head.weight")),
    "olmo2": ("Olmo2ForCausalLM", "Olmo2Config", {**ATTN, "tie_word_embeddings": False},
              "model.embed_tokens.weight", ("model.norm.weight", "lm_head.weight")),
    "mixtral": ("MixtralForCausalLM", "MixtralConfig", {**ATTN, "num_local_experts": 2, "num_experts_per_tok": 1,
                                                         "tie_word_embeddings": False},
                "model.embed_tokens.weight", ("model.norm.weight", "lm_head.weight")),
}


def build_family(root: Path, family: str) -> Path:
    """base, e0, e1 folders of one family (random weights from its config)."""
    import torch
    import transformers

    from search.zoo.tiny_lm import build_tokenizer
    from tests.test_export import save_base_and_experts

    cls_name, conf_name, kw, _, _ = FAMILIES[family]
    if not hasattr(transformers, cls_name) or not hasattr(transformers, conf_name):
        pytest.skip(f"transformers {transformers.__version__} has no {cls_name}")
    tok = build_tokenizer()
    conf = getattr(transformers, conf_name)(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                            pad_token_id=tok.pad_token_id, **kw)
    torch.manual_seed(0)
    return save_base_and_experts(getattr(transformers, cls_name)(conf).eval(), tok, root, ("base", "e0", "e1"), 0.05, seed=10)


def family_config(root: Path, family: str) -> dict:
    return {
        "name": family,
        "seed": 1,
        "models": {"base": str(root / "base"), "experts": [{"name": e, "path": str(root / e)} for e in ("e0", "e1")]},
        "merge": {"method": "ties", "granularity": "layer", "search": {"weight": [0.0, 1.0], "density": [0.3, 0.9]}},
        "objectives": [{"name": "ppl", "evaluator": "perplexity", "direction": "minimize",
                        "settings": {"path": str(TINY_DATA / "add_validation.jsonl"), "text_field": "prompt", "limit": 6}}],
        "strategy": {"name": "random", "budget": 4},
        "store": str(root / "runs.db"),
    }


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_through_the_pipeline(family: str, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evaluators import build_evaluator, context_for
    from search.controller import launch
    from search.export import export_trial
    from search.models import param_names
    from search.report import load_run
    from search.seeding import trial_seed
    from search.space import CoefficientSpace
    from search.store import COMPLETE
    from search.validation import validate_file

    torch.set_num_threads(1)
    root = build_family(tmp_path, family)
    cfg_d = family_config(root, family)
    path = tmp_path / f"{family}.yaml"
    path.write_text(yaml.safe_dump(cfg_d))
    cfg = validate_file(path)

    # layer grouping and per-family tensor names
    _, _, _, embed, head = FAMILIES[family]
    names = param_names(cfg)
    space = CoefficientSpace.build(names, ["e0", "e1"], cfg.merge)
    groups = {g: [n for n in names if space.groups[space.tensor_group[n]] == g] for g in space.groups}
    assert list(groups) == ["embed", "layers.00", "layers.01", "head"], list(groups)
    assert embed in groups["embed"], groups["embed"]
    assert set(head) <= set(groups["head"]), groups["head"]

    assert launch(str(path)) == 0
    trials = [t for t in load_run(family, cfg_d["store"]).trials if t.state == COMPLETE]
    assert len(trials) == 4, [(t.number, t.state, t.error) for t in load_run(family, cfg_d["store"]).trials]
    t = trials[-1]
    out = export_trial(family, cfg_d["store"], t.number, tmp_path / "export")

    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    conf = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if getattr(conf, "tie_word_embeddings", False):
        assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    ev = build_evaluator("perplexity", cfg.objectives[0].settings, context_for(cfg, "search"))
    with torch.no_grad():
        res = ev.evaluate(model, AutoTokenizer.from_pretrained(out), seed=trial_seed(cfg.seed, t.number))
    assert res.metrics[ev.metric] == t.values[0], (family, res.metrics, t.values)

    recipe = yaml.safe_load((out / "mergekit_config.yml").read_text())
    assert recipe["merge_method"] == "ties" and len(recipe["slices"]) == 2
    assert [s["sources"][0]["layer_range"] for s in recipe["slices"]] == [[0, 1], [1, 2]]
    card = (out / "README.md").read_text()
    assert "resolve differently in mergekit" not in card
