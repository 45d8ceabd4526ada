"""search export: model folders that reproduce the stored scores, the card, the mergekit recipe,
picking by preference, and refusing bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from search.cli import main
from search.config import parse_config
from search.errors import ConfigError
from search.export import ExportError, export_trial, parse_prefer, pick_trial, preference_scores
from search.models import param_names
from search.report import load_run
from search.space import CoefficientSpace
from search.store import COMPLETE, FAIL, Store

EXPERTS = ("add", "reverse", "sort")


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def tiny_lm(request: pytest.FixtureRequest) -> Path:
    """Folder of the tiny-lm zoo (the shared session fixture when conftest has one)."""
    for name in ("tiny_lm_zoo", "tiny_lm_root", "zoo_tiny_lm"):
        try:
            return Path(request.getfixturevalue(name))
        except pytest.FixtureLookupError:
            continue
    from search.zoo import zoo_path

    return zoo_path("zoo:tiny-lm/base", build=True).parent


def tiny_cfg(name: str, method: str = "task_arithmetic", **merge: object) -> dict:
    search = {"weight": [0.0, 1.0]}
    if method in ("ties", "dare_ties", "dare_linear", "breadcrumbs"):
        search["density"] = [0.3, 0.9]
    return {
        "name": name,
        "seed": 5,
        "models": {"base": "zoo:tiny-lm/base", "experts": [{"name": e, "path": f"zoo:tiny-lm/{e}"} for e in EXPERTS]},
        "merge": {"method": method, "granularity": "layer", "search": search, **merge},
        "objectives": [
            {"name": "add", "evaluator": "lm_eval", "direction": "maximize",
             "settings": {"tasks": ["tinylm_add"], "metric": "exact_match,none", "limit": 8}},
        ],
        "strategy": {"name": "random", "budget": 2},
    }


def hand_store(path: Path, cfg_dict: dict, rows: list[tuple[int, str, tuple | None]], x_seed: int = 0,
               names: list[str] | None = None) -> str:
    """A store written through the Store API: one trial per row (number, state, values), each with
    a random coefficient vector (``names``: the model's parameter names, to build the space)."""
    cfg = parse_config(cfg_dict)
    coords: list[str]
    if names is not None:
        space = CoefficientSpace.build(names, [e.name for e in cfg.models.experts], cfg.merge)
        coords = list(space.names)
        lo, hi = space.lower, space.upper
    else:
        coords = [f"layers.00/{e.name}/weight" for e in cfg.models.experts]
        lo, hi = np.zeros(len(coords)), np.ones(len(coords))
    st = Store.open(str(path))
    study = st.create_study(cfg.name, cfg.to_yaml(), "sha", [(o.name, o.direction) for o in cfg.objectives],
                            {"names": coords, "base_dir": str(path.parent)})
    rng = np.random.default_rng(x_seed)
    for number, state, values in rows:
        x = rng.uniform(lo, hi)
        tid = st.add_trial(study.id, number, {"generation": 0}, dict(zip(coords, x.tolist(), strict=True)), "random")
        if state == COMPLETE:
            st.finish_trial(tid, COMPLETE, values=list(values))
        elif state == FAIL:
            st.finish_trial(tid, FAIL, error="RuntimeError: boom")
    st.close()
    return str(path)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    rc = main(["export", *argv])
    return rc, capsys.readouterr().err


def flat_state(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def resolve_setting(tensor: str, setting: object) -> float:
    """mergekit's reading of a per-tensor parameter: a number, or the first filter entry that
    is absent or a substring of the tensor name (written here independently of search.recipe)."""
    if not isinstance(setting, list):
        return float(setting)  # type: ignore[arg-type]
    for c in setting:
        if "filter" not in c or c["filter"] in tensor:
            return float(c["value"])
    raise AssertionError(f"no entry of {setting} applies to {tensor}")


# ----------------------------------------------------------------------------- picking (no models)

# math, code maximised; len minimised. Front: 0, 1, 2, 5 (3 dominated by 1, 6 by 5); 4 failed; 7 running.
PICK_ROWS = [
    (0, COMPLETE, (0.9, 0.1, 50.0)),
    (1, COMPLETE, (0.5, 0.5, 40.0)),
    (2, COMPLETE, (0.1, 0.9, 60.0)),
    (3, COMPLETE, (0.4, 0.4, 45.0)),
    (4, FAIL, None),
    (5, COMPLETE, (0.95, 0.0, 100.0)),
    (6, COMPLETE, (0.95, 0.0, 120.0)),
    (7, "RUNNING", None),
]


@pytest.fixture(scope="module")
def pick_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("pick")
    cfg = tiny_cfg("pick")
    cfg["objectives"] = [
        {"name": "math", "evaluator": "python", "direction": "maximize"},
        {"name": "code", "evaluator": "python", "direction": "maximize"},
        {"name": "len", "evaluator": "python", "direction": "minimize"},
    ]
    return hand_store(d / "pick.db", cfg, PICK_ROWS)


@pytest.mark.parametrize(
    "prefer, expected",
    [
        ("math=1", 5),
        ("code=1", 2),
        ("len=1", 1),  # minimised: the shortest front member
        ("math=1,code=1", 0),
        ("math=1,code=1,len=1", 1),
        # normalised: len's large raw range does not swamp math (raw weighted sums would pick 1)
        ("math=0.5,len=0.5", 0),
        (" math = 0.7 , code = 0.3 ", 5),
    ],
)
def test_prefer_picks_the_front_member_with_the_best_normalised_weighted_sum(pick_store: str, prefer: str, expected: int) -> None:
    data = load_run("pick", pick_store)
    assert data.front == [0, 1, 2, 5]
    t, how = pick_trial(data, prefer=prefer)
    assert t.number == expected
    assert "front members" in how


def test_preference_scores_rule() -> None:
    vals = np.array([[0.9, 50.0], [0.5, 40.0], [0.1, 60.0]])
    s = preference_scores(vals, ["maximize", "minimize"], [1.0, 1.0])
    # math: (v - 0.1) / 0.8 ; len flipped: 1 - (v - 40) / 20
    np.testing.assert_allclose(s, [1.0 + 0.5, 0.5 + 1.0, 0.0 + 0.0])
    # an objective on which all members agree counts 1 for everyone
    s = preference_scores(np.array([[1.0, 3.0], [2.0, 3.0]]), ["maximize", "minimize"], [0.0, 1.0])
    np.testing.assert_allclose(s, [1.0, 1.0])


def test_best_respects_direction_and_breaks_ties_by_number(pick_store: str) -> None:
    data = load_run("pick", pick_store)
    assert pick_trial(data, best="math")[0].number == 5  # 5 and 6 tie at 0.95
    assert pick_trial(data, best="code")[0].number == 2
    assert pick_trial(data, best="len")[0].number == 1  # minimised


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["--trial", "17"], ["no trial 17", "nearest complete trials: 3, 5, 6"]),
        (["--trial", "4"], ["trial 4", "failed", "boom", "nearest complete trials: 2, 3, 5"]),
        (["--trial", "7"], ["still running", "nearest complete trials: 3, 5, 6"]),
        (["--best", "maht"], ["unknown objective 'maht'", "did you mean 'math'"]),
        (["--prefer", "math:0.7"], ["expected 'objective=weight,...'"]),
        (["--prefer", "math=0.7;code=0.3"], ["expected 'objective=weight,...'"]),
        (["--prefer", "math=lots"], ["not a number", "expected 'objective=weight,...'"]),
        (["--prefer", "math=-1"], [">= 0"]),
        (["--prefer", "math=0,code=0"], ["all weights are 0"]),
        (["--prefer", "math=1,math=2"], ["given twice"]),
        (["--prefer", "cod=1"], ["unknown objective 'cod'", "did you mean 'code'"]),
    ],
)
def test_bad_choices_are_one_line_errors(pick_store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         argv: list[str], expect: list[str]) -> None:
    rc, err = run_cli(capsys, "pick", "--store", pick_store, *argv, "--out", str(tmp_path / "out"))
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for e in expect:
        assert e in lines[0], (e, lines[0])
    assert not (tmp_path / "out").exists()


