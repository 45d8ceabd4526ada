"""Deep zoo problems: the ``digits-deep`` 14-layer MLP (its experts are experts, it has at least
70 TIES coordinates per layer), and a real search over it with ``turbo``, which mobo refuses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from search.config import load_config, parse_config
from search.store import COMPLETE, Store

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def deep_digits() -> Path:
    from search.zoo import zoo_path

    return zoo_path("zoo:digits-deep/base", build=True).parent


def test_digits_deep_experts_are_experts_and_the_space_is_large(deep_digits: Path) -> None:
    from search.models import param_names
    from search.space import CoefficientSpace
    from search.zoo.digits import accuracy
    from search.zoo.digits_deep import DEPTH, EXPERT_LABELS, load_deep_mlp

    models = {n: load_deep_mlp(deep_digits / n) for n in ("base", *EXPERT_LABELS)}
    for name, labels in EXPERT_LABELS.items():
        assert accuracy(models["base"], "validation", labels) <= 0.2
        assert accuracy(models[name], "validation", labels) >= 0.9, name
        for other, olabels in EXPERT_LABELS.items():
            if other != name:
                assert accuracy(models[name], "validation", olabels) <= 0.2, (name, other)
    cfg = load_config(REPO / "configs" / "digits-deep.yaml")
    names = param_names(cfg)
    space = CoefficientSpace.build(names, [e.name for e in cfg.models.experts], cfg.merge)
    assert DEPTH >= 12 and space.dim == (DEPTH + 2) * 3 * 2 >= 70
    assert space.groups[0] == "embed" and space.groups[-1] == "head" and space.n_layers == DEPTH
    sched = CoefficientSpace.build(names, [e.name for e in cfg.models.experts], cfg.merge.model_copy(update={"granularity": "schedule:4"}))
    assert sched.dim == (4 + 2) * 3 * 2


def test_turbo_searches_the_deep_space_mobo_refuses(deep_digits: Path, tmp_path: Path) -> None:
    """mobo refuses the 84 coordinates and names the fix; `search launch` with turbo runs a real
    search over them (worker, TIES merges, classification margins, store)."""
    from search.controller import build_problem, launch
    from search.models import param_names
    from search.space import CoefficientSpace
    from search.strategies import STRATEGIES

    raw = yaml.safe_load((REPO / "configs" / "digits-deep.yaml").read_text())
    raw["strategy"] = {"name": "turbo", "budget": 24}
    raw["store"] = str(tmp_path / "deep.db")
    cfg = parse_config(raw)
    space = CoefficientSpace.build(param_names(cfg), [e.name for e in cfg.models.experts], cfg.merge)
    with pytest.raises(ValueError, match="max_dim=64 coordinates and this space has 84"):
        STRATEGIES.get("mobo")(build_problem(space, cfg))
    good = tmp_path / "deep.yaml"
    good.write_text(yaml.safe_dump(raw))
    assert launch(str(good)) == 0
    st = Store.open(str(tmp_path / "deep.db"), readonly=True)
    study = st.find_study("digits-deep")
    trials = [t for t in st.trials(study.id) if t.state == COMPLETE]
    assert len(trials) == 24
    values = np.array([t.values for t in trials])
    assert values.shape == (24, 3) and values.max(0).min() > 0.5  # the experts (seeds) are in
    st.close()


def test_tiny_lm_deep_shape_gives_at_least_70_ties_coordinates() -> None:
    """The tiny-lm-deep model (built from its config, untrained: the shape is what matters here)
    under configs/tiny-lm-deep.yaml: 8 layers split into attention / MLP / norms, TIES weight and
    density per part and expert; schedule:4 keeps 4 knots per part."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from search.space import CoefficientSpace
    from search.zoo.tiny_lm_deep import MODEL_CONFIG

    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, **MODEL_CONFIG))
    names = [n for n, _ in model.named_parameters()]
    cfg = load_config(REPO / "configs" / "tiny-lm-deep.yaml")
    experts = [e.name for e in cfg.models.experts]
    space = CoefficientSpace.build(names, experts, cfg.merge)
    assert MODEL_CONFIG["num_hidden_layers"] >= 8 and space.n_layers == MODEL_CONFIG["num_hidden_layers"]
    assert space.dim == (8 * 3 + 2) * 3 * 2 >= 70
    sched = CoefficientSpace.build(names, experts, cfg.merge.model_copy(update={"granularity": "schedule:4"}))
    assert sched.dim == (4 * 3 + 2) * 3 * 2
    assert {g.split(".", 2)[-1] for g in sched.cgroups if g.startswith("knot.")} == {"self_attn", "mlp", "rest"}


def test_validate_counts_the_deep_factory_space_as_launch_does(deep_digits: Path, tmp_path: Path) -> None:
    """A factory model's structure comes, at validate (no code run), from its safetensors
    header, which lists tensors alphabetically (``blocks.*`` before ``inp``): read in that
    order, ``inp`` fell after the last layer and 84 coordinates were counted as 78. The zoo
    records the model's order in the header's metadata, and without it the input layer is
    recognised by name; either way validate builds launch's space."""
    import shutil

    from search.models import ORDER_KEY, param_names, safetensors_shapes
    from search.space import CoefficientSpace
    from search.validation import check_run

    cfg = load_config(REPO / "configs" / "digits-deep.yaml")
    experts = [e.name for e in cfg.models.experts]
    launch_space = CoefficientSpace.build(param_names(cfg), experts, cfg.merge)  # runs the factory
    assert launch_space.dim == 84 and launch_space.groups[0] == "embed"
    checked = check_run(cfg)
    assert checked.space is not None and checked.space.groups == launch_space.groups and checked.space.dim == 84
    # the header without the order metadata (a factory model saved by someone else): the guess
    plain = tmp_path / "plain"
    shutil.copytree(deep_digits / "base", plain)
    from safetensors.torch import load_file, save_file

    save_file(load_file(str(plain / "model.safetensors")), str(plain / "model.safetensors"))
    assert list(safetensors_shapes(plain))[:2] == ["inp.bias", "inp.weight"]
    assert CoefficientSpace.build(list(safetensors_shapes(plain)), experts, cfg.merge).groups == launch_space.groups
    # the metadata wins over the guess
    names = list(safetensors_shapes(plain))
    odd = [n for n in names if n.startswith("out.")] + [n for n in names if not n.startswith("out.")]
    save_file(load_file(str(plain / "model.safetensors")), str(plain / "model.safetensors"), metadata={ORDER_KEY: json.dumps(odd)})
    assert list(safetensors_shapes(plain)) == odd
