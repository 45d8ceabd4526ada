"""Evaluators on real parts: lm-eval on the shipped tasks against the tiny-lm zoo, perplexity and
generation length against hand-computed values, classification, and every bad-input case."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evaluators import EvalContext, EvaluationError, build_evaluator, validate_settings
from evaluators.lm_eval import LMEvalEvaluator, LMEvalSettings, public_benchmark

REPO = Path(__file__).resolve().parents[1]
TINY_DATA = REPO / "evaluators" / "tasks" / "tinylm"


@pytest.fixture(scope="module")
def lm(tiny_lm_zoo: Path) -> dict:
    """A live model object holding the add expert, its tokenizer, and the zoo's state dicts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    states = {n: AutoModelForCausalLM.from_pretrained(tiny_lm_zoo / n).state_dict() for n in ("base", "add", "reverse")}
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_zoo / "add").eval()
    tok = AutoTokenizer.from_pretrained(tiny_lm_zoo / "add")
    return {"model": model, "tok": tok, "states": states, "root": tiny_lm_zoo}


def load(lm: dict, name: str) -> None:
    import torch

    with torch.no_grad():
        for k, p in lm["model"].state_dict().items():
            p.copy_(lm["states"][name][k])


def issues(settings: dict, **ctx) -> list[tuple[str, str]]:
    s = LMEvalSettings(**settings)
    return LMEvalEvaluator.check(s, EvalContext(base_dir=REPO, **ctx))


# ----------------------------------------------------------------------------- lm-eval end to end


def test_lm_eval_end_to_end_with_per_sample_scores(lm: dict) -> None:
    load(lm, "add")
    ev = build_evaluator("lm_eval", {"tasks": ["tinylm_add", "tinylm_reverse"], "limit": 40}, EvalContext(seed=3))
    assert ev.metric == "exact_match,none"  # the task's first metric by default
    res = ev.evaluate(lm["model"], lm["tok"], seed=11)
    add, rev = res.metrics["tinylm_add/exact_match,none"], res.metrics["tinylm_reverse/exact_match,none"]
    assert add >= 0.6 and rev <= 0.2
    assert res.metrics["exact_match,none"] == pytest.approx((add + rev) / 2)
    assert set(res.per_sample) == {"tinylm_add", "tinylm_reverse"}
    for task, arr in res.per_sample.items():
        assert arr.shape == (40,) and set(np.unique(arr)) <= {0.0, 1.0}
        assert arr.mean() == pytest.approx(res.metrics[f"{task}/exact_match,none"])
    assert len(res.info["subset"]["tinylm_add"]) == 40


