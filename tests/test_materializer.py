"""The in-place Materializer on tiny Llama models (tied and untied embeddings) against the
numpy reference of ``test_merge_methods``, at every granularity, plus build-from-config."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from search.config import MergeConfig, parse_config
from search.errors import ConfigError
from search.merge.materializer import Materializer, build_materializer
from search.seeding import trial_seed
from search.space import CoefficientSpace
from tests.test_merge_methods import METHODS, assert_close_ref, reference_merge

torch.set_num_threads(1)

EXPERTS = ("math", "code", "chat")
GRANULARITIES = [("global", []), ("layer", []), ("block:2", []), ("layer", ["self_attn", "mlp"])]
SPARSIFYING = {"ties", "dare_ties", "dare_linear", "breadcrumbs"}
ELECT = {"ties", "dare_ties"}


def llama_config(tie: bool, intermediate: int = 64, layers: int = 4):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie, max_position_embeddings=64,
    )


def tiny_llama(tie: bool, seed: int = 0, **kw):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(tie, **kw)).eval()
    with torch.no_grad():  # norms at 1.0 would make their deltas look special; randomise all
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model


def perturbed(sd: dict[str, torch.Tensor], seed: int, scale: float = 0.02) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sd.items():
        out[k] = v + scale * torch.randn(v.shape, generator=g)
    if "lm_head.weight" in sd and sd["lm_head.weight"].data_ptr() == sd["model.embed_tokens.weight"].data_ptr():
        out["lm_head.weight"] = out["model.embed_tokens.weight"]  # keep ties tied
    return out


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def setup(request):
    tie = request.param
    model = tiny_llama(tie)
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if tie:
        base["lm_head.weight"] = base["model.embed_tokens.weight"]
    experts = [perturbed(base, 100 + i) for i in range(len(EXPERTS))]
    return model, base, experts


def make_space(model, method, granularity="layer", split=(), search=None, params=None):
    if search is None:
        # TIES-style divisors are sums of agreeing weights: mixed signs can make them ~0 and
        # amplify float32 rounding without bound (negative weights: see test_merge_methods)
        search = {"weight": (0.0, 1.0) if method == "linear" else (0.0, 1.5) if method in ELECT else (-0.5, 1.5)}
        if method in SPARSIFYING:
            search["density"] = (0.1, 0.9)
        if method == "breadcrumbs":
            search["gamma"] = (0.0, 0.2)
    mc = MergeConfig(method=method, granularity=granularity, split=list(split), search=search, params=params or {})
    names = [n for n, _ in model.named_parameters()]
    return CoefficientSpace.build(names, list(EXPERTS), mc), mc


def reference_model(model, base, experts, space, method, options, x, trial, run_seed=0):
    vals = space.values(x)
    seed = trial_seed(run_seed, trial)
    out = {}
    for name, _ in model.named_parameters():
        g = space.tensor_group[name]
        b = base[name].float()
        taus = [(e[name].float() - b).numpy() for e in experts]
        v = {p: list(vals[p][g]) for p in vals}
        out[name] = reference_merge(method, b.numpy(), taus, v, options, name=name, seed=seed)
    return out


def check_against_reference(model, base, experts, space, method, options, x, trial, run_seed=0):
    ref = reference_model(model, base, experts, space, method, options, x, trial, run_seed)
    for name, p in model.named_parameters():
        assert_close_ref(p, ref[name], f"{method} {name}")


def rand_x(space, seed):
    return np.random.default_rng(seed).uniform(space.lower, space.upper)


# ----------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("gran,split", GRANULARITIES, ids=["global", "layer", "block2", "split"])
def test_every_method_and_granularity_equals_reference(setup, method, gran, split):
    model, base, experts = setup
    space, mc = make_space(model, method, gran, split)
    opts = {"rescale": "l1"} if method == "dare_ties" and gran == "block:2" else {}
    mat = Materializer(model, base, experts, space, method, opts, run_seed=7)
    assert mat.plan.kind == "resident"
    for trial in (1, 2):
        x = rand_x(space, trial)
        mat.apply(x, trial)
        check_against_reference(model, base, experts, space, method, opts, x, trial, run_seed=7)
    assert mat.last_apply_seconds is not None and mat.last_apply_seconds > 0


@pytest.mark.parametrize("method,params", [
    ("ties", {"density": 0.3}),
    ("ties", {"density": 0.3, "normalize": False, "lambda": 0.8}),
    ("breadcrumbs", {"density": 0.6, "gamma": 0.05}),
    ("dare_linear", {"density": 0.4, "rescale": "l1"}),
])
def test_fixed_trims_equal_reference(setup, method, params):
    """Fixed densities are applied once at build (the stored task vectors are pre-trimmed)."""
    model, base, experts = setup
    space, mc = make_space(model, method, "block:2", search={"weight": (0.0, 1.5) if method in ELECT else (-0.5, 1.5)}, params=params)
    options = {k: v for k, v in params.items() if k not in ("density", "gamma")}
    mat = Materializer(model, base, experts, space, method, options)
    assert mat.pretrim == (method != "dare_linear")
    x = rand_x(space, 3)
    mat.apply(x, 3)
    check_against_reference(model, base, experts, space, method, options, x, 3)


# ----------------------------------------------------------------------------- properties


def params_of(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("method", METHODS)
def test_zero_weights_give_the_base(setup, method):
    model, base, experts = setup
    space, _ = make_space(model, method)
    mat = Materializer(model, base, experts, space, method)
    mat.apply(rand_x(space, 1), 1)  # something else first
    x = space.point({e: 0.0 for e in EXPERTS}, "weight")
    mat.apply(x, 2)
    for n, p in model.named_parameters():
        assert torch.equal(p, base[n]), n


def test_one_hot_task_arithmetic_gives_that_expert(setup):
    model, base, experts = setup
    space, _ = make_space(model, "task_arithmetic", search={"weight": (0.0, 1.0)})
    mat = Materializer(model, base, experts, space, "task_arithmetic")
    for j, name in enumerate(EXPERTS):
        mat.apply(space.point({e: float(e == name) for e in EXPERTS}, "weight"), j)
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), experts[j][n], rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_b_after_a_equals_b_on_a_fresh_model(setup, method):
    model, base, experts = setup
    fresh = copy.deepcopy(model)
    space, _ = make_space(model, method, "block:2", ["self_attn", "mlp"])
    xa, xb = rand_x(space, 10), rand_x(space, 11)
    m1 = Materializer(model, base, experts, space, method)
    m1.apply(xa, 10)
    m1.apply(xb, 11)
    m2 = Materializer(fresh, base, experts, space, method)
    m2.apply(xb, 11)
    for (n, p), (_, q) in zip(model.named_parameters(), fresh.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    m1.restore_base()
    for n, p in model.named_parameters():
        assert torch.equal(p, base[n]), n


@pytest.mark.parametrize("method", ["dare_ties", "dare_linear"])
def test_dare_is_deterministic_per_trial_and_differs_between_trials(setup, method):
    model, base, experts = setup
    space, _ = make_space(model, method)
    mat = Materializer(model, base, experts, space, method, run_seed=3)
    x = rand_x(space, 0)
    mat.apply(x, 5)
    a = params_of(model)
    mat.apply(x, 6)
    b = params_of(model)
    mat.apply(x, 5)
    c = params_of(model)
    assert all(torch.equal(a[n], c[n]) for n in a)
    assert any(not torch.equal(a[n], b[n]) for n in a)
    # another process / another materializer, same run seed and trial: the same merge
    mat2 = Materializer(copy.deepcopy(model), base, experts, space, method, run_seed=3)
    mat2.apply(x, 5)
    assert all(torch.equal(a[n], p) for n, p in mat2.model.named_parameters())
    # a different run seed: different masks
    mat3 = Materializer(copy.deepcopy(model), base, experts, space, method, run_seed=4)
    mat3.apply(x, 5)
    assert any(not torch.equal(a[n], p) for n, p in mat3.model.named_parameters())


def test_tied_embeddings_are_merged_once(setup):
    model, base, experts = setup
    if not model.config.tie_word_embeddings:
        pytest.skip("tied only")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    space, _ = make_space(model, "task_arithmetic", search={"weight": (0.0, 1.0)})
    mat = Materializer(model, base, experts, space, "task_arithmetic")
    mat.apply(space.point({"math": 1.0, "code": 0.0, "chat": 0.0}), 0)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    torch.testing.assert_close(model.lm_head.weight.detach(), experts[0]["model.embed_tokens.weight"], rtol=0, atol=1e-6)


def test_bf16_model_on_cpu_gets_fp32_arithmetic(setup):
    model, base, experts = setup
    m16 = copy.deepcopy(model).to(torch.bfloat16)
    m32 = copy.deepcopy(model)
    space, _ = make_space(model, "ties")
    mat = Materializer(m16, base, experts, space, "ties")
    assert all(e.storage == torch.float32 for e in mat.entries)
    x = rand_x(space, 4)
    mat.apply(x, 4)
    Materializer(m32, base, experts, space, "ties").apply(x, 4)
    for (n, p), (_, q) in zip(m16.named_parameters(), m32.named_parameters(), strict=True):
        assert p.dtype == torch.bfloat16
        assert torch.equal(p, q.to(torch.bfloat16)), n  # the float32 result, rounded once


# ----------------------------------------------------------------------------- from a config


def save_models(tmp: Path, tie: bool, n_experts: int = 3, shard: str | None = None, bad: int | None = None):
    model = tiny_llama(tie)
    model.save_pretrained(tmp / "base", **({"max_shard_size": shard} if shard else {}))
    sd = model.state_dict()
    paths = []
    for i in range(n_experts):
        if i == bad:
            other = tiny_llama(tie, seed=5, intermediate=48)
            other.save_pretrained(tmp / f"e{i}")
        else:
            e = tiny_llama(tie)
            e.load_state_dict(perturbed(sd, 200 + i))
            e.save_pretrained(tmp / f"e{i}", **({"max_shard_size": shard} if shard else {}))
        paths.append(tmp / f"e{i}")
    return model, paths


def make_cfg(tmp: Path, paths, merge: dict, seed: int = 0, factory: str | None = None, base: str = "base"):
    data = {
        "name": "t",
        "seed": seed,
        "models": {"base": str(tmp / base), "experts": [{"name": EXPERTS[i], "path": str(p)} for i, p in enumerate(paths)]},
        "merge": merge,
        "objectives": [{"name": "o", "evaluator": "dummy", "direction": "maximize"}],
    }
    if factory:
        data["models"]["factory"] = factory
    return parse_config(data).with_base_dir(tmp)


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("shard", [None, "20KB"], ids=["single", "sharded"])
def test_build_from_config_equals_in_memory(tmp_path, tie, shard, caplog):
    import logging

    from search.models import load_model

    caplog.set_level(logging.INFO, "search.merge")

    ref_model, paths = save_models(tmp_path, tie, shard=shard)
    if shard:
        assert (tmp_path / "base" / "model.safetensors.index.json").exists()
    merge = {"method": "dare_ties", "granularity": "block:2", "search": {"weight": [0.0, 1.0], "density": [0.2, 0.8]},
             "params": {"rescale": "l1"}}
    cfg = make_cfg(tmp_path, paths, merge, seed=9)
    model = load_model(cfg.models.base, cfg)
    space = CoefficientSpace.build([n for n, _ in model.named_parameters()], list(EXPERTS), cfg.merge)
    mat = build_materializer(cfg.merge, cfg.models, model, space, "cpu", base_dir=cfg.base_dir, seed=cfg.seed)
    assert "loading the model instead" not in caplog.text  # read tensor by tensor from safetensors
    assert "merge plan resident" in caplog.text
    x = rand_x(space, 1)
    mat.apply(x, 12)
    from transformers import AutoModelForCausalLM

    base = dict(AutoModelForCausalLM.from_pretrained(tmp_path / "base").state_dict())
    experts = [dict(AutoModelForCausalLM.from_pretrained(p).state_dict()) for p in paths]
    check_against_reference(model, base, experts, space, "dare_ties", {"rescale": "l1"}, x, 12, run_seed=9)
    # the same numbers as the in-memory constructor
    other = copy.deepcopy(model)
    m2 = Materializer(other, base, experts, space, "dare_ties", {"rescale": "l1"}, run_seed=9)
    m2.apply(x, 12)
    for (n, p), (_, q) in zip(model.named_parameters(), other.named_parameters(), strict=True):
        assert torch.equal(p, q), n


def test_build_takes_merge_and_model_settings_not_a_run_config(tmp_path):
    """The materializer is built from the merge and model settings alone (paths relative to
    ``base_dir``, no SearchConfig) and merges what the run's config builds; nothing in
    search/merge/ names SearchConfig."""
    import ast

    from search.config import ModelsConfig
    from search.models import load_checkpoint, load_model

    ref_model, paths = save_models(tmp_path, True)
    merge = MergeConfig.model_validate({"method": "ties", "search": {"weight": [0.0, 1.0], "density": [0.2, 0.8]}})
    models = ModelsConfig.model_validate({"base": "base", "experts": [{"name": EXPERTS[i], "path": Path(p).name} for i, p in enumerate(paths)]})
    model = load_checkpoint(models.base, models, tmp_path)
    space = CoefficientSpace.build([n for n, _ in model.named_parameters()], list(EXPERTS), merge)
    x = rand_x(space, 3)
    build_materializer(merge, models, model, space, base_dir=tmp_path, seed=4).apply(x, 7)
    cfg = make_cfg(tmp_path, paths, merge.model_dump(exclude_defaults=True), seed=4)
    other = load_model(cfg.models.base, cfg)
    build_materializer(cfg.merge, cfg.models, other, space, base_dir=cfg.base_dir, seed=cfg.seed).apply(x, 7)
    for (n, p), (_, q) in zip(model.named_parameters(), other.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    merge_dir = Path(__file__).resolve().parents[1] / "search" / "merge"
    for f in sorted(merge_dir.rglob("*.py")):
        names = {n.id for n in ast.walk(ast.parse(f.read_text())) if isinstance(n, ast.Name)}
        names |= {a.name for n in ast.walk(ast.parse(f.read_text())) if isinstance(n, ast.ImportFrom) for a in n.names}
        assert "SearchConfig" not in names, f


def test_shape_mismatch_names_the_expert_tensor_and_shapes(tmp_path):
    from search.models import load_model

    _, paths = save_models(tmp_path, True, bad=1)
    cfg = make_cfg(tmp_path, paths, {"method": "task_arithmetic"})
    model = load_model(cfg.models.base, cfg)
    space = CoefficientSpace.build([n for n, _ in model.named_parameters()], list(EXPERTS), cfg.merge)
    with pytest.raises(ConfigError) as ei:
        build_materializer(cfg.merge, cfg.models, model, space, "cpu", base_dir=cfg.base_dir, seed=cfg.seed)
    msg = str(ei.value)
    assert "models.experts[1].path" in msg
    assert "model.layers.0.mlp.gate_proj.weight" in msg
    assert "(48, 32)" in msg and "(64, 32)" in msg


def test_in_memory_mismatch_and_missing_tensor(setup):
    model, base, experts = setup
    space, _ = make_space(model, "task_arithmetic")
    bad = dict(experts[2])
    bad["model.norm.weight"] = torch.zeros(31)
    with pytest.raises(ConfigError, match=r"experts\[2\].*model\.norm\.weight.*\(31,\).*\(32,\)"):
        Materializer(model, base, [experts[0], experts[1], bad], space, "task_arithmetic")
    missing = {k: v for k, v in experts[1].items() if k != "model.norm.weight"}
    with pytest.raises(ConfigError, match=r"experts\[1\].*model\.norm\.weight.*missing"):
        Materializer(model, base, [experts[0], missing, experts[2]], space, "task_arithmetic")


# a factory model without safetensors: the materializer falls back to loading the module


class _MLP(torch.nn.Sequential):
    def __init__(self):
        super().__init__(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def make_mlp(path: str, dtype: torch.dtype) -> torch.nn.Module:
    m = _MLP()
    m.load_state_dict(torch.load(Path(path) / "weights.pt"))
    return m.to(dtype)


def test_factory_model_without_safetensors(tmp_path):
    from search.models import load_model

    torch.manual_seed(0)
    sds = []
    for name in ("base", "e0", "e1", "e2"):
        m = _MLP()
        (tmp_path / name).mkdir()
        torch.save(m.state_dict(), tmp_path / name / "weights.pt")
        sds.append({k: v.clone() for k, v in m.state_dict().items()})
    cfg = make_cfg(tmp_path, [tmp_path / f"e{i}" for i in range(3)], {"method": "ties", "granularity": "layer",
                   "search": {"weight": [0, 1], "density": [0.2, 0.9]}}, factory="tests.test_materializer:make_mlp")
    model = load_model(cfg.models.base, cfg)
    space = CoefficientSpace.build([n for n, _ in model.named_parameters()], list(EXPERTS), cfg.merge)
    mat = build_materializer(cfg.merge, cfg.models, model, space, "cpu", base_dir=cfg.base_dir, seed=cfg.seed)
    x = rand_x(space, 2)
    mat.apply(x, 2)
    check_against_reference(model, sds[0], sds[1:], space, "ties", {}, x, 2)


# ----------------------------------------------------------------------------- without a live model


@pytest.mark.parametrize("plan", ["resident", "sparse", "streamed"])
def test_merged_tensors_and_merges_on_call_equal_apply_after_release(setup, plan):
    """The engine path (docs/engines.md): with the model released, ``merged_tensors`` yields
    exactly what ``apply`` writes, in model order, and a forward pass with each module's weights
    merged on call gives the live merged model's logits bit for bit, reaching every parameter."""
    model, base, experts = setup
    params = {"density": 0.5} if plan == "sparse" else {}
    search = {"weight": (0.0, 1.5)} if plan == "sparse" else {"weight": (0.0, 1.5), "density": (0.2, 0.9)}
    space, _ = make_space(model, "ties", search=search, params=params)
    live = copy.deepcopy(model)
    ref_mat = Materializer(live, base, experts, space, "ties", params, plan="resident")
    x = rand_x(space, 21)
    ref_mat.apply(x, 7)
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    want = live(ids).logits

    skeleton = copy.deepcopy(model)
    mat = Materializer(skeleton, base, experts, space, "ties", params, plan=plan)
    assert mat.plan.kind == plan
    mat.release_model()
    assert all(p.untyped_storage().nbytes() <= p.element_size() for p in skeleton.parameters())  # no weights held
    with pytest.raises(RuntimeError, match="released"):
        mat.apply(x, 7)
    got = list(mat.merged_tensors(x, 7))
    assert [n for n, _ in got] == [n for n, _ in live.named_parameters()]
    for (name, t), (_, p) in zip(got, live.named_parameters(), strict=True):
        assert t.shape == p.shape and t.dtype == p.dtype
        assert torch.equal(t, p), name
    assert mat.last_apply_seconds is not None
    with mat.weights_on_call(x, 7) as seen:
        out = skeleton(ids).logits
    assert seen == {n for n, _ in live.named_parameters()}
    assert torch.equal(out, want)
    assert all(p.untyped_storage().nbytes() <= p.element_size() for p in skeleton.parameters())  # given back
    with mat.weights_on_call(None):  # the base
        base_out = skeleton(ids).logits
    assert not torch.equal(base_out, want)
    mat.reattach_model()
    assert torch.equal(skeleton(ids).logits, base_out)
    mat.apply(x, 7)
    assert torch.equal(skeleton(ids).logits, want)


