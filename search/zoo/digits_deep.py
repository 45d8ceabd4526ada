"""The ``digits-deep`` zoo problem: the digits problem on a 14-layer residual MLP.

Same data, labels and story as :mod:`search.zoo.digits` (a base trained on permuted labels,
experts ``a`` / ``b`` / ``c`` fine-tuned on digits 0-3 / 4-6 / 7-9), on a deeper network so that
layer-wise merging has many coordinates: ``inp`` (64 -> 64), ``DEPTH`` = 12 residual hidden
blocks ``blocks.<i>.fc`` (h + relu(fc(h)), 64 -> 64), and ``out`` (64 -> 10). The space sees
``inp`` as the ``embed`` group, the blocks as 12 layers and ``out`` as ``head``: TIES with
weight and density searched per layer and expert is (12 + 2) x 3 x 2 = 84 coordinates.

Loaded by :func:`load_deep_mlp` (``models.factory: search.zoo.digits_deep:load_deep_mlp``).
Deterministic (seeded, one torch thread); the whole build takes a few seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import atomic_build
from .digits import train_zoo

VERSION = "digits-deep-1"  # bump when the recipe changes: cached builds of another version are rebuilt

EXPERT_LABELS: dict[str, tuple[int, ...]] = {"a": (0, 1, 2, 3), "b": (4, 5, 6), "c": (7, 8, 9)}
MODELS = ("base", *EXPERT_LABELS)
DEPTH = 12
WIDTH = 64
BUILD_SEED = 0
BASE_STEPS = 250
EXPERT_STEPS = 150
LR_BASE = 2e-3
LR_EXPERT = 2e-3

_CLASS: dict[str, type] = {}


def _deep_mlp_class() -> type:
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, width: int):
            super().__init__()
            self.fc = nn.Linear(width, width)

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return h + torch.relu(self.fc(h))

    class DeepMLP(nn.Module):
        """64 -> width (ReLU) -> ``depth`` residual blocks -> 10 logits."""

        def __init__(self, in_features: int = 64, width: int = WIDTH, depth: int = DEPTH, out_features: int = 10):
            super().__init__()
            self.config = {"model_type": "mergesearch-deep-mlp", "in_features": in_features, "width": width,
                           "depth": depth, "out_features": out_features}
            self.inp = nn.Linear(in_features, width)
            self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
            self.out = nn.Linear(width, out_features)
            with torch.no_grad():  # small residual branches at init: a deep stack that trains at once
                for b in self.blocks:
                    b.fc.weight.mul_(0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.inp(x))
            for b in self.blocks:
                h = b(h)
            return self.out(h)

    return DeepMLP


def deep_mlp(**kwargs: Any) -> Any:
    """A new :class:`DeepMLP` (the class is built on first use, so importing this module stays light)."""
    if "DeepMLP" not in _CLASS:
        _CLASS["DeepMLP"] = _deep_mlp_class()
    return _CLASS["DeepMLP"](**kwargs)


def load_deep_mlp(path: str | Path, dtype: Any = None) -> Any:
    """Factory for ``models.factory: search.zoo.digits_deep:load_deep_mlp``."""
    from safetensors.torch import load_file

    folder = Path(path)
    conf = json.loads((folder / "config.json").read_text())
    model = deep_mlp(in_features=conf["in_features"], width=conf["width"], depth=conf["depth"], out_features=conf["out_features"])
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    if dtype is not None:
        model.to(dtype)
    return model.eval()


def build_models(out_dir: Path) -> dict[str, Any]:
    return train_zoo(out_dir, deep_mlp, EXPERT_LABELS, base_steps=BASE_STEPS, expert_steps=EXPERT_STEPS,
                     lr_base=LR_BASE, lr_expert=LR_EXPERT, seed=BUILD_SEED, what="digits-deep")


def build(out_dir: Path) -> None:
    """Zoo builder: the whole problem into ``out_dir`` (atomic, safe against concurrent builds)."""
    atomic_build(out_dir, build_models, VERSION)
