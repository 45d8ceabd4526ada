"""Entry-point plugins: a tiny package, pip-installed into a temporary folder, adds a strategy,
an evaluator and a merge method, and a real search runs with all three.

The package also declares a broken plugin of each kind (a merge method whose module does not
exist, a strategy whose attribute does not, an evaluator whose module raises a two-line error on
import): each one used is refused in one line naming the plugin, while everything else keeps
working; a misspelt plugin name of each kind suggests the plugin's name.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

PLUGIN = '''
"""A mergesearch plugin: one strategy, one evaluator, one merge method."""

import numpy as np

from evaluators import EvalResult, Evaluator, EvaluatorSettings
from search.merge.methods import MergeMethod
from search.merge.tensorplan import TensorPlan
from search.strategies import Candidate, Strategy


class Halton(Strategy):
    """Points of the additive recurrence x_i = frac(i * alpha_d) in the box (no randomness)."""

    name = "demo_recurrence"

    def __init__(self, problem, options=None, seed=0):
        super().__init__(problem, options, seed)
        self.asked = 0
        self.alpha = np.sqrt(np.array([2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37] * 8, dtype=float)[: problem.dim]) % 1

    def ask(self, n):
        out = []
        for _ in range(n):
            self.asked += 1
            u = (self.asked * self.alpha) % 1.0
            out.append(Candidate(self.problem.lower + u * (self.problem.upper - self.problem.lower), self.asked - 1))
        return out

    def tell(self, results):
        pass


class NormSettings(EvaluatorSettings):
    scale: float = 1.0


class WeightNorm(Evaluator):
    """exp(-scale * mean squared weight): a smooth function of the merge."""

    name = "demo_norm"
    Settings = NormSettings

    @property
    def metric(self):
        return "norm"

    def evaluate(self, model, tokenizer, seed=0):
        sq = sum(float((p.detach().double() ** 2).sum()) for p in model.parameters())
        n = sum(p.numel() for p in model.parameters())
        return EvalResult({"norm": float(np.exp(-self.settings.scale * sq / n))})


def halved_sum(out, base, taus, tp, start, ws):
    """out = base + sum_t c_t tau_t / 2, its own chunk kernel."""
    out.copy_(base)
    for t, c in enumerate(tp.coeffs):
        if c:
            out.add_(taus[t], alpha=c / 2)


class HalfSum(MergeMethod):
    name = "demo_half"
    params = {"weight": 1.0}
    summary = "theta_0 + sum_t w_t tau_t / 2"
    kernel = staticmethod(halved_sum)

    def plan(self, options, vals, numel, **_):
        w = [float(v) for v in vals["weight"]]
        none = [None] * len(w)
        return TensorPlan(list(w), w, list(none), list(none), list(none), list(none))

    def reference(self, base, taus, vals, options, *, name="", seed=0):
        return base.reshape(-1).astype(np.float64) + sum(
            float(w) * t.reshape(-1).astype(np.float64) for w, t in zip(vals["weight"], taus)) / 2


HALF = HalfSum()
'''

BROKEN = '''
raise RuntimeError("the demo plugin is broken\\non purpose")
'''

PYPROJECT = """
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "mergesearch-demo-plugin"
version = "0.1"

[tool.setuptools]
py-modules = ["ms_demo_plugin", "ms_demo_broken"]

[project.entry-points."mergesearch.strategies"]
demo_recurrence = "ms_demo_plugin:Halton"
demo_broken_strategy = "ms_demo_plugin:NoSuchStrategy"

[project.entry-points."mergesearch.evaluators"]
demo_norm = "ms_demo_plugin:WeightNorm"
demo_broken_eval = "ms_demo_broken:Evaluator"

[project.entry-points."mergesearch.merge_methods"]
demo_half = "ms_demo_plugin:HALF"
demo_broken = "ms_demo_missing_module:NOTHING"
"""


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin package pip-installed (offline, no build isolation) into a --target folder."""
    pytest.importorskip("setuptools", reason="building the plugin package offline needs setuptools installed")
    src = tmp_path_factory.mktemp("plugin_src")
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "ms_demo_plugin.py").write_text(textwrap.dedent(PLUGIN))
    (src / "ms_demo_broken.py").write_text(BROKEN)
    target = tmp_path_factory.mktemp("plugin_site")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                        "--target", str(target), str(src)], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise AssertionError(r.stderr[-3000:])
    assert any(target.glob("mergesearch_demo_plugin-0.1.dist-info/entry_points.txt"))
    return target


