"""Conformance suite: every registered evaluator against the protocol (evaluators/base.py).

Each case is an evaluator with settings and two weight states of one live model (tiny-lm's
add / reverse experts, or the digits zoo's low / high MLPs). For each case:

* no weight-dependent state survives a weight change: after the weights change in place, the
  evaluator gives exactly what a freshly built one gives, and changing them back gives the
  first result again;
* seeded subsets are reproducible: two evaluators built with the same run seed and called
  with the same trial seed give identical results;
* per-sample scores lie in [0, 1];
* margins give the metric back (``metric == mean(margins > 0)``);
* an exception in the model's forward pass becomes EvaluationError; with NaN or inf weights an
  evaluator whose metric then is not finite raises EvaluationError, and one that legitimately
  scores a broken model (its case says why) returns finite values (never NaN, never an error);
* a seeded subset depends on the run seed: another run seed scores other documents;
* example subsets (``examples=``): scoring a subset of the examples gives the full run's
  per-example results at those indices.

A new evaluator (built in or a plugin) adds its case to ``CASES``; the suite refuses a
registered evaluator without one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evaluators import EVALUATORS, EvalContext, EvaluationError, build_evaluator
from evaluators._common import margins_give_back

REPO = Path(__file__).resolve().parents[1]
TINY_DATA = REPO / "evaluators" / "tasks" / "tinylm"


def weight_margins(model: Any, tokenizer: Any, n: int = 16, examples: list[int] | None = None) -> tuple[dict, dict, dict]:
    """A python objective: next-token prediction on fixed token sequences (the ``examples``
    among them when given), with margins (the gold token's logit minus the best other) and
    per-example correctness."""
    import torch

    from evaluators._common import argmax_margins

    g = torch.Generator().manual_seed(0)
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (n, 6), generator=g)
    if examples is not None:
        ids = ids[examples]
    with torch.no_grad():
        logits = model(input_ids=ids[:, :-1]).logits[:, -1].double().numpy()
    m = argmax_margins(logits, ids[:, -1].numpy())
    return {"acc": float((m > 0).mean())}, {"acc": (m > 0).astype(float)}, {"acc": m}


@dataclass
class Case:
    evaluator: str
    settings: dict[str, Any]
    model: str  # "lm" or "mlp"
    # NaN / inf weights: "" = the metric is then not finite, which must raise; otherwise why the
    # evaluator legitimately scores such a model with a finite value
    finite_when_broken: str
    margins: bool = False  # the case's metric comes with margins
    seeded_subset: bool = False  # it scores a random subset of documents drawn from the run seed
    extra: dict[str, Any] = field(default_factory=dict)


WRONG_ANSWERS = ("a broken model's NaN logits still pick answers, all wrong: accuracy / exact match 0 is the true "
                 "score of such a merge, and the search should see it as bad, not as a failure")
CASES: dict[str, Case] = {
    "lm_eval": Case("lm_eval", {"tasks": ["tinylm_add", "tinylm_reverse"], "limit": 6}, "lm", WRONG_ANSWERS,
                    seeded_subset=True),
    "lm_eval_mc": Case("lm_eval", {"tasks": ["tinylm_add_mc"], "metric": "acc", "limit": 12, "include_path": ["MC"]},
                       "lm", WRONG_ANSWERS, margins=True, seeded_subset=True),
    "perplexity": Case("perplexity", {"path": str(TINY_DATA / "add_validation.jsonl"), "text_field": "prompt", "limit": 8},
                       "lm", ""),
    "generation_length": Case("generation_length", {"path": str(TINY_DATA / "add_validation.jsonl"), "limit": 4}, "lm",
                              "greedy decoding of NaN logits still emits tokens, so every generation has a length "
                              "(the token budget at worst): a finite, true measurement of the merge"),
    "python": Case("python", {"function": "tests.test_evaluator_conformance:weight_margins", "metric": "acc",
                              "n_examples": 16}, "lm", "", margins=True),
    "classification": Case("classification", {"labels": [0, 1, 2], "split": "validation"}, "mlp", "", margins=True),
}


def test_every_registered_evaluator_has_a_case() -> None:
    missing = set(EVALUATORS.names()) - {c.evaluator for c in CASES.values()}
    assert not missing, f"add a conformance case for {sorted(missing)}"


@pytest.fixture(scope="module")
def models(tiny_lm_zoo: Path, digits_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from search.zoo.digits import load_mlp
    from search.zoo.tiny_lm import write_add_mc_task

    torch.set_num_threads(1)
    lm_states = {n: AutoModelForCausalLM.from_pretrained(tiny_lm_zoo / n).state_dict() for n in ("add", "reverse")}
    mlp_states = {n: load_mlp(digits_zoo / n).state_dict() for n in ("low", "high")}
    return {
        "lm": (AutoModelForCausalLM.from_pretrained(tiny_lm_zoo / "add").eval(), AutoTokenizer.from_pretrained(tiny_lm_zoo / "add"),
               lm_states),
        "mlp": (load_mlp(digits_zoo / "low").eval(), None, mlp_states),
        "mc": write_add_mc_task(tmp_path_factory.mktemp("mc")),
    }


def put(model: Any, state: dict) -> None:
    import torch

    with torch.no_grad():
        for k, p in model.state_dict().items():
            p.copy_(state[k])


def build(case: Case, models: dict, seed: int = 3) -> Any:
    settings = dict(case.settings)
    if "include_path" in settings:
        settings["include_path"] = [str(models["mc"])]
    return build_evaluator(case.evaluator, settings, EvalContext(seed=seed))


def equal(a, b) -> bool:
    """Identical metrics, per-sample scores and margins."""
    if a.metrics != b.metrics:
        return False
    for part in ("per_sample", "margins"):
        x, y = getattr(a, part) or {}, getattr(b, part) or {}
        if set(x) != set(y) or not all(np.array_equal(x[k], y[k]) for k in x):
            return False
    return True


def same(a, b) -> None:
    assert equal(a, b), (a, b)


@pytest.mark.parametrize("key", sorted(CASES))
def test_evaluator_conformance(key: str, models: dict) -> None:
    case = CASES[key]
    model, tok, states = models[case.model]
    first, second = list(states)
    ev = build(case, models)
    put(model, states[first])
    a = ev.evaluate(model, tok, seed=11)

    # weight changes in place: same as a fresh evaluator, and back again
    put(model, states[second])
    b = ev.evaluate(model, tok, seed=11)
    same(b, build(case, models).evaluate(model, tok, seed=11))
    put(model, states[first])
    same(ev.evaluate(model, tok, seed=11), a)
    assert not equal(a, b), "the two weight states should score differently"

    # seeded: another evaluator with the same run seed, same trial seed
    same(build(case, models).evaluate(model, tok, seed=11), a)

    for res in (a, b):
        assert all(math.isfinite(v) for v in res.metrics.values())
        for k, v in (res.per_sample or {}).items():
            assert v.size and v.min() >= 0 and v.max() <= 1, k
        for k, m in (res.margins or {}).items():
            assert margins_give_back(m, res.metrics[k]), k
    if case.margins:
        assert ev.metric in (a.margins or {}), "this case's metric should come with margins"


@pytest.mark.parametrize("key", sorted(CASES))
def test_failures_become_evaluation_errors(key: str, models: dict) -> None:
    import torch

    case = CASES[key]
    model, tok, states = models[case.model]
    ev = build(case, models)

    def boom(module, args, kwargs):
        raise RuntimeError("device on fire")

    put(model, states["add" if case.model == "lm" else "low"])
    handle = model.register_forward_pre_hook(boom, with_kwargs=True)
    try:
        with pytest.raises(EvaluationError, match="device on fire"):
            ev.evaluate(model, tok, seed=11)
    finally:
        handle.remove()

    try:
        for broken in (math.nan, math.inf, -math.inf):
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(broken)
            if not case.finite_when_broken:
                with pytest.raises(EvaluationError):
                    ev.evaluate(model, tok, seed=11)
                continue
            res = ev.evaluate(model, tok, seed=11)  # scored, as the case says
            assert all(math.isfinite(v) for v in res.metrics.values()), (broken, res.metrics)
    finally:
        put(model, states["add" if case.model == "lm" else "low"])


@pytest.mark.parametrize("key", sorted(k for k, c in CASES.items() if c.seeded_subset))
def test_a_seeded_subset_follows_the_run_seed(key: str, models: dict) -> None:
    """The run seed really draws the subset: the same seed scores the same documents, another
    seed other ones (perplexity and generation_length take the first ``limit`` documents,
    classification and python every example: they have no seeded subset)."""
    case = CASES[key]
    model, tok, states = models[case.model]
    put(model, states["add"])
    a, again, other = (build(case, models, seed=s).evaluate(model, tok, seed=11) for s in (3, 3, 4))
    subset = a.info["subset"]
    assert set(subset) == set(case.settings["tasks"]) and all(len(v) == case.settings["limit"] for v in subset.values())
    assert again.info["subset"] == subset
    assert all(other.info["subset"][t] != subset[t] for t in subset), (subset, other.info["subset"])


@pytest.mark.parametrize("key", sorted(CASES))
def test_an_example_subset_gives_the_full_runs_results_there(key: str, models: dict) -> None:
    """``examples=`` scores just those examples: their values, weights, groups and margins are
    the full run's at those indices, and they combine to their own metric."""
    from search.fidelity import combine

    case = CASES[key]
    model, tok, states = models[case.model]
    ev = build(case, models)
    sizes = ev.example_groups()
    assert sizes, f"{key}: every built-in evaluator scores example subsets"
    put(model, states["reverse" if case.model == "lm" else "high"])
    full = ev.evaluate(model, tok, seed=11)
    n = sum(sizes)
    assert full.examples is not None and np.array_equal(full.examples.index, np.arange(n))
    # a third of the examples, one in the middle of each group among them
    mids = np.cumsum([0, *sizes[:-1]]) + np.asarray(sizes) // 2
    at = np.union1d(np.random.default_rng(7).choice(n, size=max(1, n // 3), replace=False), mids)
    assert len(at) < n
    sub = ev.evaluate(model, tok, seed=11, examples=at)
    ex = sub.examples
    assert ex is not None and np.array_equal(ex.index, at)
    for part in ("value", "weight", "group", "margin"):
        assert np.array_equal(getattr(ex, part), getattr(full.examples, part)[at], equal_nan=True), (key, part)
    assert ex.combine == full.examples.combine
    assert combine(ex) == pytest.approx(sub.metrics[ev.metric], rel=1e-9, abs=1e-12)
    assert combine(full.examples) == pytest.approx(full.metrics[ev.metric], rel=1e-9, abs=1e-12)


# ----------------------------------------------------------------------------- dataset registry


def _blobs(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Two Gaussian blobs, 40 points per split (a dataset registered by this test)."""
    rng = np.random.default_rng({"train": 0, "validation": 1, "test": 2}[split])
    y = np.arange(40) % 2
    return (rng.standard_normal((40, 3)) + 2.0 * y[:, None]).astype(np.float32), y.astype(np.int64)


def test_classification_reads_registered_datasets() -> None:
    import torch

    from evaluators import validate_settings
    from evaluators.datasets import DATASETS, Dataset

    DATASETS.register("blobs", Dataset("blobs", _blobs, (0, 1)))
    model = torch.nn.Linear(3, 2)
    ev = build_evaluator("classification", {"dataset": "blobs", "split": "test"}, EvalContext())
    X, y = _blobs("test")
    with torch.no_grad():
        pred = model(torch.as_tensor(X)).argmax(-1).numpy()
    assert ev.evaluate(model).metrics["accuracy"] == float((pred == y).mean())
    assert validate_settings("classification", {"dataset": "blobs", "labels": [1, 2]}, "o")[0].message == (
        "blobs has labels 0-1; [2] are not among them")
    msg = validate_settings("classification", {"dataset": "blob"}, "o")[0].message
    assert "unknown dataset 'blob'; did you mean 'blobs'?" in msg