def test_parse_prefer() -> None:
    assert parse_prefer("math=0.7,code=0.3", ["math", "code"]) == {"math": 0.7, "code": 0.3}
    with pytest.raises(ConfigError, match="e.g. 'math=0.7,code=0.3'"):
        parse_prefer("", ["math", "code"])


# ----------------------------------------------------------------------------- output folder (no models)


def test_non_empty_output_folder_is_refused_without_force(pick_store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    rc, err = run_cli(capsys, "pick", "--store", pick_store, "--trial", "0", "--out", str(out))
    assert rc == 2 and "not empty" in err and "--force" in err
    assert (out / "notes.txt").read_text() == "mine"


def test_symlinks_and_dotdot_that_escape_are_refused(pick_store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    # a file the export writes is a symlink leading outside (even with --force)
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").symlink_to(outside)
    rc, err = run_cli(capsys, "pick", "--store", pick_store, "--trial", "0", "--out", str(out), "--force")
    assert rc == 2 and "symlink" in err
    assert outside.read_text() == "keep me"
    # the output folder itself is a symlink
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    rc, err = run_cli(capsys, "pick", "--store", pick_store, "--trial", "0", "--out", str(tmp_path / "link"))
    assert rc == 2 and "symlink" in err
    # under a root (the dashboard's use): '..' and symlinks out of the root
    root = tmp_path / "exports"
    root.mkdir()
    (root / "away").symlink_to(tmp_path)
    for bad in ("../escaped", "away/x", str(tmp_path / "abs")):
        with pytest.raises(ExportError):
            export_trial("pick", pick_store, 0, bad, root=root)
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- recipe (no mergekit)


@pytest.fixture(scope="module")
def ta_export(tiny_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[str]]:
    """A task-arithmetic trial with self_attn split groups, exported with small shards."""
    d = tmp_path_factory.mktemp("ta")
    cfg = tiny_cfg("ta", "task_arithmetic", split=["self_attn"], params={"lambda": 0.8})
    names = param_names(parse_config(cfg))
    store = hand_store(d / "ta.db", cfg, [(0, COMPLETE, (0.25,)), (1, COMPLETE, (0.5,))], x_seed=3, names=names)
    out = export_trial("ta", store, 1, d / "export", max_shard_size="300KB")
    return out, cfg, names


def test_export_is_a_loadable_sharded_hf_folder(ta_export: tuple[Path, dict, list[str]], tiny_lm: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _, names = ta_export
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors.index.json", "README.md",
            "mergekit_config.yml", "mergesearch.json", "tokenizer.json", "tokenizer_config.json"} <= files
    assert len([f for f in files if f.endswith(".safetensors")]) > 1  # sharded
    model = AutoModelForCausalLM.from_pretrained(out)
    assert [n for n, _ in model.named_parameters()] == names
    assert model.dtype == torch.float32
    tok, base_tok = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(tiny_lm / "base")
    assert tok("12+34=")["input_ids"] == base_tok("12+34=")["input_ids"]
    meta = json.loads((out / "mergesearch.json").read_text())
    assert meta["run"] == "ta" and meta["trial"] == 1 and meta["values"] == [0.5]


def test_recipe_structure_and_that_it_describes_the_exported_weights(ta_export: tuple[Path, dict, list[str]], tiny_lm: Path) -> None:
    out, cfg, names = ta_export
    recipe = yaml.safe_load((out / "mergekit_config.yml").read_text())
    assert recipe["merge_method"] == "task_arithmetic"
    assert Path(recipe["base_model"]).resolve() == (tiny_lm / "base").resolve()
    assert recipe["parameters"] == {"lambda": 0.8}
    assert recipe["dtype"] == "float32"
    slices = recipe["slices"]
    n_layers = json.loads((tiny_lm / "base" / "config.json").read_text())["num_hidden_layers"]
    assert [s["sources"][0]["layer_range"] for s in slices] == [[i, i + 1] for i in range(n_layers)]
    for s in slices:
        assert [Path(src["model"]).resolve() for src in s["sources"]] == [(tiny_lm / m).resolve() for m in ("base", *EXPERTS)]
        assert "parameters" not in s["sources"][0]
    # embed and head are explicit filter entries of the first / last slice
    first = slices[0]["sources"][1]["parameters"]["weight"]
    assert first[0]["filter"] == "model.embed_tokens.weight"
    last = {c.get("filter") for c in slices[-1]["sources"][1]["parameters"]["weight"]}
    assert {"model.norm.weight", "lm_head.weight", "self_attn", None} <= last

    # every tensor's weight in the recipe equals the trial's coefficient of its group ...
    trial = json.loads((out / "mergesearch.json").read_text())
    space = CoefficientSpace.build(names, list(EXPERTS), parse_config(cfg).merge)
    x = space.from_dict(trial["params"])
    table = space.values(x)["weight"]

    def slice_of(n: str) -> int:
        g = space.groups[space.tensor_group[n]]
        return 0 if g == "embed" else len(slices) - 1 if g == "head" else space.group_layers[space.tensor_group[n]][0]

    coeff = {}
    for n in names:
        srcs = slices[slice_of(n)]["sources"]
        coeff[n] = [resolve_setting(n, srcs[1 + e]["parameters"]["weight"]) for e in range(3)]
        assert coeff[n] == [float(v) for v in table[space.tensor_group[n]]], n
    # ... and mergekit's task arithmetic with those numbers gives the exported weights
    base = load_file(str(tiny_lm / "base" / "model.safetensors"))
    experts = [load_file(str(tiny_lm / e / "model.safetensors")) for e in EXPERTS]
    got = flat_state(out)
    for n in names:
        deltas = torch.stack([ex[n] - base[n] for ex in experts])
        w = torch.tensor(coeff[n]).view(-1, *[1] * base[n].dim())
        want = base[n] + (deltas * w).sum(0) * 0.8
        torch.testing.assert_close(got[n], want, rtol=1e-6, atol=1e-6)


def test_card_lists_models_method_coefficients_scores_and_config(ta_export: tuple[Path, dict, list[str]]) -> None:
    out, cfg, _ = ta_export
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert "merge" in front["tags"] and "mergekit" in front["tags"]
    for needle in ["# ta trial 1", "zoo:tiny-lm/base", "expert `sort`", "`task_arithmetic`", "`lambda` = 0.8",
                   "### weight (searched)", "| layers.01.self_attn |", "| embed |", "| head |",
                   "Front rank 0", "tinylm_add", "limit=8", "Benchmark contamination", "## Full config",
                   "mergekit_config.yml", "strategy `random`"]:
        assert needle in card, needle
    assert yaml.safe_load(card.split("```yaml\n")[1].split("```")[0])["merge"]["split"] == ["self_attn"]


def test_force_rewrites_and_drops_old_shards(ta_export: tuple[Path, dict, list[str]], tmp_path: Path) -> None:
    out, _, _ = ta_export
    store = str(out.parent / "ta.db")
    target = tmp_path / "again"
    shutil.copytree(out, target)  # sharded
    (target / "notes.txt").write_text("mine")
    export_trial("ta", store, 0, target, force=True)  # default shard size: one file
    assert sorted(p.name for p in target.glob("*.safetensors")) == ["model.safetensors"]
    assert not (target / "model.safetensors.index.json").exists()
    assert (target / "notes.txt").read_text() == "mine"
    assert json.loads((target / "mergesearch.json").read_text())["trial"] == 0


def test_bfloat16_config_exports_bfloat16_weights_rounded_once(ta_export: tuple[Path, dict, list[str]], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    out32, cfg, names = ta_export
    cfg = {**cfg, "name": "ta16", "models": {**cfg["models"], "dtype": "bfloat16"}}
    store = hand_store(tmp_path / "ta16.db", cfg, [(0, COMPLETE, (0.25,)), (1, COMPLETE, (0.5,))], x_seed=3, names=names)
    out = export_trial("ta16", store, 1, tmp_path / "export")
    w16, w32 = flat_state(out), flat_state(out32)
    for n in names:
        assert w16[n].dtype == torch.bfloat16
        assert torch.equal(w16[n], w32[n].to(torch.bfloat16)), n  # merged in float32, rounded once
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16
    recipe = yaml.safe_load((out / "mergekit_config.yml").read_text())
    assert (recipe["dtype"], recipe["out_dtype"]) == ("float32", "bfloat16")


def test_hub_ids_are_linked_local_and_zoo_sources_are_not(tmp_path: Path) -> None:
    from search.card import is_hub_id

    assert is_hub_id("meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B")
    assert not is_hub_id("zoo:tiny-lm/base", "/cache/zoo/tiny-lm/base")
    (tmp_path / "org" / "model").mkdir(parents=True)
    assert not is_hub_id("org/model", str(tmp_path / "org" / "model"))  # resolved to a local folder


# ----------------------------------------------------------------------------- factory (non-HF) models


def test_factory_model_export_reloads_through_its_factory(toy_root: Path, tmp_path: Path) -> None:
    from search.merge.materializer import build_materializer
    from search.models import load_model
    from tests.toy_problem import load_toy, toy_config

    cfg_d = toy_config(toy_root, name="toyx")
    cfg = parse_config(cfg_d)
    store = hand_store(tmp_path / "toy.db", cfg_d, [(0, COMPLETE, (0.3, 0.4))], names=param_names(cfg))
    out = export_trial("toyx", store, 0, tmp_path / "export")
    assert json.loads((out / "mergesearch_factory.json").read_text())["factory"] == "tests.toy_problem:load_toy"
    assert not (out / "mergekit_config.yml").exists()
    assert "No mergekit recipe was written" in (out / "README.md").read_text()
    # the reloaded weights are the materializer's for that trial
    model = load_model(cfg.models.base, cfg)
    space = CoefficientSpace.build([n for n, _ in model.named_parameters()], ["a", "b"], cfg.merge)
    trial = json.loads((out / "mergesearch.json").read_text())
    build_materializer(cfg.merge, cfg.models, model, space, base_dir=cfg.base_dir, seed=cfg.seed).apply(space.from_dict(trial["params"]), 0)
    again = load_toy(str(out), torch.float32)
    for (n, p), (_, q) in zip(model.named_parameters(), again.named_parameters(), strict=True):
        assert torch.equal(p, q), n


# ----------------------------------------------------------------------------- a real search, re-scored


LL_TASK = """
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
validation_split: validation
output_type: loglikelihood
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: ""
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


@pytest.fixture(scope="module")
def launched(tiny_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    """A real `search launch` on tiny-lm with DARE-TIES (random masks seeded by trial number).
    Objectives are answer perplexities (lm-eval loglikelihood tasks on the zoo's data): continuous
    scores, so a merge that differs anywhere shows in the comparison."""
    pytest.importorskip("evaluators.lm_eval")
    from search.controller import launch
    from search.zoo.tiny_lm import task_data_dir

    d = tmp_path_factory.mktemp("launch")
    tasks = d / "tasks"
    tasks.mkdir()
    objectives = []
    for task in ("add", "reverse"):
        name = f"export_{task}_ppl"
        (tasks / f"{name}.yaml").write_text(LL_TASK.format(name=name, data=task_data_dir() / f"{task}_validation.jsonl"))
        objectives.append({"name": task, "evaluator": "lm_eval", "direction": "minimize",
                           "settings": {"tasks": [name], "metric": "perplexity,none", "limit": 12, "include_path": [str(tasks)]}})
    cfg = tiny_cfg("dare", "dare_ties")
    cfg["models"]["experts"] = cfg["models"]["experts"][:2]
    cfg["merge"]["granularity"] = "block:2"
    cfg["objectives"] = objectives
    cfg["strategy"]["budget"] = 3
    cfg["store"] = str(d / "dare.db")
    path = d / "dare.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert launch(str(path)) == 0
    return cfg["store"], cfg


def test_exported_folder_reproduces_the_stored_scores_exactly(launched: tuple[str, dict], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evaluators import build_evaluator, context_for
    from search.seeding import trial_seed

    store, cfg_d = launched
    data = load_run("dare", store)
    done = [t for t in data.trials if t.state == COMPLETE]
    assert done
    # pick the trial whose DARE masks matter most: the one with the lowest density anywhere
    t = min(done, key=lambda t: min(v for k, v in t.params.items() if k.endswith("/density")))
    out = tmp_path / "dare"
    assert main(["export", "dare", "--store", store, "--trial", str(t.number), "--out", str(out)]) == 0
    capsys.readouterr()

    cfg = parse_config(cfg_d)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    model.eval()
    tok = AutoTokenizer.from_pretrained(out)
    for i, o in enumerate(cfg.objectives):
        ev = build_evaluator(o.evaluator, o.settings, context_for(cfg, "search"))
        with torch.no_grad():
            res = ev.evaluate(model, tok, seed=trial_seed(cfg.seed, t.number))
        assert res.metrics[ev.metric] == t.values[i], (o.name, res.metrics, t.values)

    card = (out / "README.md").read_text()
    assert "It cannot reproduce this merge exactly" in card and "drops entries at random" in card
    assert f"trial {t.number}" in card and "lm_eval" in card
    assert len({tuple(u.values) for u in done}) == len(done)  # the scores tell the merges apart


# ----------------------------------------------------------------------------- mergekit, when installed


def _mergekit_yaml() -> str | None:
    exe = os.environ.get("MERGEKIT_YAML") or shutil.which("mergekit-yaml")
    if exe:
        return exe
    try:
        import mergekit  # noqa: F401
    except ImportError:
        return None
    return str(Path(sys.executable).with_name("mergekit-yaml"))


def test_mergekit_reproduces_the_export(tiny_lm: Path, tmp_path: Path) -> None:
    """mergekit-yaml on the exported recipes gives the exported weights: bit for bit for TIES
    (lambda 1), and up to summation order (a few float32 ulps) for task arithmetic and linear."""
    exe = _mergekit_yaml()
    if exe is None or not Path(exe).exists():
        pytest.skip("mergekit is not installed (pip install mergekit, or set MERGEKIT_YAML)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    runs = {}
    for method in ("ties", "task_arithmetic", "linear"):
        d = tmp_path / method
        d.mkdir()
        cfg = tiny_cfg(f"mk-{method}", method, split=["mlp"])
        store = hand_store(d / "mk.db", cfg, [(0, COMPLETE, (0.5,))], x_seed=7, names=param_names(parse_config(cfg)))
        out = export_trial(f"mk-{method}", store, 0, d / "export")
        proc = subprocess.Popen([exe, str(out / "mergekit_config.yml"), str(d / "mk")], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        runs[method] = (out, d / "mk", proc)  # the three mergekit runs overlap
    for method, (out, mk, proc) in runs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (method, err[-2000:])
        ours, theirs = flat_state(out), flat_state(mk)
        assert set(ours) == set(theirs)
        for n in ours:
            if method == "ties":
                assert torch.equal(ours[n], theirs[n]), (method, n)
            else:
                torch.testing.assert_close(ours[n], theirs[n], rtol=2e-6, atol=1e-6, msg=f"{method} {n}")


@pytest.fixture(scope="module")
def deep_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-layer Llama built from a config (random weights) and 3 experts = base + seeded random
    deltas, saved as Hugging Face folders with the tiny-lm byte tokenizer: enough layers for a
    schedule's gradient lists to interpolate between knots."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from search.zoo.tiny_lm import build_tokenizer

    root = tmp_path_factory.mktemp("deep")
    tok = build_tokenizer()
    conf = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=6,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=False)
    torch.manual_seed(0)
    return save_base_and_experts(LlamaForCausalLM(conf), tok, root, ("base", *EXPERTS), 0.02, seed=0)


def save_base_and_experts(model: torch.nn.Module, tok: object, root: Path, names: tuple[str, ...], scale: float,
                          seed: int) -> Path:
    """Save ``model`` as ``root/names[0]`` and, for each further name i, the model plus
    ``scale`` x seeded Gaussian noise (generator seed ``seed + i``), each with ``tok``."""
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    for i, name in enumerate(names):
        g = torch.Generator().manual_seed(seed + i)
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(base[n] + (scale * torch.randn(p.shape, generator=g) if i else 0.0))
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)  # type: ignore[attr-defined]
    return root


def mergekit_merge(exe: str, export: Path, dest: Path) -> dict[str, torch.Tensor]:
    """Run ``mergekit-yaml`` on an export's recipe into ``dest``; return its tensors."""
    proc = subprocess.run([exe, str(export / "mergekit_config.yml"), str(dest)], env={**os.environ, "HF_HUB_OFFLINE": "1"},
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return flat_state(dest)


def test_mergekit_reproduces_a_schedule_export(deep_llama: Path, tmp_path: Path) -> None:
    """A schedule:3 TIES trial (weight and density per knot, split attention / MLP) exports as
    one slice of gradient lists, and mergekit-yaml re-merges it to the exported weights bit for bit."""
    cfg = tiny_cfg("mk-sched", "ties", split=["self_attn", "mlp"])
    cfg["models"] = {"base": str(deep_llama / "base"), "experts": [{"name": e, "path": str(deep_llama / e)} for e in EXPERTS]}
    cfg["merge"]["granularity"] = "schedule:3"
    store = hand_store(tmp_path / "mk.db", cfg, [(0, COMPLETE, (0.5,))], x_seed=11, names=param_names(parse_config(cfg)))
    out = export_trial("mk-sched", store, 0, tmp_path / "export")
    recipe = yaml.safe_load((out / "mergekit_config.yml").read_text())
    (sl,) = recipe["slices"]
    weight = sl["sources"][1]["parameters"]["weight"]
    assert [len(c["value"]) for c in weight if c.get("filter") in ("self_attn", "mlp", None)] == [3, 3, 3]
    card = (out / "README.md").read_text()
    assert "It cannot reproduce this merge exactly" not in card and "interpolated from the 3 searched knots" in card
    exe = _mergekit_yaml()
    if exe is None or not Path(exe).exists():
        pytest.skip("mergekit is not installed (pip install mergekit, or set MERGEKIT_YAML)")
    ours, theirs = flat_state(out), mergekit_merge(exe, out, tmp_path / "mk")
    assert set(ours) == set(theirs)
    for n in ours:
        assert torch.equal(ours[n], theirs[n]), n
