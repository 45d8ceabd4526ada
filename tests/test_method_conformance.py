"""Conformance suite: every registered merge method (built in or a plugin) against the protocol.

For each name in ``search.merge.methods.METHODS``:

* the kernels (``merge_tensors``) equal the method's own numpy ``reference`` on random tensors,
  for every value of every option with ``choices``;
* a model merged by the Materializer equals the reference tensor by tensor;
* the streamed plans (and the sparse plan, for methods with a magnitude trim, trims fixed) give
  the resident plan's tensors bit for bit;
* a real search (toy MLP, python objectives), exported, reloaded and re-scored, gives the values
  the store recorded, exactly;
* the mergekit recipe re-merges to the export where mergekit is installed and has the method;
* the README's example method file passes the tensor checks (kernels, materialized model, plans).

Parameter ranges come from the method's declaration: ``bounds`` where given, else [0.1, 1].
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from search.config import MergeConfig, parse_config
from search.merge.kernels import merge_tensors
from search.merge.materializer import Materializer
from search.merge.methods import METHODS, MergeMethod
from search.merge.plan import Plan
from search.space import CoefficientSpace
from tests.test_materializer import EXPERTS, perturbed, rand_x, reference_model, tiny_llama
from tests.test_merge_methods import assert_close_ref

torch.set_num_threads(1)

NAMES = METHODS.names()


def search_ranges(m: MergeMethod) -> dict[str, tuple[float, float]]:
    """Inner ranges of every parameter: the middle 60 % of declared bounds, else [0.1, 1]."""
    out = {}
    for p in m.params:
        a, b = m.bounds.get(p, (0.1, 1.0))
        out[p] = (a + 0.2 * (b - a), a + 0.8 * (b - a)) if p in m.bounds else (a, b)
    return out


def option_variants(m: MergeMethod) -> list[dict]:
    """The default options, then each value of each option with ``choices``."""
    out: list[dict] = [{}]
    for k, allowed in m.choices.items():
        out += [{k: v} for v in allowed if v != m.options.get(k)]
    return out


# ----------------------------------------------------------------------------- tensors


@pytest.mark.parametrize("name", NAMES)
def test_kernels_equal_the_numpy_reference(name: str) -> None:
    m = METHODS.get(name)
    ranges = search_ranges(m)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    for options in option_variants(m):
        opts = m.resolve_options(options)
        for shape in ((7, 13), (64,), (1,)):
            for K in (1, 2, 3):
                base = rng.standard_normal(shape).astype(np.float32)
                taus = [(0.05 * rng.standard_normal(shape)).astype(np.float32) for _ in range(K)]
                vals = {p: [float(v) for v in rng.uniform(*ranges[p], K)] for p in m.params}
                seed = int(rng.integers(0, 2**62))
                got = merge_tensors(name, torch.from_numpy(base), [torch.from_numpy(t) for t in taus], vals, options,
                                    name="t", seed=seed)
                ref = m.reference(base, [t.reshape(-1) for t in taus], vals, opts, name="t", seed=seed)
                assert_close_ref(got, ref, f"{name} {options} {shape} K={K}")


@pytest.fixture(scope="module")
def tiny():
    model = tiny_llama(tie=True)
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    base["lm_head.weight"] = base["model.embed_tokens.weight"]
    experts = [perturbed(base, 200 + i) for i in range(len(EXPERTS))]
    return model, base, experts


def space_for(model, m: MergeMethod, *, fixed_trim: bool = False) -> CoefficientSpace:
    ranges = search_ranges(m)
    params = {p: float(np.mean(ranges[p])) for p in m.trim} if fixed_trim else {}
    search = {p: r for p, r in ranges.items() if p not in params}
    mc = MergeConfig(method=m.name, granularity="block:2", split=["self_attn", "mlp"], search=search, params=params)
    return CoefficientSpace.build([n for n, _ in model.named_parameters()], list(EXPERTS), mc)


def merged_by(tiny, m: MergeMethod, plan, *, fixed_trim: bool = False) -> list[dict[str, torch.Tensor]]:
    model, base, experts = tiny
    space = space_for(model, m, fixed_trim=fixed_trim)
    mat = Materializer(model, base, experts, space, m.name, {}, run_seed=3, plan=plan, chunk=100)
    assert mat.plan.kind == (plan if isinstance(plan, str) else plan.kind)
    outs = []
    for trial in (1, 2):
        mat.apply(rand_x(space, trial), trial)
        outs.append({n: p.detach().clone() for n, p in model.named_parameters()})
    return outs


@pytest.mark.parametrize("name", NAMES)
def test_materialized_model_equals_the_reference(tiny, name: str) -> None:
    m = METHODS.get(name)
    model, base, experts = tiny
    space = space_for(model, m)
    mat = Materializer(model, base, experts, space, name, {}, run_seed=3)
    x = rand_x(space, 9)
    mat.apply(x, 9)
    ref = reference_model(model, base, experts, space, name, {}, x, 9, run_seed=3)
    for n, p in model.named_parameters():
        assert_close_ref(p, ref[n], f"{name} {n}")


@pytest.mark.parametrize("name", NAMES)
def test_every_plan_is_bit_identical_to_resident(tiny, name: str) -> None:
    m = METHODS.get(name)
    cases = [(False, Plan("streamed", False)), (False, Plan("streamed", True))]
    if m.magnitude_trim:
        cases.append((True, Plan("sparse", False)))
    for fixed, plan in cases:
        ref = merged_by(tiny, m, "resident", fixed_trim=fixed)
        got = merged_by(tiny, m, plan, fixed_trim=fixed)
        for a, b in zip(ref, got, strict=True):
            for n in a:
                assert torch.equal(a[n], b[n]), f"{name} {plan} {n}"


# ----------------------------------------------------------------------------- export


@pytest.mark.parametrize("name", NAMES)
def test_export_rescores_to_the_stored_values(name: str, toy_root: Path, tmp_path: Path) -> None:
    """A 3-trial toy search with the method, every searchable parameter searched; the exported
    folder, reloaded through the factory, scores exactly what the store recorded."""
    from evaluators import build_evaluator, context_for
    from search.controller import launch
    from search.export import export_trial
    from search.report import load_run
    from search.seeding import trial_seed
    from search.store import COMPLETE
    from tests.toy_problem import load_toy, toy_config

    m = METHODS.get(name)
    cfg_d = toy_config(toy_root, name=f"conf-{name}", budget=3, store=str(tmp_path / "c.db"))
    cfg_d["merge"] = {"method": name, "granularity": "layer", "search": {p: list(r) for p, r in search_ranges(m).items()}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg_d))
    assert launch(str(path)) == 0
    done = [t for t in load_run(cfg_d["name"], cfg_d["store"]).trials if t.state == COMPLETE]
    assert len(done) == 3
    cfg = parse_config(cfg_d)
    for t in done[:2]:
        out = export_trial(cfg_d["name"], cfg_d["store"], t.number, tmp_path / f"export{t.number}")
        assert json.loads((out / "mergesearch.json").read_text())["trial"] == t.number
        assert m.card_line(m.resolve_options({})) in (out / "README.md").read_text()
        model = load_toy(str(out), torch.float32)
        for i, o in enumerate(cfg.objectives):
            ev = build_evaluator(o.evaluator, o.settings, context_for(cfg, "search"))
            res = ev.evaluate(model, None, seed=trial_seed(cfg.seed, t.number))
            assert res.metrics[ev.metric] == t.values[i], (name, o.name, t.number)


def _mergekit_yaml() -> str | None:
    from tests.test_export import _mergekit_yaml as find

    exe = find()
    return exe if exe and Path(exe).exists() else None


ROUND_TRIPS = [(n, {}) for n in NAMES] + [("linear", {"normalize": False})]  # + the base as a weighted source


@pytest.mark.parametrize("name,options", ROUND_TRIPS, ids=[n + "".join(f"-{k}={v}" for k, v in o.items()) for n, o in ROUND_TRIPS])
def test_mergekit_round_trip(name: str, options: dict, tiny_lm_zoo: Path, tmp_path: Path) -> None:
    """The exported recipe re-merges to the exported weights (up to summation order; exactly
    where the card says the recipe is exact and the method is deterministic)."""
    m = METHODS.get(name)
    if m.mergekit is None:
        pytest.skip(f"{name} has no mergekit equivalent")
    exe = _mergekit_yaml()
    if exe is None:
        pytest.skip("mergekit is not installed (pip install mergekit, or set MERGEKIT_YAML)")
    if m.random:
        pytest.skip(f"{name} draws random masks: mergekit draws its own, so only the recipe's structure can agree")
    from search.export import export_trial
    from search.models import param_names
    from search.store import COMPLETE
    from tests.test_export import flat_state, hand_store, mergekit_merge, tiny_cfg

    cfg = tiny_cfg(f"mk-{name}", name)
    cfg["merge"]["search"] = {p: list(r) for p, r in search_ranges(m).items()}
    cfg["merge"]["params"] = {**cfg["merge"].get("params", {}), **options}
    store = hand_store(tmp_path / "mk.db", cfg, [(0, COMPLETE, (0.5,))], x_seed=3, names=param_names(parse_config(cfg)))
    out = export_trial(cfg["name"], store, 0, tmp_path / "export")
    ours, theirs = flat_state(out), mergekit_merge(exe, out, tmp_path / "mk")
    assert set(ours) == set(theirs)
    for n in ours:
        torch.testing.assert_close(ours[n], theirs[n], rtol=2e-6, atol=1e-6, msg=f"{name} {n}")


def test_a_kernel_given_as_a_plain_function_is_not_bound_to_the_method() -> None:
    """``kernel = fn`` in a method's class body reaches the merge as ``fn`` itself (not a bound
    method that would pass the method object as the first chunk argument)."""
    from search.merge.methods import MergeMethod

    def chunk(*args: Any) -> None:
        return None

    class PlainKernel(MergeMethod):
        name = "plain_kernel_probe"
        params = {"weight": 1.0}
        summary = "probe"
        kernel = chunk

    assert PlainKernel().kernel is chunk


# ----------------------------------------------------------------------------- the README's example

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_method() -> MergeMethod:
    """The merge method file shown in the README ("A merge method's file, complete"), run as a
    module; returns the ``MergeMethod`` instance it defines."""
    import re
    import types

    text = README.read_text()
    at = text.index("A merge method's file, complete")
    block = re.search(r"```python\n(.*?)```", text[at:], re.S)
    assert block is not None, "the README's merge method example has no ```python block"
    mod = types.ModuleType("readme_merge_method")
    exec(compile(block.group(1), f"{README}:merge method example", "exec"), mod.__dict__)
    (method,) = [v for v in vars(mod).values() if isinstance(v, MergeMethod)]
    return method


def test_the_readme_merge_method_example_conforms(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's example method, registered for this test, passes the suite's tensor checks:
    kernels = its numpy reference, a materialized model = the reference, streamed plans
    bit-identical to resident (so the example cannot rot)."""
    m = readme_method()
    assert m.name not in METHODS.names(), f"the README example's name {m.name!r} is taken"
    monkeypatch.setitem(METHODS._entries, m.name, m)
    assert METHODS.get(m.name) is m
    test_kernels_equal_the_numpy_reference(m.name)
    test_materialized_model_equals_the_reference(tiny, m.name)
    test_every_plan_is_bit_identical_to_resident(tiny, m.name)
