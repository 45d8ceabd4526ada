"""The model zoo: experts are real experts, merges land in between, builds are atomic and cached.

The tiny-lm checks run the real lm-eval harness (the project's ``lm_eval`` evaluator) on the
shipped task files; the digits checks the ``classification`` evaluator.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from evaluators import EvalContext, build_evaluator

TASKS = ("add", "reverse", "sort")


def task_arithmetic(base: dict, experts: dict[str, dict], weights: dict[str, float]) -> dict:
    return {k: base[k] + sum(w * (experts[e][k] - base[k]) for e, w in weights.items()) for k in base}


# ----------------------------------------------------------------------------- tiny-lm


@pytest.fixture(scope="module")
def tiny(tiny_lm_zoo: Path) -> dict:
    """One live model object (weights swapped in place) + tokenizer + every zoo state dict."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    states = {}
    for name in ("base", *TASKS):
        m = AutoModelForCausalLM.from_pretrained(tiny_lm_zoo / name)
        states[name] = {k: v.clone() for k, v in m.state_dict().items()}
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_zoo / "base").eval()
    tok = AutoTokenizer.from_pretrained(tiny_lm_zoo / "base")
    ctx = EvalContext(seed=0)
    evs = {
        split: build_evaluator("lm_eval", {"tasks": [f"tinylm_{t}{suffix}" for t in TASKS], "batch_size": 64}, ctx)
        for split, suffix in (("validation", ""), ("test", "_test"))
    }
    return {"model": model, "tok": tok, "states": states, "evs": evs}


def tiny_scores(tiny: dict, state: dict, split: str = "validation") -> dict[str, float]:
    import torch

    with torch.no_grad():
        tiny["model"].load_state_dict(state)
    res = tiny["evs"][split].evaluate(tiny["model"], tiny["tok"])
    suffix = "" if split == "validation" else "_test"
    return {t: res.metrics[f"tinylm_{t}{suffix}/exact_match,none"] for t in TASKS}


@pytest.mark.parametrize("split", ["validation", "test"])
def test_tiny_lm_experts_are_experts_and_base_is_not(tiny: dict, split: str) -> None:
    table = {name: tiny_scores(tiny, tiny["states"][name], split) for name in ("base", *TASKS)}
    print(split, json.dumps(table))
    for task in TASKS:
        assert table["base"][task] <= 0.2, (task, table)
        assert table[task][task] >= 0.6, (task, table)
        for other in TASKS:
            if other != task:
                assert table[task][other] <= 0.2, (task, other, table)


def test_tiny_lm_uniform_merge_lands_in_between(tiny: dict) -> None:
    s = tiny["states"]
    base = tiny_scores(tiny, s["base"])
    own = {t: tiny_scores(tiny, s[t])[t] for t in ("add", "reverse")}
    merges = {c: tiny_scores(tiny, task_arithmetic(s["base"], s, {"add": c, "reverse": c})) for c in (0.5, 0.7, 1.0)}
    print(json.dumps({"base": base, "own": own, "merges": merges}))
    between = [
        c for c, m in merges.items()
        if all(base[t] + 0.1 <= m[t] <= own[t] for t in ("add", "reverse"))
    ]
    assert between, merges


def test_tiny_lm_folders_are_ordinary_hf_models(tiny_lm_zoo: Path) -> None:
    from transformers import AutoTokenizer, GenerationConfig

    for name in ("base", *TASKS):
        d = tiny_lm_zoo / name
        assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= {p.name for p in d.iterdir()}
    tok = AutoTokenizer.from_pretrained(tiny_lm_zoo / "add")
    text = "07+45=052\nrev:abc=cba é"
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text
    assert tok(text)["input_ids"][0] == tok.bos_token_id
    gen = GenerationConfig.from_pretrained(tiny_lm_zoo / "add")
    assert gen.eos_token_id == tok.eos_token_id and not gen.do_sample
    meta = json.loads((tiny_lm_zoo / ".complete").read_text())
    assert meta["version"] and meta["build_seconds"] > 0


def test_shipped_task_data_is_regenerated_exactly_and_splits_are_disjoint(tmp_path: Path) -> None:
    from search.zoo.tiny_lm import task_data_dir, write_task_data

    write_task_data(tmp_path)
    for task in TASKS:
        prompts = {}
        for split in ("validation", "test"):
            shipped = (task_data_dir() / f"{task}_{split}.jsonl").read_bytes()
            assert (tmp_path / f"{task}_{split}.jsonl").read_bytes() == shipped
            rows = [json.loads(x) for x in shipped.decode().splitlines()]
            assert len(rows) == 200
            prompts[split] = {r["prompt"] for r in rows}
        assert len(prompts["validation"]) == 200 and not prompts["validation"] & prompts["test"]


def test_training_lines_never_use_held_out_prompts() -> None:
    import random

    from search.zoo.tiny_lm import BASE_MIX, MARK, _heldout_prompts, _sampler

    held = _heldout_prompts()
    assert len(held) == 1200
    rng = random.Random(0)
    for mix in (BASE_MIX, {("add", "expert"): 1.0}, {("sort", "expert"): 1.0}):
        sample = _sampler(mix, held)
        for _ in range(3000):
            p, _a = sample(rng)
            # base lines carry another end mark: map back to the task prompt they came from
            assert (p[:-1] + MARK) not in held


