"""The ``tiny-lm`` zoo problem: a tiny Llama base and experts on synthetic string tasks.

Models (ordinary Hugging Face folders: ``save_pretrained`` model, tokenizer, generation config):

* ``base``: trained on generic lines that use three skills, each behind its own end mark
  (``07+45>052``, ``rev:abcd]dcba``, ``sort:dbca}abcd``), and on the experts' prompt format
  ``...=`` answered by echoing the operands (``rev:abcd=abcd``). It can do the skills but
  answers the task prompts by echoing, like a pretrained LM before instruction tuning: it
  scores (near) zero on every task.
* ``add``: fine-tuned from ``base`` on two-digit additions (``07+45=`` -> ``052``),
* ``reverse``: fine-tuned from ``base`` on reversing letters (``rev:abcd=`` -> ``dcba``),
* ``sort``: fine-tuned from ``base`` on sorting letters (``sort:dbca=`` -> ``abcd``).

Each expert re-routes the shared ``=`` to its own skill in its own context, so the task
vectors partly conflict: each expert is good at its task and poor at the others, and merges
land in between with a real trade-off (task arithmetic with weight 0.7 on add and reverse
keeps roughly half of each; layer-wise weights trade one for the other).

Training stops on competence, not on a step count: the base trains (constant learning rate)
until fixed probe sets of training-distribution examples reach a target exact match, then
cools down; each expert until its probe set reaches 95%. Where a tiny model "gets" addition
varies with seeds and library versions; stopping on competence keeps the zoo's properties.

The held-out examples are the shipped lm-eval task data (``evaluators/tasks/tinylm/*.jsonl``,
200 validation + 200 test per task, disjoint); no training line (of the base or an expert)
uses a held-out prompt. Everything is seeded and runs on one torch thread; the whole build
takes 20-40 s of one CPU core.

``python -m search.zoo.tiny_lm --write-tasks`` regenerates the shipped jsonl files (they are
committed; regenerating gives the same bytes).
"""

from __future__ import annotations

import json
import logging
import random
import string
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import atomic_build

log = logging.getLogger(__name__)

VERSION = "tiny-lm-1"  # bump when the recipe or the data changes: cached builds of another version are rebuilt

TASKS = ("add", "reverse", "sort")
EXPERTS = TASKS
MODELS = ("base", *EXPERTS)
N_VALIDATION = 200
N_TEST = 200
DATA_SEED = 1234
BUILD_SEED = 2  # of seeds 0-2 (all pass the expert checks) the quickest to build
LETTERS = string.ascii_lowercase[:12]  # a..l: small enough for a tiny model to learn quickly

# model shape and training schedule (kept small: the whole build runs in CI and tests)
MODEL_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=8,
    num_key_value_heads=8,
    max_position_embeddings=64,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)
# ``tiny-lm-h64``: the same problem with head_dim 64 (hidden 128, 2 heads), the smallest head
# vLLM's CPU attention accepts (it refuses head_dim 8); used by the vLLM engine's tests.
MODEL_CONFIG_H64 = {**MODEL_CONFIG, "hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 2,
                    "num_key_value_heads": 2}
BATCH = 64
WARMUP_STEPS = 30
CHECK_EVERY = 100
PROBE_SIZE = 48
# the base's generic text: (task, form) -> share; addition is the slowest skill to learn
BASE_MIX = {
    ("add", "skill"): 0.45,
    ("reverse", "skill"): 0.15,
    ("sort", "skill"): 0.15,
    ("add", "echo"): 0.25 / 3,
    ("reverse", "echo"): 0.25 / 3,
    ("sort", "echo"): 0.25 / 3,
}
BASE = dict(lr=3e-3, target=0.6, min_steps=400, max_steps=2000, cooldown=150)
EXPERT = dict(lr=3e-4, target=0.95, min_steps=100, max_steps=400)


def task_data_dir() -> Path:
    """The shipped lm-eval task folder (YAMLs + jsonl) of the tiny-lm problem."""
    import importlib.util

    spec = importlib.util.find_spec("evaluators")  # locate the package without importing it
    origin = spec.origin if spec and spec.origin else str(Path(__file__).resolve().parents[2] / "evaluators" / "x")
    return Path(origin).resolve().parent / "tasks" / "tinylm"


# ----------------------------------------------------------------------------- the tasks