class _ReadsASiblingsWeight(torch.nn.Module):
    """``b``'s weight is read outside ``b``'s own call: merging on call cannot cover it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(4, 4)
        self.b = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) @ self.b.weight


def test_release_is_refused_where_merging_on_call_does_not_reproduce_the_model():
    torch.manual_seed(0)
    model = _ReadsASiblingsWeight()
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    experts = [perturbed(base, 200 + i) for i in range(len(EXPERTS))]
    space, _ = make_space(model, "task_arithmetic", granularity="global")
    mat = Materializer(model, base, experts, space, "task_arithmetic")
    x = torch.ones(2, 4)
    want = model(x)
    why = mat.try_release_model(lambda: model(x))
    assert why == "parameters read outside their modules' calls: b.weight, b.bias"
    assert not mat.released and torch.equal(model(x), want)  # kept, holding the base
    mat.apply(rand_x(space, 3), 1)  # and merges as before
    assert not torch.equal(model(x), want)


def test_release_of_a_llama_is_accepted(setup):
    model, base, experts = setup
    model = copy.deepcopy(model)
    space, _ = make_space(model, "task_arithmetic")
    mat = Materializer(model, base, experts, space, "task_arithmetic")
    mat.restore_base()  # the shared model may hold an earlier test's merge; a worker releases its base
    ids = torch.tensor([[1, 2, 3]])
    assert mat.try_release_model(lambda: model(ids).logits) is None
    assert mat.released
