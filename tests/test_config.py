"""`search validate`: malformed configs give one-line errors naming the field and the fix."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from search.config import load_config
from search.errors import ConfigError
from search.validation import check_config, validate_file
from tests.toy_problem import make_toy_models, toy_config


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    make_toy_models(root)
    # an "expert" of another architecture: same names, other shapes
    import torch
    from safetensors.torch import save_file

    other = root / "other_arch"
    other.mkdir()
    save_file(
        {"fc1.weight": torch.zeros(32, 8), "fc1.bias": torch.zeros(32), "fc2.weight": torch.zeros(4, 32), "fc2.bias": torch.zeros(4)},
        str(other / "model.safetensors"),
    )
    return root


def _set(d: dict, path: str, value: object) -> None:
    keys = path.split(".")
    for k in keys[:-1]:
        d = d[int(k)] if k.isdigit() else d[k]
    last = keys[-1]
    if value is _DELETE:
        del d[last]
    elif last.isdigit():
        d[int(last)] = value
    else:
        d[last] = value


_DELETE = object()

# (id, [(dotted path, value)], expected one-line error (substring))
CASES = [
    ("unknown-top-key", [("stratgy", {"name": "random"})], "stratgy: unknown field 'stratgy'; did you mean 'strategy'?"),
    ("unknown-nested-key", [("merge.granularty", "layer")], "merge.granularty: unknown field 'granularty'; did you mean 'granularity'?"),
    ("unknown-strategy", [("strategy.name", "nsga")], "strategy.name: unknown strategy 'nsga'; did you mean 'nsga2'?"),
    ("unknown-method", [("merge.method", "tie")], "merge.method: unknown merge method 'tie'; did you mean 'ties'?"),
    ("unknown-evaluator", [("objectives.0.evaluator", "pythn")], "objectives[0].evaluator: unknown evaluator 'pythn'; did you mean 'python'?"),
    ("bounds-reversed", [("merge.search", {"weight": [1.0, 0.0]})], "need low < high; write [0.0, 1.0]"),
    ("density-on-task-arithmetic", [("merge.search", {"weight": [0, 1], "density": [0.1, 1]})],
     "merge.search.density: method 'task_arithmetic' has no 'density'; its searchable parameters are: weight"),
    ("density-out-of-range", [("merge.method", "ties"), ("merge.search", {"weight": [0, 1], "density": [0.1, 1.5]})],
     "merge.search.density: bounds [0.1, 1.5] must lie in [0, 1]"),
    ("fixed-and-searched", [("merge.params", {"weight": 0.5})], "merge.params.weight: 'weight' is both fixed here and searched"),
    ("unknown-param", [("merge.params", {"lamda": 0.5})], "merge.params.lamda: method 'task_arithmetic' has no parameter 'lamda'; did you mean 'lambda'?"),
    ("option-not-a-number", [("merge.params", {"lambda": "abc"})], "merge.params.lambda: 'abc' is not a finite number; write e.g. 1.0"),
    ("option-not-finite", [("merge.params", {"lambda": float("nan")})], "merge.params.lambda: nan is not a finite number"),
    ("fixed-density-as-text-out-of-range", [("merge.method", "ties"), ("merge.params", {"density": "5e0"})], "merge.params.density: 5.0 must lie in [0, 1]"),
    ("option-not-a-bool", [("merge.method", "ties"), ("merge.params", {"normalize": "no"})], "merge.params.normalize: 'no' is not true or false"),
    ("duplicate-objectives", [("objectives.1.name", "near_a")], "objective name 'near_a' appears twice"),
    ("duplicate-experts", [("models.experts.1.name", "a")], "expert name 'a' appears twice"),
    ("budget-zero", [("strategy.budget", 0)], "strategy.budget: Input should be greater than 0"),
    ("direction-typo", [("objectives.0.direction", "max")], "objectives[0].direction: 'max' is not allowed; use 'maximize' or 'minimize'"),
    ("granularity-typo", [("merge.granularity", "blocks:4")], "granularity 'blocks:4' is not one of 'global', 'layer', 'block:K'"),
    ("workers-zero", [("workers.count", 0)], "workers.count: Input should be greater than or equal to 1"),
    ("backend-unknown", [("workers.backend", "slurm")], "workers.backend: 'slurm' is not allowed; use 'local' or 'ray'"),
    ("seed-type", [("seed", "abc")], "seed: Input should be a valid integer"),
    ("missing-objectives", [("objectives", _DELETE)], "objectives: required field is missing; add it"),
    ("missing-expert-path", [("models.experts.1.path", "exprt_b")], "models.experts[1].path: no such folder or hub id 'exprt_b'"),
    ("other-architecture", [("models.experts.0.path", "{root}/other_arch")],
     "models.experts[0].path: not a fine-tune of the base: tensor 'fc1.bias' has shape (32,) but the base has (16,)"),
    ("missing-tokenizer", [("models.factory", None)], "models.tokenizer: the base folder"),
    ("address-without-ray", [("workers.address", "auto")], "workers.address: an address only applies to backend: ray"),
    ("unknown-zoo-model", [("models.experts.0.path", "zoo:tiny-lm/ad")], "models.experts[0].path: zoo problem 'tiny-lm' has no model 'ad'"),
    ("unknown-strategy-option", [("strategy.options", {"popsize_typo": 3})], "strategy.options.popsize_typo: unknown field"),
    ("bad-function-spec", [("objectives.0.settings.function", "no_colon_here")], "objectives[0].settings"),
]


def _write(tmp_path: Path, cfg: dict) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_toy_config_is_valid(toy_root: Path, tmp_path: Path) -> None:
    cfg = validate_file(_write(tmp_path, toy_config(toy_root)))
    assert cfg.name == "toy" and len(cfg.objectives) == 2


def test_yaml_exponent_without_a_dot_is_a_number(toy_root: Path, tmp_path: Path) -> None:
    """YAML 1.1 reads ``1e-3`` as a string: a numeric option takes it as the number it says."""
    from search.merge.methods import METHODS

    text = yaml.safe_dump(toy_config(toy_root)) + "\n"
    path = tmp_path / "cfg.yaml"
    path.write_text(text.replace("merge:\n", "merge:\n  params: {lambda: 1e-3}\n", 1))
    cfg = validate_file(path)
    assert cfg.merge.params["lambda"] == "1e-3"  # as YAML gave it
    assert METHODS.get(cfg.merge.method).resolve_options(cfg.merge.params)["lambda"] == 0.001


@pytest.mark.parametrize("case,edits,expected", CASES, ids=[c[0] for c in CASES])
def test_malformed_config(case: str, edits: list, expected: str, toy_root: Path, tmp_path: Path) -> None:
    cfg = copy.deepcopy(toy_config(toy_root))
    for path, value in edits:
        if isinstance(value, str):
            value = value.replace("{root}", str(toy_root))
        _set(cfg, path, value)
    with pytest.raises(ConfigError) as ei:
        validate_file(_write(tmp_path, cfg))
    lines = [str(i) for i in ei.value.issues]
    assert any(expected in line for line in lines), lines
    assert all("\n" not in line for line in lines)


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nmodels: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+, column \d+ is not valid YAML"):
        load_config(p)


def test_validate_cli_exit_code_and_no_traceback(toy_root: Path, tmp_path: Path) -> None:
    cfg = toy_config(toy_root)
    cfg["strategy"]["name"] = "nsga"
    cfg["merge"]["method"] = "tie"
    p = _write(tmp_path, cfg)
    r = subprocess.run([sys.executable, "-m", "search", "validate", str(p)], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert "error: strategy.name: unknown strategy 'nsga'; did you mean 'nsga2'?" in lines
    assert "error: merge.method: unknown merge method 'tie'; did you mean 'ties'?" in lines
    assert not (tmp_path / "runs").exists()


def test_every_shipped_config_validates() -> None:
    root = Path(__file__).parents[1] / "configs"
    for p in sorted(root.glob("*.yaml")):
        cfg = load_config(p)
        issues = check_config(cfg, check_files=False)
        assert not issues, f"{p.name}: {[str(i) for i in issues]}"
