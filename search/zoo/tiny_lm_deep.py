"""The ``tiny-lm-deep`` zoo problem: the tiny-lm problem on an 8-layer Llama.

Same tokenizer, tasks, data, training recipe and stopping rules as :mod:`search.zoo.tiny_lm`
(a base that echoes the task prompts; experts ``add`` / ``reverse`` / ``sort`` fine-tuned
from it until their probe sets reach 95%), on a deeper, narrower model so that layer-wise
merging has many coordinates: TIES with weight and density searched per layer and expert is
(8 + 2) x 3 x 2 = 60 coordinates with ``layer``, 156 with ``split: [self_attn, mlp]``
(attention, MLP and the layer norms per layer; configs/tiny-lm-deep.yaml). The shipped lm-eval tasks (``tinylm_*``) score it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import atomic_build, tiny_lm
from .tiny_lm import EXPERTS

VERSION = "tiny-lm-deep-1"  # bump when the recipe changes: cached builds of another version are rebuilt

MODELS = ("base", *EXPERTS)
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
    """Train base + experts into ``out_dir/<model>`` with tiny-lm's recipe on this shape."""
    return tiny_lm.build_models(out_dir, model_config=MODEL_CONFIG)


def build(out_dir: Path) -> None:
    """Zoo builder: the whole problem into ``out_dir`` (atomic, safe against concurrent builds)."""
    atomic_build(out_dir, build_models, VERSION)
