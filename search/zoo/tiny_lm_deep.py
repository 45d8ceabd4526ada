"""The ``tiny-lm-deep`` zoo problem: the tiny-lm problem on a 10-layer Llama.

Same tokenizer, tasks, data, training recipe and stopping rules as :mod:`search.zoo.tiny_lm`
(a base that echoes the task prompts; experts ``add`` / ``reverse`` / ``sort`` fine-tuned
from it until their probe sets reach 95%), on a deeper, narrower model so that layer-wise
merging has many coordinates: TIES with weight and density searched per layer and expert is
(10 + 2) x 3 x 2 = 72 coordinates with ``layer``, 192 with ``split: [self_attn, mlp]``
(attention, MLP and the layer norms per layer). The shipped lm-eval tasks (``tinylm_*``) score it.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any

from . import atomic_build
from .tiny_lm import (
    BASE,
    BASE_MIX,
    EXPERT,
    EXPERTS,
    PROBE_SIZE,
    _heldout_prompts,
    _sampler,
    _train,
    build_tokenizer,
)

log = logging.getLogger(__name__)

VERSION = "tiny-lm-deep-1"  # bump when the recipe changes: cached builds of another version are rebuilt

MODELS = ("base", *EXPERTS)
BUILD_SEED = 0
MODEL_CONFIG = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=8,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=64,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)


def build_models(out_dir: Path) -> dict[str, Any]:
    """Train base + experts into ``out_dir/<model>``; returns training steps, losses and seconds."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tok = build_tokenizer()
        heldout = _heldout_prompts()
        conf = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                           pad_token_id=tok.pad_token_id, **MODEL_CONFIG)
        gen = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                               pad_token_id=tok.pad_token_id, do_sample=False)

        def save(model: Any, name: str) -> None:
            model.generation_config = gen
            model.save_pretrained(out_dir / name)
            tok.save_pretrained(out_dir / name)

        prng = random.Random(f"{BUILD_SEED}/probe")

        def probe(key: tuple[str, str]) -> list[tuple[str, str]]:
            return [_sampler({key: 1.0}, heldout)(prng) for _ in range(PROBE_SIZE)]

        info: dict[str, Any] = {}
        torch.manual_seed(BUILD_SEED)
        model = LlamaForCausalLM(conf)
        t0 = time.perf_counter()
        info["base"] = _train(model, tok, _sampler(BASE_MIX, heldout), seed=BUILD_SEED,
                              probes={f"{t}/{f}": probe((t, f)) for t, f in BASE_MIX}, **BASE)
        info["base"]["seconds"] = round(time.perf_counter() - t0, 2)
        save(model, "base")
        base_state = {k: v.clone() for k, v in model.state_dict().items()}
        for i, task in enumerate(EXPERTS):
            t0 = time.perf_counter()
            model.load_state_dict(base_state)
            info[task] = _train(model, tok, _sampler({(task, "expert"): 1.0}, heldout), seed=BUILD_SEED + 1 + i,
                                probes={task: probe((task, "expert"))}, **EXPERT)
            info[task]["seconds"] = round(time.perf_counter() - t0, 2)
            save(model, task)
        log.info("tiny-lm-deep zoo trained: %s", info)
        return info
    finally:
        torch.set_num_threads(threads)


def build(out_dir: Path) -> None:
    """Zoo builder: the whole problem into ``out_dir`` (atomic, safe against concurrent builds)."""
    atomic_build(out_dir, build_models, VERSION)
