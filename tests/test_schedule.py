"""``granularity: schedule:K``: K knots per (expert, param) over the decoder layers, expanded
to per-layer values by piecewise-linear interpolation (mergekit's gradient rule), and its
mergekit recipe (gradient lists; the cross-check against mergekit itself is in test_export)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from search.config import MergeConfig, parse_config
from search.errors import ConfigError
from search.recipe import build_recipe
from search.space import CoefficientSpace

L = 10
EXPERTS = ("a", "b", "c")
MODULES = ("self_attn.q_proj", "mlp.up_proj", "input_layernorm")
NAMES = (
    ["model.embed_tokens.weight"]
    + [f"model.layers.{i}.{m}.weight" for i in range(L) for m in MODULES]
    + ["model.norm.weight", "lm_head.weight"]
)


def space(gran: str, split: tuple[str, ...] = (), method: str = "ties", n_layers: int = L) -> CoefficientSpace:
    names = [n for n in NAMES if "layers." not in n or int(n.split(".")[2]) < n_layers]
    search = {"weight": (0.0, 1.0), "density": (0.1, 1.0)} if method == "ties" else {"weight": (0.0, 1.0)}
    return CoefficientSpace.build(names, EXPERTS, MergeConfig(method=method, granularity=gran, split=list(split), search=search))


def rand(sp: CoefficientSpace, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(sp.lower, sp.upper)


def layer_rows(sp: CoefficientSpace, part: str = "") -> list[int]:
    """Tensor-group rows of the decoder layers (of split part ``part``), in layer order."""
    return [sp.groups.index(f"layers.{i:02d}" + (f".{part}" if part else "")) for i in range(sp.n_layers)]


def knots(sp: CoefficientSpace, x: np.ndarray, param: str, part: str = "") -> np.ndarray:
    """The knot values of ``param`` per expert, read from the coordinates by name: (K, experts)."""
    d = sp.to_dict(x)
    return np.array([[d[f"knot.{k}{'.' + part if part else ''}/{e}/{param}"] for e in EXPERTS] for k in range(sp.knots)])


@pytest.mark.parametrize("k", [1, 2, 4, 7])
def test_schedule_is_piecewise_linear_over_the_layers(k: int) -> None:
    sp = space(f"schedule:{k}")
    assert sp.dim == (k + 2) * len(EXPERTS) * 2  # embed, k knots, head
    assert sp.cgroups == ("embed", *[f"knot.{j}" for j in range(k)], "head")
    assert len(sp.groups) == L + 2  # the tensors are still grouped per layer
    x = rand(sp, k)
    vals = sp.values(x)
    d = sp.to_dict(x)
    pos = np.linspace(0.0, 1.0, k) if k > 1 else np.zeros(1)
    for p in ("weight", "density"):
        kn = knots(sp, x, p)
        for e in range(len(EXPERTS)):
            want = np.interp(np.arange(L) / (L - 1), pos, kn[:, e]) if k > 1 else np.full(L, kn[0, e])
            np.testing.assert_allclose(vals[p][layer_rows(sp), e], want, rtol=0, atol=1e-12)
            # the first and last layers sit on the first and last knots exactly
            assert vals[p][layer_rows(sp)[0], e] == kn[0, e] and vals[p][layer_rows(sp)[-1], e] == kn[-1, e]
            # embed and head are their own coordinates, not part of the schedule
            assert vals[p][sp.groups.index("embed"), e] == d[f"embed/{EXPERTS[e]}/{p}"]
            assert vals[p][sp.groups.index("head"), e] == d[f"head/{EXPERTS[e]}/{p}"]


def test_k1_is_one_value_for_every_layer_and_k2_is_a_ramp() -> None:
    sp1 = space("schedule:1")
    x = rand(sp1, 3)
    w = sp1.values(x)["weight"][layer_rows(sp1)]
    assert np.all(w == w[0]) and not np.allclose(w[0], sp1.values(x)["weight"][0])  # embed differs
    sp2 = space("schedule:2")
    x = rand(sp2, 4)
    w = sp2.values(x)["weight"][layer_rows(sp2)]
    steps = np.diff(w, axis=0)
    np.testing.assert_allclose(steps, np.broadcast_to(steps[0], steps.shape), atol=1e-12)  # constant slope


def test_k_equal_to_the_layers_is_the_layer_granularity() -> None:
    sched, layer = space(f"schedule:{L}", ("self_attn", "mlp")), space("layer", ("self_attn", "mlp"))
    assert sched.dim == layer.dim and sched.groups == layer.groups
    x = rand(sched, 5)
    # the same numbers under the layer space's names: knot.i.<part> -> layers.0i.<part>
    d = {re.sub(r"^knot\.(\d+)", lambda m: f"layers.{int(m.group(1)):02d}", n): v for n, v in sched.to_dict(x).items()}
    xl = layer.from_dict(d)
    for p in ("weight", "density"):
        np.testing.assert_allclose(sched.values(x)[p], layer.values(xl)[p], rtol=0, atol=1e-12)


def test_split_parts_get_their_own_schedules() -> None:
    sp = space("schedule:3", ("self_attn", "mlp"))
    assert sp.cgroups == ("embed", *[f"knot.{k}.{p}" for k in range(3) for p in ("self_attn", "mlp", "rest")], "head")
    x = rand(sp, 6)
    vals = sp.values(x)["weight"]
    for part in ("self_attn", "mlp", "rest"):
        kn = knots(sp, x, "weight", part)
        for e in range(len(EXPERTS)):
            want = np.interp(np.arange(L) / (L - 1), [0, 0.5, 1], kn[:, e])
            np.testing.assert_allclose(vals[layer_rows(sp, part), e], want, atol=1e-12)
    # seeds (one-hot experts) set every knot, embed and head
    one_hot = sp.values(sp.point([1.0, 0.0, 0.0]))["weight"]
    assert np.all(one_hot[:, 0] == 1.0) and np.all(one_hot[:, 1:] == 0.0)
    # coordinates are knot-major, so crossovers on group boundaries cut between knots
    assert list(sp.coord_group) == sorted(sp.coord_group) and sp.coord_group.max() == len(sp.cgroups) - 1


def test_bad_schedules_are_config_errors_naming_the_field() -> None:
    base = {"name": "s", "models": {"base": "b", "experts": [{"name": "a", "path": "a"}]},
            "objectives": [{"name": "o", "evaluator": "python", "direction": "maximize"}]}
    for bad in ("schedule:0", "schedule", "schedules:4"):
        with pytest.raises(ConfigError) as ei:
            parse_config({**base, "merge": {"granularity": bad}})
        assert "merge.granularity" in str(ei.value) and "schedule:K" in str(ei.value)
    assert parse_config({**base, "merge": {"granularity": "schedule:4"}}).merge.schedule_knots == 4
    with pytest.raises(ConfigError) as ei:
        space("schedule:5", n_layers=4)
    assert "merge.granularity" in str(ei.value) and "K <= 4" in str(ei.value)


def test_recipe_writes_gradient_lists_that_resolve_to_every_layers_value() -> None:
    """One slice over all layers; per expert and param: embed / head entries, then one gradient
    list per split part, which mergekit's rule (t = i / (L - 1), written here with np.interp)
    turns into exactly the values the trial used."""
    cfg = parse_config({
        "name": "s", "models": {"base": "b", "experts": [{"name": e, "path": e} for e in EXPERTS]},
        "merge": {"method": "ties", "granularity": "schedule:4", "split": ["mlp"],
                  "search": {"weight": [0.0, 1.0], "density": [0.1, 1.0]}},
        "objectives": [{"name": "o", "evaluator": "python", "direction": "maximize"}],
    })
    sp = CoefficientSpace.build(NAMES, EXPERTS, cfg.merge)
    x = rand(sp, 8)
    rec = build_recipe(cfg, sp, x, {n: 1000 for n in NAMES}, "/m/base", [f"/m/{e}" for e in EXPERTS])
    assert rec.exact and not any("resolve differently" in n for n in rec.notes), rec.notes
    (sl,) = rec.config["slices"]
    assert [s["layer_range"] for s in sl["sources"]] == [[0, L]] * 4
    vals = sp.values(x)
    for e, src in enumerate(sl["sources"][1:]):
        for p in ("weight", "density"):
            setting = src["parameters"][p]
            assert [c.get("filter") for c in setting] == ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight", "mlp", None]
            for c in setting[3:]:
                assert isinstance(c["value"], list) and len(c["value"]) == 4
            for n in NAMES:
                g = sp.tensor_group[n]
                entry = next(c["value"] for c in setting if c.get("filter") is None or c["filter"] in n)
                if isinstance(entry, list):
                    got = np.interp(sp.group_layers[g][0] / (L - 1), np.linspace(0, 1, 4), entry)
                else:
                    got = entry
                assert abs(got - vals[p][g, e]) < 1e-12, (n, p)


def test_validate_refuses_more_knots_than_layers(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """`search validate` reads the base's safetensors headers: schedule:K with K above the
    model's layer count is one line naming merge.granularity and the fix, exit code 2."""
    import yaml
    from transformers import LlamaConfig, LlamaForCausalLM

    from search.cli import main
    from search.zoo.tiny_lm import build_tokenizer

    tok = build_tokenizer()
    conf = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                       num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False)
    for name in ("base", "a"):
        LlamaForCausalLM(conf).save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    (tmp_path / "text.txt").write_text("some text\n")
    cfg = {"name": "s", "models": {"base": "base", "experts": [{"name": "a", "path": "a"}]},
           "merge": {"granularity": "schedule:3", "search": {"weight": [0.0, 1.0]}},
           "objectives": [{"name": "o", "evaluator": "perplexity", "direction": "minimize", "settings": {"path": "text.txt"}}]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    cfg["merge"]["granularity"] = "schedule:4"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "merge.granularity: schedule:4 has more knots than the model's 3 layers; use schedule:K with K <= 3" in err
