"""A tiny, fast merging problem for controller/worker tests: a 2-layer torch MLP (loaded through
``models.factory``) and python-callable objectives that are smooth functions of the weights.

Objective ``closeness_a`` is high when the merged weights are near expert A's, ``closeness_b``
near expert B's, so the front is the trade-off between the two experts.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class ToyMLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(8, 16)
        self.fc2 = torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def load_toy(path: str, dtype: torch.dtype) -> torch.nn.Module:
    m = ToyMLP()
    m.load_state_dict(load_file(str(Path(path) / "model.safetensors")))
    return m.to(dtype)


def make_toy_models(root: Path) -> dict[str, Path]:
    """Write base, expert_a, expert_b folders (model.safetensors) under ``root``."""
    g = torch.Generator().manual_seed(0)
    base = ToyMLP()
    with torch.no_grad():
        for p in base.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    out = {}
    for name, scale in [("base", 0.0), ("expert_a", 1.0), ("expert_b", -1.0)]:
        sd = {k: v.clone() for k, v in base.state_dict().items()}
        if scale:
            gg = torch.Generator().manual_seed(1 if scale > 0 else 2)
            sd = {k: v + 0.5 * torch.randn(v.shape, generator=gg) for k, v in sd.items()}
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        save_file(sd, str(d / "model.safetensors"))
        out[name] = d
    return out


def _closeness(model: torch.nn.Module, expert: str) -> float:
    ref = load_file(os.path.join(os.environ["TOY_ROOT"], expert, "model.safetensors"))
    d2 = sum(float(((p.detach().float() - ref[n]) ** 2).sum()) for n, p in model.named_parameters())
    return math.exp(-d2 / 40.0)


def closeness(model: torch.nn.Module, tokenizer: object, expert: str = "expert_a") -> dict[str, float]:
    """exp(-||theta - theta_expert||^2 / 40): 1 at the expert, falls off away from it."""
    delay = float(os.environ.get("TOY_DELAY", "0"))
    if delay:
        time.sleep(delay)
    return {"closeness": _closeness(model, expert)}


def flaky(model: torch.nn.Module, tokenizer: object) -> dict[str, float]:
    """Raises for some weights and returns NaN for others (fault-injection objective)."""
    v = _closeness(model, "expert_a")
    frac = (v * 1000) % 1.0
    if frac < 0.2:
        raise RuntimeError("flaky evaluator refused this merge")
    if frac < 0.4:
        return {"closeness": float("nan")}
    return {"closeness": v}


def kill_once(model: torch.nn.Module, tokenizer: object) -> dict[str, float]:
    """On the first call anywhere, write this process's pid to $TOY_MARKER and hang, so a test
    can SIGKILL the worker mid-trial; later calls behave like ``closeness``."""
    marker = Path(os.environ["TOY_MARKER"])
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        time.sleep(120)
    return {"closeness": _closeness(model, "expert_a")}


def toy_config(root: Path, *, name: str = "toy", budget: int = 12, strategy: str = "random", backend: str = "local",
               count: int = 1, function_a: str = "tests.toy_problem:closeness", extra_workers: dict | None = None,
               options: dict | None = None, store: str | None = None) -> dict:
    """A config dict for the toy problem (write it with yaml.safe_dump)."""
    return {
        "name": name,
        "seed": 0,
        "models": {
            "base": str(root / "base"),
            "experts": [{"name": "a", "path": str(root / "expert_a")}, {"name": "b", "path": str(root / "expert_b")}],
            "factory": "tests.toy_problem:load_toy",
        },
        "merge": {"method": "task_arithmetic", "granularity": "layer", "search": {"weight": [0.0, 1.0]}},
        "objectives": [
            {"name": "near_a", "evaluator": "python", "direction": "maximize",
             "settings": {"function": function_a, "metric": "closeness"}},
            {"name": "near_b", "evaluator": "python", "direction": "maximize",
             "settings": {"function": "tests.toy_problem:closeness", "metric": "closeness", "kwargs": {"expert": "expert_b"}},
             "heldout": {"kwargs": {"expert": "expert_b"}}},
        ],
        "strategy": {"name": strategy, "budget": budget, "options": options or {}},
        "workers": {"backend": backend, "count": count, **(extra_workers or {})},
        **({"store": store} if store else {}),
    }


def noop(model: torch.nn.Module, tokenizer: object, delay: float = 0.0) -> dict[str, float]:
    """A constant objective (optionally after sleeping ``delay`` s): measures controller overhead."""
    if delay:
        time.sleep(delay)
    return {"closeness": 0.5}


def hang_some(model: torch.nn.Module, tokenizer: object) -> dict[str, float]:
    """Hangs (60 s) for about a quarter of the merges: exercises workers.trial_timeout."""
    v = _closeness(model, "expert_a")
    if (v * 1000) % 1.0 < 0.25:
        time.sleep(60)
    return {"closeness": v}


def example_closeness(model: torch.nn.Module, tokenizer: object, expert: str = "expert_a", n: int = 200,
                      examples: list[int] | None = None) -> tuple[dict[str, float], dict[str, list[float]], dict[str, list[float]]]:
    """Closeness as an accuracy over ``n`` examples (for fidelity): example i is right when the
    closeness exceeds (i + 0.5) / n, its margin the difference. With ``examples`` only those are
    scored; each call's examples are appended to $TOY_EXAMPLES_LOG (a JSON line) when set."""
    import json

    idx = list(range(n)) if examples is None else list(examples)
    log = os.environ.get("TOY_EXAMPLES_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"expert": expert, "n": n, "examples": idx}) + "\n")
    c = _closeness(model, expert)
    margin = [c - (i + 0.5) / n for i in idx]
    right = [1.0 if m > 0 else 0.0 for m in margin]
    return {"accuracy": sum(right) / len(right)}, {"accuracy": right}, {"accuracy": margin}


def fidelity_config(root: Path, *, levels: list[float] | None = None, counts: list[int] | None = None, z: float = 2.0,
                    n: int = 200, **kw: object) -> dict:
    """:func:`toy_config` with two ``example_closeness`` objectives of ``n`` examples and a fidelity section."""
    cfg = toy_config(root, **kw)  # type: ignore[arg-type]
    for o, expert in zip(cfg["objectives"], ("expert_a", "expert_b"), strict=True):
        o["settings"] = {"function": "tests.toy_problem:example_closeness", "metric": "accuracy", "n_examples": n,
                         "kwargs": {"expert": expert, "n": n}}
        o.pop("heldout", None)
    cfg["objectives"][1]["heldout"] = {"kwargs": {"expert": "expert_b", "n": 2 * n}, "n_examples": 2 * n}
    cfg["fidelity"] = {"levels": levels, "z": z} if counts is None else {"counts": counts, "z": z}
    if counts is None and levels is None:
        cfg["fidelity"]["levels"] = [0.1, 0.3, 1.0]
    return cfg