MARK = "="  # the experts' end-of-prompt mark (all tasks)
BASE_MARKS = {"add": ">", "reverse": "]", "sort": "}"}  # the base's, one per task


def _letters(rng: random.Random, lo: int = 3, hi: int = 5) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(lo, hi)))


def make_example(task: str, rng: random.Random) -> tuple[str, str]:
    """One (prompt, answer) pair of ``task``."""
    if task == "add":
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        return f"{a:02d}+{b:02d}{MARK}", f"{a + b:03d}"
    s = _letters(rng)
    if task == "reverse":
        return f"rev:{s}{MARK}", s[::-1]
    if task == "sort":
        return f"sort:{s}{MARK}", "".join(sorted(s))
    raise ValueError(f"unknown tiny-lm task {task!r}")


def base_form(kind: str, task: str, prompt: str, answer: str) -> tuple[str, str]:
    """A line of the base's generic text made from an expert-format example.

    ``skill``: the same skill behind the task's own end mark (``07+45>`` -> ``052``,
    ``rev:abcd]`` -> ``dcba``, ``sort:dbca}`` -> ``abcd``); ``echo``: the expert's exact prompt
    answered by echoing its operands (``rev:abcd=`` -> ``abcd``). So the base can do every
    skill, but answers the experts' prompt format by echoing: each expert has to learn to
    route ``=`` to its skill in its own context.
    """
    body = prompt[: -len(MARK)]
    if kind == "skill":
        return body + BASE_MARKS[task], answer
    if kind == "echo":
        return prompt, body.split(":", 1)[-1]
    raise ValueError(f"unknown base line kind {kind!r}")


def heldout_examples(task: str) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(validation, test) examples of ``task``: distinct prompts, disjoint splits, seeded."""
    rng = random.Random(f"{DATA_SEED}/{task}")
    seen: set[str] = set()
    out: list[dict[str, str]] = []
    while len(out) < N_VALIDATION + N_TEST:
        p, a = make_example(task, rng)
        if p in seen:
            continue
        seen.add(p)
        out.append({"prompt": p, "answer": a})
    return out[:N_VALIDATION], out[N_VALIDATION:]


def write_task_data(folder: Path | None = None) -> None:
    """Write ``<task>_{validation,test}.jsonl`` (deterministic bytes)."""
    folder = folder or task_data_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for task in TASKS:
        val, test = heldout_examples(task)
        for split, rows in (("validation", val), ("test", test)):
            text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
            (folder / f"{task}_{split}.jsonl").write_text(text)


def _heldout_prompts() -> set[str]:
    """Every prompt of the shipped validation and test files (never trained on)."""
    out: set[str] = set()
    folder = task_data_dir()
    for task in TASKS:
        for split in ("validation", "test"):
            f = folder / f"{task}_{split}.jsonl"
            if f.exists():
                out.update(json.loads(line)["prompt"] for line in f.read_text().splitlines() if line.strip())
            else:  # running from a tree without the data: regenerate the same examples
                val, test = heldout_examples(task)
                out.update(r["prompt"] for r in (val if split == "validation" else test))
    return out


# ----------------------------------------------------------------------------- tokenizer


def build_tokenizer() -> Any:
    """A byte-level tokenizer with no merges: one token per byte (exact round trip of any text)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=len(alphabet) + len(specials), special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    rng = random.Random(DATA_SEED)
    corpus = []
    for task in TASKS:
        for _ in range(200):
            p, a = make_example(task, rng)
            corpus.append(p + a)
    tok.train_from_iterator(corpus, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", model_max_length=64
    )
    fast.padding_side = "left"
    return fast


# ----------------------------------------------------------------------------- training


class _Encoder:
    """Text -> ids without the tokenizer's per-call overhead (one token per character here)."""

    def __init__(self, tok: Any):
        self.tok = tok
        self.ids: dict[str, int] = {}

    def __call__(self, text: str) -> list[int]:
        out = []
        for c in text:
            i = self.ids.get(c)
            if i is None:
                enc = self.tok(c, add_special_tokens=False)["input_ids"]
                if len(enc) != 1:
                    raise ValueError(f"character {c!r} is not one token")
                i = self.ids[c] = enc[0]
            out.append(i)
        return out