def run_search(plugin_path: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_path), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "search", *argv], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


def plugin_config(toy_root: Path, tmp: Path, method: str = "demo_half", strategy: str = "demo_recurrence",
                  evaluator: str = "demo_norm") -> Path:
    from tests.toy_problem import toy_config

    cfg = toy_config(toy_root, name="plug", budget=4, strategy=strategy, store=str(tmp / "plug.db"))
    cfg["merge"]["method"] = method
    cfg["merge"]["granularity"] = "global"
    cfg["objectives"][1] = {"name": "small", "evaluator": evaluator, "direction": "maximize", "settings": {"scale": 2.0}}
    path = tmp / "plug.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_search_runs_with_a_plugin_strategy_evaluator_and_merge_method(plugin_path: Path, toy_root: Path,
                                                                         tmp_path: Path) -> None:
    import torch

    from search.report import load_run
    from search.store import COMPLETE
    from tests.toy_problem import load_toy

    path = plugin_config(toy_root, tmp_path)
    r = run_search(plugin_path, "validate", str(path), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_search(plugin_path, "launch", str(path), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    trials = [t for t in load_run("plug", str(tmp_path / "plug.db")).trials if t.state == COMPLETE]
    assert len(trials) == 4 and {t.strategy for t in trials} == {"demo_recurrence"}
    # the plugin's merge method really merged (one global group): base + sum_t w_t tau_t / 2
    t0 = min(trials, key=lambda t: t.number)
    (wa,) = [v for k, v in t0.params.items() if k.endswith("/a/weight")]
    (wb,) = [v for k, v in t0.params.items() if k.endswith("/b/weight")]
    base, a, b = (load_toy(str(toy_root / n), torch.float32) for n in ("base", "expert_a", "expert_b"))
    sq, n = 0.0, 0
    for p0, pa, pb in zip(*(m.parameters() for m in (base, a, b)), strict=True):
        p0, pa, pb = p0.detach().double(), pa.detach().double(), pb.detach().double()
        merged = p0 + (wa * (pa - p0) + wb * (pb - p0)) / 2
        sq += float((merged ** 2).sum())
        n += merged.numel()
    assert t0.values[1] == pytest.approx(math.exp(-2.0 * sq / n), rel=1e-5)


def test_unknown_names_suggest_plugins_and_a_broken_plugin_is_one_line(plugin_path: Path, toy_root: Path,
                                                                      tmp_path: Path) -> None:
    """One config misspells a plugin of each kind, another names a broken plugin of each kind:
    ``search validate`` reports every one (exit 2), each in one line with its field."""
    path = plugin_config(toy_root, tmp_path, method="demo_hlaf", strategy="demo_recurence", evaluator="demo_nrom")
    r = run_search(plugin_path, "validate", str(path), cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    out = r.stderr + r.stdout
    assert "merge.method: unknown merge method 'demo_hlaf'; did you mean 'demo_half'?" in out, out
    assert "strategy.name: unknown strategy 'demo_recurence'; did you mean 'demo_recurrence'?" in out, out
    assert "objectives[1].evaluator: unknown evaluator 'demo_nrom'; did you mean 'demo_norm'?" in out, out

    path = plugin_config(toy_root, tmp_path, method="demo_broken", strategy="demo_broken_strategy",
                         evaluator="demo_broken_eval")
    r = run_search(plugin_path, "validate", str(path), cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    out = r.stderr + r.stdout
    for name, group, field, error in (
        ("demo_broken", "mergesearch.merge_methods", "merge.method", "ModuleNotFoundError"),
        ("demo_broken_strategy", "mergesearch.strategies", "strategy.name", "AttributeError"),
        ("demo_broken_eval", "mergesearch.evaluators", "objectives[1].evaluator", "RuntimeError: the demo plugin is broken on purpose"),
    ):
        lines = [ln for ln in out.splitlines() if f"'{name}'" in ln]
        assert len(lines) == 1, (name, out)
        assert f"plugin mergesearch-demo-plugin (entry point {name} = " in lines[0] and group in lines[0], lines[0]
        assert field in lines[0] and error in lines[0], lines[0]
