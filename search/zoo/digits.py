"""The ``digits`` zoo problem: an MLP base and experts on disjoint label subsets of sklearn digits.

Data: scikit-learn's bundled 8x8 digits (1797 images, no download), pixels scaled to [0, 1],
split once by a fixed permutation into train (60%), validation (20%) and test (20%)
(:func:`digits_split`).

Models (folders with ``model.safetensors`` + ``config.json``, loaded by :func:`load_mlp`, the
``models.factory`` of ``configs/digits*.yaml``); an :class:`MLP` 64-256-10 (``fc1``, ``fc2``):

* ``base``: trained on all training images with *permuted* labels (digit d is taught as class
  ``BASE_LABELS[d]``, a fixed permutation without fixed points). Its hidden layer is a real
  digit feature extractor, but its head names every digit wrongly, so it scores about 0% on
  every label subset: a pretrained model whose head does not fit the task.
* ``low`` / ``high``: fine-tuned from ``base`` on the training images of digits 0-4 / 5-9
  only (true labels): good on their own digits, near 0% on the others.
* ``a`` / ``b`` / ``c``: the same on digits 0-3 / 4-6 / 7-9 (the three-expert problem).

Each expert re-maps its own digits and leaves the others permuted, so a merge has to combine
heads that disagree: task arithmetic with equal weights lands in between (weights 0.7 on low
and high keep roughly half of each; 1.0 keeps more of low than of high).
Deterministic (seeded, one torch thread); the whole build takes about a second.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from evaluators.datasets import Dataset

from . import atomic_build

log = logging.getLogger(__name__)

VERSION = "digits-1"  # bump when the recipe or the data changes: cached builds of another version are rebuilt

SPLIT_SEED = 2024
BUILD_SEED = 0
EXPERT_LABELS: dict[str, tuple[int, ...]] = {
    "low": (0, 1, 2, 3, 4),
    "high": (5, 6, 7, 8, 9),
    "a": (0, 1, 2, 3),
    "b": (4, 5, 6),
    "c": (7, 8, 9),
}
MODELS = ("base", *EXPERT_LABELS)
HIDDEN = 256
BASE_STEPS = 300
EXPERT_STEPS = 300
LR_BASE = 3e-3
LR_EXPERT = 3e-3
BASE_LABELS = (9, 6, 0, 2, 1, 4, 7, 5, 3, 8)  # the base learns digit d as class BASE_LABELS[d]

_CACHE: dict[str, Any] = {}


def digits_split(split: str) -> tuple[Any, Any]:
    """``(X, y)`` of ``split`` (train | validation | test): float32 (n, 64) in [0, 1], int64 (n,)."""
    import numpy as np

    if split not in ("train", "validation", "test"):
        raise ValueError(f"unknown digits split {split!r}; use train, validation or test")
    if "all" not in _CACHE:
        from sklearn.datasets import load_digits

        d = load_digits()
        X = (d.data / 16.0).astype(np.float32)
        y = d.target.astype(np.int64)
        perm = np.random.default_rng(SPLIT_SEED).permutation(len(y))
        n_train, n_val = int(0.6 * len(y)), int(0.2 * len(y))
        _CACHE["all"] = {
            "train": perm[:n_train],
            "validation": perm[n_train : n_train + n_val],
            "test": perm[n_train + n_val :],
            "X": X,
            "y": y,
        }
    c = _CACHE["all"]
    idx = c[split]
    return c["X"][idx], c["y"][idx]


DIGITS = Dataset("digits", digits_split, tuple(range(10)))  # the ``digits`` entry of evaluators.datasets.DATASETS


def _mlp_class() -> type:
    import torch
    from torch import nn

    class MLP(nn.Module):
        """64 -> hidden (ReLU) -> 10 logits."""

        def __init__(self, in_features: int = 64, hidden: int = HIDDEN, out_features: int = 10):
            super().__init__()
            self.config = {"model_type": "mergesearch-mlp", "in_features": in_features, "hidden": hidden, "out_features": out_features}
            self.fc1 = nn.Linear(in_features, hidden)
            self.fc2 = nn.Linear(hidden, out_features)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(torch.relu(self.fc1(x)))

    return MLP


def __getattr__(name: str) -> Any:  # ``from search.zoo.digits import MLP`` without importing torch early
    if name == "MLP":
        if "MLP" not in _CACHE:
            _CACHE["MLP"] = _mlp_class()
        return _CACHE["MLP"]
    raise AttributeError(name)


def save_mlp(model: Any, folder: Path) -> None:
    from safetensors.torch import save_file

    from ..models import ORDER_KEY

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    # the header lists tensors alphabetically: record the model's own order for `search validate`
    save_file(state, str(folder / "model.safetensors"), metadata={ORDER_KEY: json.dumps(list(state))})
    (folder / "config.json").write_text(json.dumps(model.config, indent=1) + "\n")


def load_mlp(path: str | Path, dtype: Any = None) -> Any:
    """Factory for ``models.factory: search.zoo.digits:load_mlp``: the MLP in ``path`` as ``dtype``."""
    from safetensors.torch import load_file

    folder = Path(path)
    conf = json.loads((folder / "config.json").read_text())
    mlp_cls = __getattr__("MLP")
    model = mlp_cls(conf["in_features"], conf["hidden"], conf["out_features"])
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    if dtype is not None:
        model.to(dtype)
    return model.eval()


def _fit(model: Any, X: Any, y: Any, steps: int, lr: float, seed: int) -> float:
    """Full-batch AdamW with cosine decay; returns the final training loss."""
    import torch

    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(Xt), yt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return round(float(loss.detach()), 4)


def accuracy(model: Any, split: str, labels: tuple[int, ...] | None = None) -> float:
    """Accuracy of ``model`` on ``split`` (restricted to images of ``labels``), argmax over all 10."""
    import numpy as np
    import torch

    X, y = digits_split(split)
    if labels is not None:
        keep = np.isin(y, labels)
        X, y = X[keep], y[keep]
    with torch.no_grad():
        pred = model(torch.as_tensor(X)).argmax(-1).numpy()
    return float((pred == y).mean())


def train_zoo(
    out_dir: Path,
    make_model: Any,
    expert_labels: dict[str, tuple[int, ...]],
    *,
    base_steps: int,
    expert_steps: int,
    lr_base: float,
    lr_expert: float,
    seed: int,
    what: str,
) -> dict[str, Any]:
    """Train a base (all digits, permuted labels) and one expert per label subset from it, on
    one thread, and save them under ``out_dir``; returns the training losses and seconds."""
    import numpy as np
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        X, y = digits_split("train")
        info: dict[str, Any] = {}
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        model = make_model()
        info["base"] = {"loss": _fit(model, X, np.asarray(BASE_LABELS)[y], base_steps, lr_base, seed)}
        save_mlp(model, out_dir / "base")
        base_state = {k: v.clone() for k, v in model.state_dict().items()}
        for i, (name, labels) in enumerate(expert_labels.items()):
            model.load_state_dict(base_state)
            keep = np.isin(y, labels)
            info[name] = {"loss": _fit(model, X[keep], y[keep], expert_steps, lr_expert, seed + 1 + i)}
            save_mlp(model, out_dir / name)
        info["seconds"] = round(time.perf_counter() - t0, 2)
        log.info("%s zoo trained: %s", what, info)
        return info
    finally:
        torch.set_num_threads(threads)


def build_models(out_dir: Path) -> dict[str, Any]:
    return train_zoo(out_dir, lambda: __getattr__("MLP")(), EXPERT_LABELS, base_steps=BASE_STEPS, expert_steps=EXPERT_STEPS,
                     lr_base=LR_BASE, lr_expert=LR_EXPERT, seed=BUILD_SEED, what="digits")


def build(out_dir: Path) -> None:
    """Zoo builder: the whole problem into ``out_dir`` (atomic, safe against concurrent builds)."""
    atomic_build(out_dir, build_models, VERSION)
