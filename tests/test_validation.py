"""One validation path: `search validate`, `search launch` and `search resume` refuse the same
configs with the same one-line messages, before anything is written to the store; validate
reads model headers only."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from search.cli import main
from search.config import load_config, parse_config
from search.controller import config_identity
from search.errors import ConfigError
from search.store import Store
from search.validation import check_config, check_run
from tests.toy_problem import toy_config

REPO = Path(__file__).resolve().parents[1]

# (case, strategy, options, budget, expected issue line); the toy space has 4 coordinates
# (2 layers x 2 experts), 2 objectives and the seed points expert:a, expert:b, base, uniform
REFUSALS = [
    ("mobo-max-dim", "mobo", {"max_dim": 3}, 12,
     "strategy.options: mobo models up to max_dim=3 coordinates and this space has 4; use a coarser granularity"),
    ("cmaes-x0-length", "cmaes", {"x0": [0.5, 0.5, 0.5]}, 12,
     "strategy.options.x0: x0 has 3 values but the space has 4 coordinates"),
    ("cmaes-x0-unknown-seed", "cmaes", {"x0": "expert:c"}, 12,
     "strategy.options.x0: x0 'expert:c' is not 'auto', 'center', 'random' or a seed point (expert:a, expert:b, base, uniform)"),
    ("cmaes-weights", "cmaes", {"weights": [1.0, 2.0, 3.0]}, 12,
     "strategy.options: weights has 3 values but there are 2 objectives"),
    ("map-dim-budget", "map", {}, 50,
     "strategy.options: map fits one quadratic per objective with (d+1)(d+2)/2 = 15 parameters"),
    ("map-nested-budget", "map", {"nested": True}, 30, "strategy.options: nested MAP with 3 experts needs about 39 evaluations"),
    ("map-links", "map", {"links": ["identity"] * 3}, 200, "strategy.options: links has 3 entries but there are 2 objectives"),
    ("map-preference", "map", {"preference": [1.0]}, 200, "strategy.options: preference has 1 weights but there are 2 objectives"),
    ("optuna-cmaes-sampler", "optuna", {"sampler": "cmaes"}, 12,
     "strategy.options: Optuna's CmaEsSampler handles one objective but there are 2"),
]


def _write(tmp_path: Path, cfg: dict, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg))
    return p


def _errors(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]


@pytest.mark.parametrize("case,strategy,options,budget,expected", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_validate_and_launch_refuse_alike_before_the_store(case: str, strategy: str, options: dict, budget: int, expected: str,
                                                           toy_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = toy_config(toy_root, name=case, strategy=strategy, options=options, budget=budget)
    if case == "map-nested-budget":  # nested MAP needs 3 experts
        cfg["models"]["experts"].append({"name": "c", "path": str(toy_root / "expert_a")})
    path = _write(tmp_path, cfg)
    store = tmp_path / "runs" / "store.db"

    assert main(["validate", str(path)]) == 2
    validate_lines = _errors(capsys)
    assert main(["launch", str(path), "--store", str(store)]) == 2
    launch_lines = _errors(capsys)

    assert any(line.startswith(f"error: {expected}") for line in validate_lines), validate_lines
    assert launch_lines == validate_lines
    assert not store.exists() and not (tmp_path / "runs").exists()


def test_launch_budget_override_is_checked_before_the_store(toy_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--budget` changes what map can do: launch checks the config with the override applied,
    and an existing store gains no run."""
    path = _write(tmp_path, toy_config(toy_root, name="mapb", strategy="map", budget=200))
    assert main(["validate", str(path)]) == 0
    store = tmp_path / "shared.db"
    st = Store.open(str(store))
    other = parse_config(toy_config(toy_root, name="other"))
    st.create_study("other", other.to_yaml(), config_identity(other), [("near_a", "maximize"), ("near_b", "maximize")], {})
    st.close()
    capsys.readouterr()

    assert main(["launch", str(path), "--store", str(store), "--budget", "50"]) == 2
    assert any("map fits one quadratic" in line and "the budget is 50" in line for line in _errors(capsys))
    st = Store.open(str(store), readonly=True)
    try:
        assert st.study_names() == ["other"]
    finally:
        st.close()