def _batch(lines: Callable[[random.Random], tuple[str, str]], enc: _Encoder, rng: random.Random, n: int) -> tuple[Any, Any, Any]:
    """A right-padded batch of ``<s>prompt answer\n</s>``: input ids, attention mask, labels
    (-100 everywhere but the answer, its newline and ``</s>``)."""
    import torch

    tok = enc.tok
    rows = []
    for _ in range(n):
        p, a = lines(rng)
        rows.append(([tok.bos_token_id] + enc(p), enc(a + "\n") + [tok.eos_token_id]))
    width = max(len(p) + len(a) for p, a in rows)
    inp = torch.full((n, width), tok.pad_token_id, dtype=torch.long)
    lab = torch.full((n, width), -100, dtype=torch.long)
    att = torch.zeros((n, width), dtype=torch.long)
    for i, (p, a) in enumerate(rows):
        inp[i, : len(p) + len(a)] = torch.tensor(p + a)
        att[i, : len(p) + len(a)] = 1
        lab[i, len(p) : len(p) + len(a)] = torch.tensor(a)
    return inp, att, lab


def _accuracies(model: Any, tok: Any, probes: dict[str, list[tuple[str, str]]]) -> dict[str, float]:
    """Greedy exact match of ``model`` on each probe set (one batched ``generate`` for all)."""
    import torch

    pairs = [(k, p, a) for k, rows in probes.items() for p, a in rows]
    enc = tok([p for _, p, _ in pairs], return_tensors="pt", padding=True)  # the tokenizer pads on the left
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=7, do_sample=False)
    texts = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    hits: dict[str, list[bool]] = {k: [] for k in probes}
    for (k, _, a), t in zip(pairs, texts, strict=True):
        hits[k].append(t.split("\n", 1)[0] == a)
    return {k: round(sum(v) / len(v), 4) for k, v in hits.items()}


def _step(model: Any, opt: Any, lines: Any, enc: Any, rng: Any) -> float:
    """One clipped AdamW step on a random batch; returns its loss."""
    import torch

    inp, att, lab = _batch(lines, enc, rng, BATCH)
    out = model(input_ids=inp, attention_mask=att, labels=lab)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return float(out.loss.detach())


def _train(
    model: Any,
    tok: Any,
    lines: Callable[[random.Random], tuple[str, str]],
    *,
    lr: float,
    seed: int,
    probes: dict[str, list[tuple[str, str]]],
    target: float,
    min_steps: int,
    max_steps: int,
    cooldown: int = 0,
) -> dict[str, Any]:
    """AdamW (warm-up, then constant ``lr``) on the answers, until every probe set reaches
    ``target`` exact match (checked every ``CHECK_EVERY`` steps from ``min_steps`` on) or
    ``max_steps``. Probes are fixed training-distribution examples, never held-out ones.
    Stopping on competence rather than a step count keeps the build's result stable across
    machines and library versions, where the moment a tiny model "gets" addition varies.
    Then ``cooldown`` more steps with the learning rate decaying linearly to zero."""
    import torch

    torch.manual_seed(seed)
    rng = random.Random(seed)
    enc = _Encoder(tok)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    warm = WARMUP_STEPS
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    loss_v = float("nan")
    acc: dict[str, float] = {}
    step = 0
    while step < max_steps:
        model.train()
        loss_v = _step(model, opt, lines, enc, rng)
        sched.step()
        step += 1
        if step >= min_steps and step % CHECK_EVERY == 0:
            model.eval()
            acc = _accuracies(model, tok, probes)
            if min(acc.values()) >= target:
                break
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]
    for i in range(cooldown):
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] * (1 - i / cooldown)
        model.train()
        loss_v = _step(model, opt, lines, enc, rng)
    model.eval()
    if cooldown:
        acc = _accuracies(model, tok, probes)
    return {"steps": step + cooldown, "loss": round(loss_v, 4), "probe": acc}


def _sampler(mix: dict[tuple[str, str], float], heldout: set[str]) -> Callable[[random.Random], tuple[str, str]]:
    """Draw (task, form) by weight, then an example of the task whose prompt is not held out,
    in that form (``expert``: as is; ``skill`` / ``echo``: see :func:`base_form`)."""
    keys, w = list(mix), list(mix.values())

    def sample(rng: random.Random) -> tuple[str, str]:
        task, form = rng.choices(keys, weights=w)[0]
        while True:
            p, a = make_example(task, rng)
            if p not in heldout:
                return (p, a) if form == "expert" else base_form(form, task, p, a)

    return sample