def test_lm_eval_auto_batch_size_is_searched_once_per_worker(lm: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU 'auto' runs lm-eval's batch-size search; it must run once, not in every trial."""
    import torch
    from lm_eval.models.huggingface import HFLM

    import evaluators._common as common

    monkeypatch.setattr(common, "model_device", lambda model: torch.device("cuda"))  # take the GPU path on CPU
    calls: list[int] = []
    real_search = HFLM._detect_batch_size

    def counted_search(self, *args, **kwargs):  # lm-eval's own search runs; only the calls are counted
        calls.append(1)
        return real_search(self, *args, **kwargs)

    monkeypatch.setattr(HFLM, "_detect_batch_size", counted_search)
    load(lm, "add")
    ev = build_evaluator("lm_eval", {"tasks": ["tinylm_add"], "limit": 10}, EvalContext(seed=0))
    first = ev.evaluate(lm["model"], lm["tok"])
    second = ev.evaluate(lm["model"], lm["tok"])
    assert calls == [1]
    assert isinstance(ev._lm.batch_size, int) and ev._lm.batch_size >= 1
    assert first.metrics == second.metrics and first.metrics["exact_match,none"] >= 0.5


def test_lm_eval_per_sample_scores_match_a_plain_greedy_decode(lm: dict) -> None:
    """Per-doc exact match from lm-eval equals decoding the subset's prompts by hand."""
    import torch

    load(lm, "add")
    ev = build_evaluator("lm_eval", {"tasks": ["tinylm_add"], "limit": 25}, EvalContext(seed=1))
    res = ev.evaluate(lm["model"], lm["tok"])
    rows = [json.loads(x) for x in (TINY_DATA / "add_validation.jsonl").read_text().splitlines()]
    tok = lm["tok"]
    expect = []
    for i in ev.samples["tinylm_add"]:
        ids = tok(rows[i]["prompt"], return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = lm["model"].generate(ids, max_new_tokens=8, do_sample=False)
        text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).split("\n")[0]
        expect.append(float(text == rows[i]["answer"]))
    assert res.per_sample["tinylm_add"].tolist() == expect


def _mc_task(folder: Path, name: str, n: int, seed: int, ragged: bool = False) -> None:
    """A multiple-choice addition task (4 choices, the sum among near misses) for the tiny LM;
    ``ragged``: choices of 1-4 characters, so length normalisation changes the ranking."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        a, b = (int(v) for v in rng.integers(10, 50, 2))
        choices = [f"{a + b + d:03d}" for d in (0, 1, -10, 11)]
        if ragged:
            choices = [choices[0], choices[1] + "0", choices[2][1:], choices[3][2:]]
        gold = int(rng.integers(4))
        choices[0], choices[gold] = choices[gold], choices[0]
        rows.append({"prompt": f"{a}+{b}=", "choices": choices, "gold": gold})
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    validation: {folder / name}.jsonl\n"
        "validation_split: validation\noutput_type: multiple_choice\ndoc_to_text: '{{prompt}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{gold}}'\ntarget_delimiter: ''\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
    )


def test_lm_eval_multiple_choice_margins(lm: dict, tmp_path: Path) -> None:
    """Multiple-choice acc comes with per-document margins: the gold choice's loglikelihood
    (checked against a direct forward pass) minus the best other one's, positive exactly where
    lm-eval counts the document right; none where they would not give the objective back."""
    import torch

    load(lm, "reverse")  # an expert of another task: some sums right, some wrong
    _mc_task(tmp_path, "mc_a", 24, 0)
    _mc_task(tmp_path, "mc_b", 24, 1)
    _mc_task(tmp_path, "mc_c", 10, 2)
    ctx = EvalContext(base_dir=tmp_path)
    res = build_evaluator("lm_eval", {"tasks": ["mc_a", "mc_b"], "metric": "acc", "include_path": ["."]}, ctx).evaluate(lm["model"], lm["tok"])
    m = res.margins["acc,none"]
    per = np.concatenate([res.per_sample["mc_a"], res.per_sample["mc_b"]])
    assert m.shape == (48,) and 0 < per.mean() < 1
    assert ((m > 0) == (per > 0.5)).all() and (m > 0).mean() == pytest.approx(res.metrics["acc,none"], abs=1e-12)
    row = json.loads((tmp_path / "mc_a.jsonl").read_text().splitlines()[0])
    tok = lm["tok"]
    lls = []
    for choice in row["choices"]:
        ctx_ids = tok(row["prompt"])["input_ids"]
        ids = torch.tensor([tok(row["prompt"] + choice)["input_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(lm["model"](ids).logits[0, :-1].double(), -1)
        cont = ids[0, len(ctx_ids):]
        lls.append(float(logp[torch.arange(len(ctx_ids) - 1, ids.shape[1] - 1), cont].sum()))
    gold = row["gold"]
    assert m[0] == pytest.approx(lls[gold] - max(v for i, v in enumerate(lls) if i != gold), abs=1e-4)
    # tasks of unequal size (the objective weighs tasks, not documents): no margins
    unequal = build_evaluator("lm_eval", {"tasks": ["mc_a", "mc_c"], "metric": "acc", "include_path": ["."]}, ctx)
    assert unequal.evaluate(lm["model"], lm["tok"]).margins is None
    # acc_norm: loglikelihoods divided by the choices' lengths (all 3 characters here)
    res_n = build_evaluator("lm_eval", {"tasks": ["mc_a"], "metric": "acc_norm", "include_path": ["."]}, ctx).evaluate(lm["model"], lm["tok"])
    assert res_n.margins["acc_norm,none"][0] == pytest.approx(m[0] / 3, abs=1e-6)
    assert (res_n.margins["acc_norm,none"] > 0).mean() == pytest.approx(res_n.metrics["acc_norm,none"], abs=1e-12)
    _mc_task(tmp_path, "mc_r", 24, 3, ragged=True)  # lengths 3, 4, 2, 1: normalising must follow lm-eval's
    res_r = build_evaluator("lm_eval", {"tasks": ["mc_r"], "metric": "acc_norm", "include_path": ["."]}, ctx).evaluate(lm["model"], lm["tok"])
    assert (res_r.margins["acc_norm,none"] > 0).mean() == pytest.approx(res_r.metrics["acc_norm,none"], abs=1e-12)
    # a generation metric gets the teacher-forced margins (test_lm_eval_generation_margins_*)
    gen = build_evaluator("lm_eval", {"tasks": ["tinylm_add"], "limit": 4}, ctx).evaluate(lm["model"], lm["tok"])
    assert set(gen.margins) == {"exact_match,none"} and gen.per_sample


def _merge(lm: dict, weights: dict[str, float]) -> None:
    """Task arithmetic in place: base + sum of weight x (expert - base)."""
    import torch

    with torch.no_grad():
        for k, p in lm["model"].state_dict().items():
            b = lm["states"]["base"][k]
            p.copy_(b + sum(w * (lm["states"][n][k] - b) for n, w in weights.items()))


def _greedy_margin_by_hand(lm: dict, prompt: str, answer: str) -> float:
    """min over the answer's characters and the stop (newline or end of sequence) of the gold
    logit minus the best other, from one forward pass (one token per byte in this zoo)."""
    import torch

    tok = lm["tok"]
    ctx, ans = tok(prompt)["input_ids"], tok(answer, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = lm["model"](torch.tensor([ctx + ans])).logits[0].double()
    out = []
    for k, g in enumerate(ans):
        row = logits[len(ctx) - 1 + k]
        out.append(float(row[g] - torch.cat([row[:g], row[g + 1:]]).max()))
    row = logits[len(ctx) - 1 + len(ans)]
    stop = torch.zeros(len(row), dtype=torch.bool)
    stop[[tok.convert_tokens_to_ids(tok.tokenize("\n"))[0], tok.eos_token_id]] = True
    out.append(float(row[stop].max() - row[~stop].max()))
    return min(out)


@pytest.mark.parametrize("weights", [{"add": 1.0}, {"add": 0.7, "reverse": 0.7}, {"add": 0.5, "reverse": 0.9}, {"reverse": 1.0}])
def test_lm_eval_generation_margins_give_back_exact_match(lm: dict, weights: dict[str, float]) -> None:
    """Greedy exact-match generation comes with teacher-forced margins: positive exactly where
    lm-eval's own greedy decoding scored the document right, on merges that get some right and
    some wrong, and equal to a forward pass computed by hand."""
    _merge(lm, weights)
    ctx = EvalContext(seed=5)
    both = build_evaluator("lm_eval", {"tasks": ["tinylm_add", "tinylm_reverse"], "limit": 60}, ctx)
    res = both.evaluate(lm["model"], lm["tok"])
    m = res.margins["exact_match,none"]
    per = np.concatenate([res.per_sample["tinylm_add"], res.per_sample["tinylm_reverse"]])
    assert m.shape == (120,) and np.isfinite(m).all()
    assert ((m > 0) == (per > 0.5)).all()
    assert (m > 0).mean() == pytest.approx(res.metrics["exact_match,none"], abs=1e-12)
    assert 0 < per.mean() < 1  # every merge here gets some documents right and some wrong
    rows = [json.loads(x) for x in (TINY_DATA / "add_validation.jsonl").read_text().splitlines()]
    for k in (0, 7, 31):
        row = rows[both.samples["tinylm_add"][k]]
        assert m[k] == pytest.approx(_greedy_margin_by_hand(lm, row["prompt"], row["answer"]), abs=1e-4)


def _add_task_variant(folder: Path, name: str, extra: str) -> None:
    """The shipped tinylm_add task under another name, with ``extra`` YAML appended."""
    text = (TINY_DATA / "tinylm_add.yaml").read_text().replace("task: tinylm_add", f"task: {name}")
    text = text.replace("validation: add_validation.jsonl", f"validation: {TINY_DATA / 'add_validation.jsonl'}")
    (folder / f"{name}.yaml").write_text(text + extra)


def test_lm_eval_generation_margins_none_where_they_would_not_give_the_score_back(lm: dict, tmp_path: Path, caplog) -> None:
    """No margins, with a debug line saying why: a filter that rewrites the generation before
    exact_match (here: the first run of digits, so a generation with anything after the sum
    counts as right though greedy decoding did not reproduce target + stop), exact-match options that accept other strings, sampling, and
    a stop string inside the targets (greedy output is cut short where the teacher-forced pass
    sees the gold token win: the per-document check refuses)."""
    import logging

    _merge(lm, {"add": 0.7, "reverse": 0.7})
    _add_task_variant(tmp_path, "add_digits", "filter_list:\n  - name: digits\n    filter:\n"
                      "      - function: regex\n        regex_pattern: '(\\d+)'\n      - function: take_first\n")
    _add_task_variant(tmp_path, "add_nocase", "")
    text = (tmp_path / "add_nocase.yaml").read_text().replace("higher_is_better: true", "higher_is_better: true\n    ignore_case: true")
    (tmp_path / "add_nocase.yaml").write_text(text)
    ctx = EvalContext(base_dir=tmp_path, seed=2)
    caplog.set_level(logging.DEBUG, logger="evaluators.generation_margins")
    cases = [
        ({"tasks": ["add_digits"], "metric": "exact_match,digits"}, "changes the generated text"),
        ({"tasks": ["add_nocase"]}, "accept strings other than the target"),
        ({"tasks": ["tinylm_add"], "gen_kwargs": {"do_sample": True, "temperature": 1.0}}, "not greedy"),
        ({"tasks": ["tinylm_add"], "gen_kwargs": {"until": ["\n", "1"]}}, "lm-eval's exact_match is"),
    ]
    for settings, why in cases:
        caplog.clear()
        res = build_evaluator("lm_eval", {"limit": 40, "include_path": ["."], **settings}, ctx).evaluate(lm["model"], lm["tok"])
        assert res.margins is None and res.per_sample, settings
        assert any(why in r.getMessage() for r in caplog.records), (why, [r.getMessage() for r in caplog.records])
    on = build_evaluator("lm_eval", {"tasks": ["tinylm_add"], "limit": 40}, ctx).evaluate(lm["model"], lm["tok"])
    off = build_evaluator("lm_eval", {"tasks": ["tinylm_add"], "limit": 40, "generation_margins": False}, ctx).evaluate(lm["model"], lm["tok"])
    assert on.margins is not None and off.margins is None and off.metrics == on.metrics


def test_lm_eval_sees_in_place_weight_changes(lm: dict) -> None:
    """Nothing lm-eval caches goes stale: after the weights change in place, the same evaluator
    gives exactly what a freshly built one gives on the changed model."""
    ctx = EvalContext(seed=0)
    settings = {"tasks": ["tinylm_add", "tinylm_reverse"], "limit": 30}
    ev = build_evaluator("lm_eval", settings, ctx)
    load(lm, "add")
    first = ev.evaluate(lm["model"], lm["tok"])
    load(lm, "reverse")  # in place: same model object, new weights
    again = ev.evaluate(lm["model"], lm["tok"])
    fresh = build_evaluator("lm_eval", settings, ctx).evaluate(lm["model"], lm["tok"])
    assert again.metrics == fresh.metrics
    for task in again.per_sample:
        assert np.array_equal(again.per_sample[task], fresh.per_sample[task])
    assert again.metrics["tinylm_reverse/exact_match,none"] > first.metrics["tinylm_reverse/exact_match,none"] + 0.5
    assert again.metrics["tinylm_add/exact_match,none"] < first.metrics["tinylm_add/exact_match,none"] - 0.5
    load(lm, "add")
    assert ev.evaluate(lm["model"], lm["tok"]).metrics == first.metrics


def test_lm_eval_subsets_are_seeded_and_fixed_per_run(lm: dict) -> None:
    def subset(seed: int, **extra) -> list[int]:
        ev = build_evaluator("lm_eval", {"tasks": ["tinylm_add"], "limit": 20, **extra}, EvalContext(seed=seed))
        return ev.samples["tinylm_add"]

    a = subset(0)
    assert a == subset(0) and a == sorted(a) and len(set(a)) == 20
    assert a != subset(1)  # another run seed, another subset
    assert subset(5, subset_seed=7) == subset(6, subset_seed=7)
    assert subset(0, subset="first") == list(range(20))
    ev = build_evaluator("lm_eval", {"tasks": ["tinylm_add"], "limit": 500}, EvalContext())
    assert ev.samples == {}  # limit above the task size: every document


def test_lm_eval_held_out_task_and_metric_spelling(lm: dict) -> None:
    load(lm, "add")
    ev = build_evaluator("lm_eval", {"tasks": ["tinylm_add_test"], "metric": "exact_match", "limit": 10}, EvalContext())
    assert ev.metric == "exact_match,none"
    assert ev.evaluate(lm["model"], lm["tok"]).metrics["exact_match,none"] >= 0.6


# ----------------------------------------------------------------------------- lm-eval bad input


def test_unknown_task_suggests_close_names_and_builtin_tasks_resolve() -> None:
    got = issues({"tasks": ["tinylm_ad"]})
    assert len(got) == 1 and got[0][0] == "tasks[0]"
    assert "unknown lm-eval task 'tinylm_ad'" in got[0][1] and "did you mean 'tinylm_add'" in got[0][1]
    # a built-in (non-local) task that is not a public test set passes the check
    assert issues({"tasks": ["wikitext"]}) == []


def test_local_task_names_resolve_without_indexing_builtin_tasks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import evaluators.lm_eval as mod

    def refuse() -> frozenset[str]:
        raise AssertionError("the built-in task index must not be built for local names")

    monkeypatch.setattr(mod, "builtin_task_names", refuse)
    (tmp_path / "mine.yaml").write_text(
        "task: my_task\ndataset_path: json\noutput_type: generate_until\ndoc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
    )
    assert issues({"tasks": ["tinylm_add", "tinylm_sort_test", "my_task"], "include_path": [str(tmp_path)]}) == []


def test_bare_metric_name_takes_the_filter_the_task_reports(tmp_path: Path) -> None:
    (tmp_path / "filtered.yaml").write_text(
        "task: my_filtered\ndataset_path: json\noutput_type: generate_until\ndoc_to_text: '{{q}}'\n"
        "doc_to_target: '{{a}}'\nmetric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
        "filter_list:\n  - name: strict\n    filter:\n      - function: take_first\n"
    )
    ok = {"tasks": ["my_filtered"], "include_path": [str(tmp_path)]}
    assert issues({**ok, "metric": "exact_match"}) == []
    assert issues({**ok, "metric": "exact_match,strict"}) == []
    assert issues({**ok, "metric": "exact_match,none"}) == [
        ("metric", "task 'my_filtered' does not report 'exact_match,none'; it reports: exact_match,strict")
    ]


def test_metric_the_task_does_not_produce_lists_what_it_produces(lm: dict) -> None:
    got = issues({"tasks": ["tinylm_add"], "metric": "acc,none"})
    assert got == [("metric", "task 'tinylm_add' does not report 'acc,none'; it reports: exact_match,none")]
    # the same mistake caught at evaluation time (e.g. a task check() could not read)
    ev = build_evaluator("lm_eval", {"tasks": ["tinylm_add"], "metric": "acc_norm,none", "limit": 4}, EvalContext())
    with pytest.raises(EvaluationError, match=r"does not report 'acc_norm,none'; it reports: exact_match,none"):
        ev.evaluate(lm["model"], lm["tok"])


def test_public_benchmark_test_sets_are_refused_unless_allowed() -> None:
    for name in ("mmlu", "mmlu_abstract_algebra", "gsm8k", "gsm8k_cot", "arc_challenge", "hellaswag", "truthfulqa_mc2",
                 "winogrande", "humaneval", "mbpp", "bbh_cot_fewshot_navigate", "ifeval", "gpqa_main_zeroshot",
                 "leaderboard_math_hard", "minerva_math_algebra"):
        assert public_benchmark(name), name
    for name in ("tinylm_add", "wikitext", "mathematics_mine", "my_arc", "archery"):
        assert public_benchmark(name) is None, name
    got = issues({"tasks": ["tinylm_add", "gsm8k"]})
    assert [f for f, _ in got] == ["tasks[1]"]
    assert "public benchmark (gsm8k) test set" in got[0][1] and "allow_public_test_sets: true" in got[0][1]
    assert "overfits" in got[0][1]
    # allowed knowingly; and held-out reporting on a benchmark is never refused
    assert not any("public benchmark" in m for _, m in issues({"tasks": ["gsm8k"]}, allow_public_test_sets=True))
    assert not any("public benchmark" in m for _, m in issues({"tasks": ["gsm8k"]}, split="heldout"))


def test_config_level_validation_reports_field_paths() -> None:
    from search.config import parse_config

    cfg = parse_config({
        "name": "x",
        "models": {"base": "zoo:tiny-lm/base", "experts": [{"name": "add", "path": "zoo:tiny-lm/add"}]},
        "objectives": [{"name": "add", "evaluator": "lm_eval", "direction": "maximize",
                        "settings": {"tasks": ["tinylm_add"], "metric": "accuracy"}}],
    })
    got = validate_settings("lm_eval", cfg.objectives[0].settings, "objectives[0].settings", cfg)
    assert [str(i) for i in got] == [
        "objectives[0].settings.metric: task 'tinylm_add' does not report 'accuracy'; it reports: exact_match,none"
    ]
    got = validate_settings("lm_eval", {"tasks": []}, "objectives[0].settings", cfg)
    assert got and got[0].path == "objectives[0].settings.tasks"


# ----------------------------------------------------------------------------- failures


def test_raising_model_fails_the_trial_with_evaluation_error(lm: dict) -> None:
    def boom(module, args, kwargs):
        raise RuntimeError("device on fire")

    load(lm, "add")
    handle = lm["model"].register_forward_pre_hook(boom, with_kwargs=True)
    try:
        for name, settings in [
            ("lm_eval", {"tasks": ["tinylm_add"], "limit": 4}),
            ("perplexity", {"path": str(TINY_DATA / "add_validation.jsonl"), "text_field": "prompt", "limit": 4}),
            ("generation_length", {"path": str(TINY_DATA / "add_validation.jsonl"), "limit": 4}),
        ]:
            ev = build_evaluator(name, settings, EvalContext())
            with pytest.raises(EvaluationError, match="device on fire"):
                ev.evaluate(lm["model"], lm["tok"])
    finally:
        handle.remove()


def test_nan_weights_fail_the_trial_with_evaluation_error(lm: dict, digits_zoo: Path) -> None:
    import torch

    from search.zoo.digits import load_mlp

    load(lm, "add")
    ev = build_evaluator("perplexity", {"path": str(TINY_DATA / "add_validation.jsonl"), "text_field": "prompt", "limit": 4},
                         EvalContext())
    assert math.isfinite(ev.evaluate(lm["model"], lm["tok"]).metrics["nll"])
    with torch.no_grad():
        lm["model"].lm_head.weight[0, 0] = float("nan")
    try:
        with pytest.raises(EvaluationError, match="not finite"):
            ev.evaluate(lm["model"], lm["tok"])
    finally:
        load(lm, "add")
    mlp = load_mlp(digits_zoo / "low")
    with torch.no_grad():
        mlp.fc2.bias[3] = float("inf")
    ev = build_evaluator("classification", {"labels": [0, 1]}, EvalContext())
    with pytest.raises(EvaluationError, match="NaN/inf"):
        ev.evaluate(mlp)


def test_python_evaluator_nan_fails_and_results_pass_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = tmp_path / "my_scores.py"
    mod.write_text(
        "def nan(model, tokenizer):\n    return {'score': float('nan')}\n"
        "def ok(model, tokenizer, scale=1.0):\n    return {'score': 0.5 * scale}, {'set': [1, 0]}\n"
        "def margins(model, tokenizer, m=(0.3, -1.0, 2.0, 0.0), acc=None):\n"
        "    return {'acc': sum(v > 0 for v in m) / len(m) if acc is None else acc}, None, {'acc': list(m)}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ev = build_evaluator("python", {"function": "my_scores:nan", "metric": "score"}, EvalContext())
    with pytest.raises(EvaluationError, match="not finite"):
        ev.evaluate(None, None)
    ev = build_evaluator("python", {"function": "my_scores:ok", "metric": "score", "kwargs": {"scale": 2}}, EvalContext())
    res = ev.evaluate(None, None)
    assert res.metrics == {"score": 1.0} and res.per_sample["set"].tolist() == [1.0, 0.0]
    ev = build_evaluator("python", {"function": "my_scores:ok", "metric": "nope"}, EvalContext())
    with pytest.raises(EvaluationError, match="no metric 'nope'"):
        ev.evaluate(None, None)
    # margins: passed on when they give the metric back, refused with the rule otherwise
    res = build_evaluator("python", {"function": "my_scores:margins", "metric": "acc"}, EvalContext()).evaluate(None, None)
    assert res.metrics == {"acc": 0.5} and res.margins["acc"].tolist() == [0.3, -1.0, 2.0, 0.0] and res.per_sample is None
    bad = build_evaluator("python", {"function": "my_scores:margins", "metric": "acc", "kwargs": {"acc": 0.75}}, EvalContext())
    with pytest.raises(EvaluationError, match=r"acc == mean\(margins > 0\)"):
        bad.evaluate(None, None)


# ----------------------------------------------------------------------------- perplexity


def uniform_model(lm: dict):
    """The tiny Llama with a zero output layer: every next token has probability 1/V."""
    import copy

    import torch

    m = copy.deepcopy(lm["model"])
    with torch.no_grad():
        m.lm_head.weight.zero_()
    return m


@pytest.mark.parametrize("max_length", [None, 4])
def test_perplexity_of_a_uniform_model_is_the_vocabulary_size(lm: dict, tmp_path: Path, max_length: int | None) -> None:
    docs = ["hello world", "07+45=052", "a", "rev:abcd=dcba and some more text to split into windows"]
    f = tmp_path / "docs.txt"
    f.write_text("\n".join(docs) + "\n\n")
    m = uniform_model(lm)
    tok = lm["tok"]
    V = m.config.vocab_size
    ev = build_evaluator("perplexity", {"path": str(f), "max_length": max_length, "batch_size": 3}, EvalContext())
    res = ev.evaluate(m, tok)
    n_tokens = sum(len(tok(d)["input_ids"]) - 1 for d in docs)  # every token after the first, once
    assert res.info["tokens"] == n_tokens
    assert res.metrics["nll"] == pytest.approx(math.log(V), rel=1e-6)
    assert res.metrics["perplexity"] == pytest.approx(V, rel=1e-5)
    assert ev.metric == "perplexity" and res.per_sample is None


def test_perplexity_matches_a_direct_forward_pass(lm: dict, tmp_path: Path) -> None:
    import torch

    load(lm, "reverse")
    rows = [{"text": t} for t in ("rev:abc=cba", "rev:kdhl=lhdk", "07+45=052 and text")]
    f = tmp_path / "docs.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ev = build_evaluator("perplexity", {"path": str(f), "metric": "nll", "batch_size": 2}, EvalContext())
    got = ev.evaluate(lm["model"], lm["tok"])
    total, count = 0.0, 0
    for r in rows:
        ids = lm["tok"](r["text"], return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(lm["model"](ids).logits[0, :-1].double(), -1)
        total -= float(logp.gather(-1, ids[0, 1:, None]).sum())
        count += ids.shape[1] - 1
    assert ev.metric == "nll"
    assert got.metrics["nll"] == pytest.approx(total / count, rel=1e-5)
    assert got.metrics["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)


def test_perplexity_bad_inputs(tmp_path: Path) -> None:
    ctx = EvalContext(base_dir=tmp_path)
    assert validate_settings("perplexity", {"path": "missing.txt"}, "o")[0].message.startswith("no such file")
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(EvaluationError, match="no string field 'text'"):
        build_evaluator("perplexity", {"path": "bad.jsonl"}, ctx)


# ----------------------------------------------------------------------------- generation length


def test_generation_length_hand_computed(lm: dict, tmp_path: Path) -> None:
    """The add expert answers every addition with three digits, a newline and EOS."""
    load(lm, "add")
    ctx = EvalContext()
    prompts = {"path": str(TINY_DATA / "add_validation.jsonl"), "limit": 12}
    res = build_evaluator("generation_length", prompts, ctx).evaluate(lm["model"], lm["tok"])
    assert res.metrics == {"mean_tokens": 4.0, "max_tokens": 4.0, "truncated": 0.0}  # "052\n", EOS not counted
    res = build_evaluator("generation_length", {**prompts, "stop": ["\n"]}, ctx).evaluate(lm["model"], lm["tok"])
    assert res.metrics["mean_tokens"] == 3.0  # the answer before the stop string
    res = build_evaluator("generation_length", {**prompts, "max_new_tokens": 2}, ctx).evaluate(lm["model"], lm["tok"])
    assert res.metrics == {"mean_tokens": 2.0, "max_tokens": 2.0, "truncated": 1.0}
    # prompts from an lm-eval task: its 'until' ("\n") is the default stop string
    ev = build_evaluator("generation_length", {"task": "tinylm_add", "limit": 12}, ctx)
    assert ev.stop == ["\n"] and len(ev.prompts) == 12
    assert ev.evaluate(lm["model"], lm["tok"]).metrics["mean_tokens"] == 3.0
    # a model that never emits EOS runs to max_new_tokens
    f = tmp_path / "p.txt"
    f.write_text("hello\nworld there\n")
    res = build_evaluator("generation_length", {"path": str(f), "max_new_tokens": 5}, ctx).evaluate(uniform_model(lm), lm["tok"])
    assert res.metrics == {"mean_tokens": 5.0, "max_tokens": 5.0, "truncated": 1.0}


def test_generation_length_settings_need_one_source() -> None:
    got = validate_settings("generation_length", {"max_new_tokens": 8}, "objectives[0].settings")
    assert "exactly one prompt source" in got[0].message
    got = validate_settings("generation_length", {"task": "tinylm_ad"}, "objectives[0].settings")
    assert got[0].path == "objectives[0].settings.task" and "did you mean 'tinylm_add'" in got[0].message


# ----------------------------------------------------------------------------- classification


def test_classification_accuracy_per_sample_and_npz(digits_zoo: Path, tmp_path: Path) -> None:
    import torch

    from search.zoo.digits import digits_split, load_mlp

    model = load_mlp(digits_zoo / "low")
    X, y = digits_split("test")
    keep = np.isin(y, [0, 1, 2])
    with torch.no_grad():
        pred = model(torch.as_tensor(X[keep])).argmax(-1).numpy()
    ev = build_evaluator("classification", {"split": "test", "labels": [0, 1, 2]}, EvalContext())
    res = ev.evaluate(model)
    assert res.metrics["accuracy"] == pytest.approx(float((pred == y[keep]).mean()))
    assert res.per_sample["digits/test"].tolist() == (pred == y[keep]).astype(float).tolist()
    assert ev.metric == "accuracy" and res.info["n"] == int(keep.sum())
    # margins: the true logit minus the best other; positive exactly where the argmax is right
    with torch.no_grad():
        logits = model(torch.as_tensor(X[keep])).double().numpy()
    m = res.margins["accuracy"]
    true = logits[np.arange(len(m)), y[keep]]
    logits[np.arange(len(m)), y[keep]] = -np.inf
    assert np.allclose(m, true - logits.max(1), atol=1e-5)
    assert ((m > 0).mean() == res.metrics["accuracy"]) and ((m > 0) == (pred == y[keep])).all()
    # ties: constant logits make argmax pick class 0, so only the 0s are right
    zero = torch.nn.Linear(64, 10)
    with torch.no_grad():
        zero.weight.zero_()
        zero.bias.zero_()
    flat = ev.evaluate(zero)
    assert (flat.margins["accuracy"] > 0).tolist() == (y[keep] == 0).tolist()
    assert flat.metrics["accuracy"] == pytest.approx(float((y[keep] == 0).mean()))
    np.savez(tmp_path / "data.npz", X_validation=X[:50], y_validation=y[:50])
    res2 = build_evaluator("classification", {"dataset": "data.npz"}, EvalContext(base_dir=tmp_path)).evaluate(model)
    assert res2.per_sample["data/validation"].shape == (50,)
    assert validate_settings("classification", {"labels": [3, 12]}, "o")[0].message == "digits has labels 0-9; [12] are not among them"
    assert "no such file" in validate_settings("classification", {"dataset": "x.npz"}, "o")[0].message


# ----------------------------------------------------------------------------- configs and imports


def test_shipped_configs_validate() -> None:
    env = {**os.environ}
    for cfg in ("quickstart", "digits", "digits3"):
        out = subprocess.run([sys.executable, "-m", "search", "validate", f"configs/{cfg}.yaml"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert ": ok (" in out.stdout


def test_evaluator_modules_import_light() -> None:
    code = (
        "import sys, evaluators, evaluators.lm_eval, evaluators.perplexity, evaluators.generation_length, "
        "evaluators.classification, evaluators.python, search.zoo.tiny_lm, search.zoo.digits\n"
        "heavy = [m for m in ('torch', 'transformers', 'lm_eval', 'datasets', 'sklearn') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- example subsets (fidelity)


def test_every_evaluator_scores_exactly_the_examples_asked_for(lm: dict, digits_zoo: Path, tmp_path: Path) -> None:
    """``evaluate(..., examples=idx)`` scores those examples only, and their per-example results
    are the full run's at those indices: two disjoint subsets stitched give the full value back."""
    from search.fidelity import combine, stitch

    def check(ev: Any, model: Any, tok: Any, cut: int) -> None:
        full = ev.evaluate(model, tok)
        n = sum(ev.example_groups())
        assert full.examples is not None and full.examples.index.tolist() == list(range(n))
        assert combine(full.examples) == pytest.approx(full.metrics[ev.metric], rel=1e-9)
        rng = np.random.default_rng(0)
        a = np.sort(rng.choice(n, size=cut, replace=False))
        b = np.setdiff1d(np.arange(n), a)
        ra, rb = ev.evaluate(model, tok, examples=a), ev.evaluate(model, tok, examples=b)
        assert ra.examples.index.tolist() == a.tolist() and rb.examples.index.tolist() == b.tolist()
        assert combine(ra.examples) == pytest.approx(ra.metrics[ev.metric], rel=1e-9)
        np.testing.assert_allclose(ra.examples.value, full.examples.value[a], rtol=1e-5, atol=1e-6)
        both = stitch([ra.examples, rb.examples])
        assert combine(both) == pytest.approx(full.metrics[ev.metric], rel=1e-5)
        if full.examples.has_margins:
            np.testing.assert_allclose(both.margin, full.examples.margin, rtol=1e-5, atol=1e-5)

    from typing import Any

    load(lm, "reverse")
    m, tok = lm["model"], lm["tok"]
    # lm-eval, two tasks (a group each); a subset may leave a task out entirely
    _mc_task(tmp_path, "mc_a", 12, 0)
    _mc_task(tmp_path, "mc_b", 12, 1)
    mc = build_evaluator("lm_eval", {"tasks": ["mc_a", "mc_b"], "metric": "acc", "include_path": ["."]}, EvalContext(base_dir=tmp_path))
    assert mc.example_groups() == [12, 12]
    check(mc, m, tok, 9)
    only_b = mc.evaluate(m, tok, examples=np.array([13, 20]))
    assert only_b.examples.group.tolist() == [1, 1] and set(only_b.per_sample) == {"mc_b"}
    gen = build_evaluator("lm_eval", {"tasks": ["tinylm_add", "tinylm_reverse"], "limit": 8}, EvalContext(seed=2))
    check(gen, m, tok, 5)
    # perplexity (token-weighted), generation length, classification
    f = tmp_path / "docs.jsonl"
    f.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("rev:abc=cba", "rev:kdhl=lhdk", "07+45=052 and text", "x", "ab+cd")))
    for metric in ("nll", "perplexity"):
        check(build_evaluator("perplexity", {"path": str(f), "metric": metric, "batch_size": 2}, EvalContext()), m, tok, 2)
    for metric in ("mean_tokens", "max_tokens", "truncated"):
        check(build_evaluator("generation_length", {"path": str(TINY_DATA / "add_validation.jsonl"), "limit": 10, "metric": metric,
                                                    "max_new_tokens": 4}, EvalContext()), m, tok, 4)
    from search.config import parse_config
    from search.models import load_model

    cfg = parse_config(yaml_digits())
    digits = load_model(cfg.models.base, cfg, device="cpu")
    for metric in ("accuracy", "nll"):
        check(build_evaluator("classification", {"dataset": "digits", "labels": [0, 1, 2], "metric": metric}, EvalContext()), digits, None, 20)


def yaml_digits() -> dict:
    import yaml

    cfg = yaml.safe_load((REPO / "configs" / "digits.yaml").read_text())
    cfg.setdefault("name", "digits")
    return cfg