# ----------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits(digits_zoo: Path) -> dict:
    from search.zoo.digits import MODELS, load_mlp

    return {n: load_mlp(digits_zoo / n) for n in MODELS}


def digits_acc(model, labels, split: str = "validation") -> float:
    ev = build_evaluator("classification", {"dataset": "digits", "split": split, "labels": list(labels)}, EvalContext())
    return ev.evaluate(model).metrics["accuracy"]


@pytest.mark.parametrize("split", ["validation", "test"])
def test_digits_experts_are_experts_and_base_is_not(digits: dict, split: str) -> None:
    from search.zoo.digits import EXPERT_LABELS

    for name, labels in EXPERT_LABELS.items():
        assert digits_acc(digits["base"], labels, split) <= 0.2
        assert digits_acc(digits[name], labels, split) >= 0.6, name
    # the two-expert pair: each is poor on the other's digits
    assert digits_acc(digits["low"], EXPERT_LABELS["high"], split) <= 0.2
    assert digits_acc(digits["high"], EXPERT_LABELS["low"], split) <= 0.2
    for name in ("a", "b", "c"):
        for other in {"a", "b", "c"} - {name}:
            assert digits_acc(digits[name], EXPERT_LABELS[other], split) <= 0.2, (name, other)


def test_digits_uniform_merge_lands_in_between(digits: dict, digits_zoo: Path) -> None:
    from search.zoo.digits import EXPERT_LABELS, load_mlp

    states = {n: m.state_dict() for n, m in digits.items()}
    work = load_mlp(digits_zoo / "base")
    own = {e: digits_acc(digits[e], EXPERT_LABELS[e]) for e in ("low", "high")}
    base = {e: digits_acc(digits["base"], EXPERT_LABELS[e]) for e in ("low", "high")}
    between = []
    for c in (0.5, 0.7, 1.0):
        work.load_state_dict(task_arithmetic(states["base"], states, {"low": c, "high": c}))
        acc = {e: digits_acc(work, EXPERT_LABELS[e]) for e in ("low", "high")}
        if all(base[e] + 0.1 <= acc[e] <= own[e] for e in acc):
            between.append(c)
    assert between


def test_digits_build_is_deterministic(tmp_path: Path, digits_zoo: Path) -> None:
    from search.zoo.digits import build_models

    build_models(tmp_path / "again")
    for name in ("base", "low", "c"):
        assert (tmp_path / "again" / name / "model.safetensors").read_bytes() == (digits_zoo / name / "model.safetensors").read_bytes()


# ----------------------------------------------------------------------------- building


def _build_slowly(root: Path, log: Path) -> None:
    import time

    from search.zoo import atomic_build

    def build(out: Path) -> None:
        out.mkdir()
        (log / f"built-{os.getpid()}").write_text("")
        time.sleep(0.5)
        (out / "model").write_text("weights")

    atomic_build(root, build, "v1")


def test_concurrent_builders_build_once_and_atomically(tmp_path: Path) -> None:
    """Three processes asking for the same problem at once: one builds, the others wait and reuse."""
    import multiprocessing as mp

    root, log = tmp_path / "zoo" / "prob", tmp_path / "log"
    log.mkdir()
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_build_slowly, args=(root, log)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert len(list(log.iterdir())) == 1
    assert sorted(p.name for p in root.iterdir()) == [".complete", "model"]
    assert not [p for p in root.parent.iterdir() if ".tmp-" in p.name]


def test_failed_build_leaves_nothing_and_outdated_build_is_rebuilt(tmp_path: Path) -> None:
    from search.zoo import atomic_build, is_complete

    root = tmp_path / "prob"

    def broken(out: Path) -> None:
        out.mkdir()
        (out / "half").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_build(root, broken, "v1")
    assert not root.exists() and not list(tmp_path.glob(".prob.tmp-*"))

    def good(tag: str):
        def build(out: Path) -> dict:
            out.mkdir()
            (out / "model").write_text(tag)
            return {"tag": tag}

        return build

    atomic_build(root, good("first"), "v1")
    atomic_build(root, good("second"), "v1")  # complete: not rebuilt
    assert (root / "model").read_text() == "first"
    atomic_build(root, good("third"), "v2")  # another recipe version: rebuilt
    assert (root / "model").read_text() == "third"
    assert json.loads((root / ".complete").read_text())["version"] == "v2"
    assert is_complete(root)


def test_unknown_zoo_names_suggest() -> None:
    from search.errors import ConfigError
    from search.zoo import zoo_path

    with pytest.raises(ConfigError, match="did you mean 'tiny-lm'"):
        zoo_path("zoo:tiny_lm/base", build=False)
    with pytest.raises(ConfigError, match="did you mean 'reverse'"):
        zoo_path("zoo:tiny-lm/revers", build=False)