def test_resume_of_a_refused_stored_config_writes_nothing(toy_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A stored run whose config the strategy refuses: resume prints validate's line, takes no
    lock, and adds no trial, state or status change."""
    cfg = parse_config(toy_config(toy_root, name="stored", strategy="mobo", options={"max_dim": 3}))
    store = tmp_path / "stored.db"
    st = Store.open(str(store))
    study = st.create_study("stored", cfg.to_yaml(), config_identity(cfg), [("near_a", "maximize"), ("near_b", "maximize")],
                            {"base_dir": str(tmp_path)})
    st.close()

    assert main(["resume", "stored", "--store", str(store)]) == 2
    assert any(line.startswith("error: strategy.options: mobo models up to max_dim=3") for line in _errors(capsys))
    st = Store.open(str(store), readonly=True)
    try:
        after = st.study("stored")
        assert (after.status, after.lock_owner) == (study.status, None)
        assert st.trials(after.id) == [] and st.latest_snapshot(after.id) is None and st.events(after.id) == []
    finally:
        st.close()


def test_cli_refusal_is_one_line_per_problem_and_exit_2(toy_root: Path, tmp_path: Path) -> None:
    path = _write(tmp_path, toy_config(toy_root, strategy="cmaes", options={"x0": [0.1, 0.2]}))
    for cmd in (["validate", str(path)], ["launch", str(path), "--store", str(tmp_path / "s.db")]):
        r = subprocess.run([sys.executable, "-m", "search", *cmd], capture_output=True, text=True, cwd=REPO, timeout=300)
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr
        assert [line for line in r.stderr.splitlines() if line.startswith("error:")] == [
            "error: strategy.options.x0: x0 has 2 values but the space has 4 coordinates"
        ]
    assert not (tmp_path / "s.db").exists()


# ----------------------------------------------------------------------------- the real space


def _tiny_gpt2(folder: Path, tokenizer_from: Path) -> None:
    """A 2-layer GPT-2 whose safetensors header sorts the layers (transformer.h.*) before the
    embeddings (transformer.wpe, transformer.wte)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    conf = GPT2Config(n_layer=2, n_embd=16, n_head=2, n_positions=32, vocab_size=64, bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(conf).save_pretrained(folder)
    for f in tokenizer_from.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            shutil.copy(f, folder / f.name)


def test_map_refusal_uses_the_models_real_space(tiny_lm_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The model has 8 coordinates (embed, 2 layers, head x 2 experts); counting groups from the
    sorted header names gives 6 (28 quadratic terms: budget 150 would do), and the early estimate
    takes the smaller count of the sorted and the guessed order, so it lets the config through.
    Validate and launch both refuse, with the real count, and no store is created."""
    _tiny_gpt2(tmp_path / "gpt2", tiny_lm_zoo / "base")
    cfg = {
        "name": "g2",
        "models": {"base": str(tmp_path / "gpt2"),
                   "experts": [{"name": "x", "path": str(tmp_path / "gpt2")}, {"name": "y", "path": str(tmp_path / "gpt2")}]},
        "objectives": [{"name": "o", "evaluator": "python", "direction": "maximize", "settings": {"function": "tests.toy_problem:noop", "metric": "closeness"}}],
        "strategy": {"name": "map", "budget": 150},
    }
    path = _write(tmp_path, cfg)
    assert check_config(load_config(path)) == []  # the header-name estimate of check_config lets it through
    with pytest.raises(ConfigError) as ei:
        check_run(load_config(path))
    assert [str(i) for i in ei.value.issues][0].startswith(
        "strategy.options: map fits one quadratic per objective with (d+1)(d+2)/2 = 45 parameters")
    assert "this space has d = 8 coordinates and the budget is 150 (d <= 7 fits)" in str(ei.value)
    store = tmp_path / "g2.db"
    assert main(["launch", str(path), "--store", str(store)]) == 2
    assert not store.exists()


def test_header_names_are_put_in_the_models_order() -> None:
    """safetensors headers list tensors alphabetically; the space needs the model's order (what
    precedes the first layer is `embed`, what follows the last is `head`). Inputs are recognised
    by name (GPT-NeoX's `embed_out` is its head, not an input); layers go by index, not text."""
    from search.models import module_order

    neox = ["embed_out.weight", "gpt_neox.embed_in.weight", "gpt_neox.final_layer_norm.weight",
            "gpt_neox.layers.0.mlp.weight", "gpt_neox.layers.10.mlp.weight", "gpt_neox.layers.2.mlp.weight"]
    assert module_order(sorted(neox)) == ["gpt_neox.embed_in.weight", "gpt_neox.layers.0.mlp.weight", "gpt_neox.layers.2.mlp.weight",
                                          "gpt_neox.layers.10.mlp.weight", "embed_out.weight", "gpt_neox.final_layer_norm.weight"]
    gpt2 = ["lm_head.weight", "transformer.h.0.attn.weight", "transformer.ln_f.weight", "transformer.wpe.weight", "transformer.wte.weight"]
    assert module_order(gpt2)[:2] == ["transformer.wpe.weight", "transformer.wte.weight"]
    assert module_order(gpt2)[2] == "transformer.h.0.attn.weight"
    mlp = ["blocks.0.fc.weight", "blocks.1.fc.weight", "inp.weight", "out.weight"]
    assert module_order(mlp) == ["inp.weight", "blocks.0.fc.weight", "blocks.1.fc.weight", "out.weight"]
    # an order that names every tensor wins; one that misses some is ignored
    assert module_order(mlp, ["out.weight", *mlp[:3]]) == ["out.weight", *mlp[:3]]
    assert module_order(mlp, ["out.weight"]) == module_order(mlp)


def _truncate_weights(src: Path, dst: Path) -> None:
    """Copy a model folder, keeping of each safetensors file only its header."""
    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            head = struct.pack("<Q", n) + fh.read(n)
        f.write_bytes(head)


def test_validate_reads_headers_only(tiny_lm_zoo: Path, digits_zoo: Path, tmp_path: Path) -> None:
    """Model folders whose safetensors files end after the header (no tensor bytes) validate,
    with the space launch builds from the intact models; loading their weights fails."""
    from search.models import load_model

    for config, zoo, names in (("quickstart", tiny_lm_zoo, ("base", "add", "reverse")),
                               ("digits", digits_zoo, ("base", "low", "high"))):
        intact = load_config(REPO / "configs" / f"{config}.yaml")
        want = check_run(intact, run_code=True)
        data = yaml.safe_load((REPO / "configs" / f"{config}.yaml").read_text())
        data["models"]["base"] = str(tmp_path / config / "base")
        for e, name in zip(data["models"]["experts"], names[1:], strict=True):
            e["path"] = str(tmp_path / config / name)
        for name in names:
            _truncate_weights(zoo / name, tmp_path / config / name)
        cut = load_config(_write(tmp_path, data, f"{config}.yaml"))

        got = check_run(cut)
        assert got.note is None and got.space is not None and want.space is not None
        assert got.space.dim == want.space.dim and set(got.space.names) == set(want.space.names)
        assert got.problem is not None and want.problem is not None and got.problem.info() == want.problem.info()
        with pytest.raises(Exception):  # noqa: B017 - the tensors really are gone
            load_model(cut.models.base, cut)


def test_validate_builds_no_zoo_and_says_what_it_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MERGESEARCH_CACHE", str(tmp_path / "empty-cache"))
    assert main(["validate", str(REPO / "configs" / "digits.yaml")]) == 0
    out = capsys.readouterr().out
    assert ": ok (" in out and "note: the search space and the strategy's checks against it were skipped: zoo:digits/base" in out
    assert not (tmp_path / "empty-cache" / "zoo" / "digits").exists()


def test_unreadable_model_structure_is_one_line(tiny_lm_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "base"
    shutil.copytree(tiny_lm_zoo / "base", base)
    (base / "config.json").unlink()
    data = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    data["models"]["base"] = str(base)
    path = _write(tmp_path, data)
    store = tmp_path / "q.db"
    assert main(["validate", str(path)]) == 2
    lines = _errors(capsys)
    assert len(lines) == 1 and lines[0].startswith(f"error: models.base: cannot read the model structure of {str(base)!r}: ")
    assert main(["launch", str(path), "--store", str(store)]) == 2
    assert _errors(capsys) == lines and not store.exists()


def test_factory_base_without_safetensors_skips_the_space_checks(toy_root: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Validate runs no factory code, so without safetensors headers it cannot count the
    coordinates: it says so instead of passing the strategy checks silently."""
    base = tmp_path / "base"
    base.mkdir()
    (base / "weights.pt").write_bytes(b"not read")
    cfg = toy_config(toy_root, strategy="mobo", options={"max_dim": 3})
    cfg["models"]["base"] = str(base)
    assert main(["validate", str(_write(tmp_path, cfg))]) == 0
    out = capsys.readouterr().out
    assert f"note: the search space and the strategy's checks against it were skipped: the base {str(base)!r} has no local " in out