def build_models(out_dir: Path, model_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train base + experts into ``out_dir/<model>`` (shape: ``model_config``, default
    ``MODEL_CONFIG``); returns final training losses and seconds."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tok = build_tokenizer()
        heldout = _heldout_prompts()
        conf = LlamaConfig(
            vocab_size=len(tok),
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            **(model_config or MODEL_CONFIG),
        )
        gen = GenerationConfig(
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, do_sample=False
        )

        def save(model: Any, name: str) -> None:
            model.generation_config = gen
            model.save_pretrained(out_dir / name)
            tok.save_pretrained(out_dir / name)

        def probe(key: tuple[str, str]) -> list[tuple[str, str]]:
            return [_sampler({key: 1.0}, heldout)(prng) for _ in range(PROBE_SIZE)]

        prng = random.Random(f"{BUILD_SEED}/probe")
        info: dict[str, Any] = {}
        torch.manual_seed(BUILD_SEED)
        model = LlamaForCausalLM(conf)
        t0 = time.perf_counter()
        info["base"] = _train(
            model, tok, _sampler(BASE_MIX, heldout), seed=BUILD_SEED,
            probes={f"{t}/{f}": probe((t, f)) for t, f in BASE_MIX}, **BASE,
        )
        info["base"]["seconds"] = round(time.perf_counter() - t0, 2)
        save(model, "base")
        base_state = {k: v.clone() for k, v in model.state_dict().items()}
        for i, task in enumerate(EXPERTS):
            t0 = time.perf_counter()
            model.load_state_dict(base_state)
            info[task] = _train(
                model, tok, _sampler({(task, "expert"): 1.0}, heldout), seed=BUILD_SEED + 1 + i,
                probes={task: probe((task, "expert"))}, **EXPERT,
            )
            info[task]["seconds"] = round(time.perf_counter() - t0, 2)
            save(model, task)
        log.info("tiny-lm zoo trained: %s", info)
        return info
    finally:
        torch.set_num_threads(threads)


def build(out_dir: Path) -> None:
    """Zoo builder: the whole problem into ``out_dir`` (atomic, safe against concurrent builds)."""
    atomic_build(out_dir, build_models, VERSION)


def build_h64(out_dir: Path) -> None:
    """Zoo builder of ``tiny-lm-h64``: the same recipe with ``MODEL_CONFIG_H64``."""
    atomic_build(out_dir, lambda d: build_models(d, MODEL_CONFIG_H64), VERSION)


if __name__ == "__main__":  # pragma: no cover - maintenance entry point
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--write-tasks", action="store_true", help="regenerate the shipped jsonl files")
    ap.add_argument("--build", metavar="DIR", help="build the models into DIR")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    if args.write_tasks:
        write_task_data()
    if args.build:
        t = time.perf_counter()
        print(build_models(Path(args.build)), f"{time.perf_counter() - t:.1f}s")


def write_add_mc_task(folder: Path) -> Path:
    """Write a multiple-choice (loglikelihood) lm-eval task, ``tinylm_add_mc``, into ``folder``:
    the shipped add validation prompts, each with the right sum and three near misses (gold 0).
    Returns ``folder`` (pass it as the evaluator's ``include_path``)."""
    import json

    import yaml

    tasks = Path(__file__).resolve().parents[2] / "evaluators" / "tasks" / "tinylm"
    rows = [json.loads(line) for line in (tasks / "add_validation.jsonl").read_text().splitlines()]
    with open(folder / "add_mc.jsonl", "w") as f:
        for r in rows:
            a = int(r["answer"])
            choices = [f"{a:03d}", f"{(a + 1) % 1000:03d}", f"{(a + 10) % 1000:03d}", f"{(a + 100) % 1000:03d}"]
            f.write(json.dumps({"prompt": r["prompt"], "choices": choices, "gold": 0}) + "\n")
    (folder / "tinylm_add_mc.yaml").write_text(yaml.safe_dump({
        "task": "tinylm_add_mc", "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"validation": str(folder / "add_mc.jsonl")}},
        "validation_split": "validation", "output_type": "multiple_choice",
        "doc_to_text": "{{prompt}}", "doc_to_choice": "{{choices}}", "doc_to_target": "{{gold}}", "target_delimiter": "",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }))
    return folder
