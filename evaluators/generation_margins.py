"""Per-document margins behind lm-eval's greedy ``exact_match``, from one teacher-forced pass.

Greedy decoding writes a gold target exactly when, fed the gold prefix, the gold token is the
most likely one at every position of the target, and a stop comes right after it: the
end-of-sequence token or a token whose text starts with one of the request's ``until``
strings (or the target fills ``max_gen_toks`` exactly). One forward pass over context + gold
target gives every one of those next-token distributions at once, so each document gets the
margin ``min over positions of (gold logit - best other logit)``; at the stop position the
gold logit is the best stop token's and the others are the non-stop tokens. The margin is
positive where greedy decoding reproduces the target, and it is smooth in the merge
coefficients where the 0/1 exact match is a step.

The context is the one lm-eval built for the request (few-shot examples, chat template,
``gen_prefix``: the logged ``arguments``), tokenized and left-truncated as lm-eval's HF
backend does; the target tokens are the context+target encoding minus the context's (the
target encoded alone where the two do not line up), so whitespace and the task's
``target_delimiter`` are where generation would have to produce them.

Margins are reported only where they give lm-eval's own per-document score back, the same
rule as multiple choice: a filter other than ``take_first`` (regex extraction, the usual
chain-of-thought answer extraction), exact-match options that accept other strings
(``ignore_case``, ``ignore_punctuation``, ``ignore_numbers``, ``regexes_to_ignore``),
several gold targets, sampling or beam search, or a target longer than ``max_gen_toks``
give none, with a debug log line saying why. A document whose margin's sign disagrees with
lm-eval's score gives none for the whole evaluation, unless the margin is within
:data:`TIE_TOLERANCE` of a tie (float noise between one full pass and incremental
decoding); such a margin is replaced by the smallest normal float on lm-eval's side of zero.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ._common import model_device

log = logging.getLogger(__name__)

#: logit differences this close to a tie may round either way between the teacher-forced pass
#: and incremental decoding; such a document takes lm-eval's verdict
TIE_TOLERANCE = 1e-4

_EXACT_MATCH_LOOSENERS = ("ignore_case", "ignore_punctuation", "ignore_numbers", "regexes_to_ignore")


def task_reason(task: Any, metric: str, filt: str) -> str | None:
    """Why ``task``'s ``metric,filt`` has no teacher-forced margins (None: it may have them)."""
    if task.get_config("output_type") != "generate_until":
        return "not a generate_until task"
    if metric != "exact_match":
        return f"metric {metric!r} is not exact_match"
    kwargs = (getattr(task, "_metric_fn_kwargs", {}) or {}).get("exact_match", {}) or {}
    loose = [k for k in _EXACT_MATCH_LOOSENERS if kwargs.get(k)]
    if loose:
        return f"exact_match options {loose} accept strings other than the target"
    ens = [f for f in getattr(task, "_filters", []) if f.name == filt]
    if not ens:
        return f"no filter {filt!r}"
    steps = [getattr(step, "func", step) for step in ens[0].filters]
    if any(getattr(s, "__name__", "") != "TakeFirstFilter" for s in steps):
        names = [getattr(s, "__name__", str(s)) for s in steps]
        return f"filter {filt!r} ({', '.join(names)}) changes the generated text before exact_match"
    if getattr(task, "multiple_target", 0):
        return "documents have several gold targets"
    if task.get_config("doc_to_choice") is not None:
        return "the target is a choice index (doc_to_choice)"
    if int(task.get_config("repeats") or 1) != 1:
        return "repeats > 1"
    return None


def _gen_reason(kwargs: dict[str, Any]) -> str | None:
    if kwargs.get("do_sample") or float(kwargs.get("temperature") or 0.0) > 0.0:
        return "generation samples (do_sample / temperature): not greedy"
    if int(kwargs.get("num_beams") or 1) != 1:
        return "beam search: not greedy"
    return None


class _StopTokens:
    """Token ids whose decoded text starts with one of the stop strings (plus end of sequence),
    per stop-string set, for one tokenizer (the vocabulary is decoded once)."""

    def __init__(self, tokenizer: Any, eot_id: int):
        self.eot_id = int(eot_id)
        n = len(tokenizer)
        self.texts = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False,
                                            clean_up_tokenization_spaces=False)
        self._cache: dict[tuple[str, ...], np.ndarray] = {}

    def ids(self, until: list[str]) -> np.ndarray:
        key = tuple(sorted(u for u in until if u))
        if key not in self._cache:
            hit = [i for i, t in enumerate(self.texts) if any(t.startswith(u) for u in key)]
            self._cache[key] = np.unique(np.asarray([*hit, self.eot_id], dtype=np.int64))
        return self._cache[key]


def _encode(lm: Any, ctx: str, target: str, max_ctx_len: int) -> tuple[list[int], list[int]]:
    """(context ids as lm-eval's generate_until feeds them, target ids after them)."""
    enc, _ = lm.tok_batch_encode([ctx], left_truncate_len=max_ctx_len, truncation=getattr(lm, "truncation", False))
    ctx_ids = [int(v) for v in enc[0].tolist()]
    full_ctx, full = lm.tok_encode(ctx), lm.tok_encode(ctx + target)
    if full[: len(full_ctx)] == full_ctx:
        tgt = list(full[len(full_ctx):])
    else:  # the target's first token merges with the context's end: greedy produces it alone
        tgt = list(lm.tokenizer.encode(target, add_special_tokens=False))
    return ctx_ids, [int(v) for v in tgt]


def teacher_forced_margins(lm: Any, tasks: dict[str, Any], samples: dict[str, list[dict[str, Any]]], metric: str,
                           filt: str, stop_cache: dict[int, _StopTokens] | None = None) -> np.ndarray | None:
    """Margins of every document of every task (doc order, tasks concatenated), or None with a
    debug line saying why. ``lm`` is lm-eval's HF backend on the live model; ``samples`` are the
    logged samples of the evaluation whose scores the margins must give back."""
    import torch
    from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

    model = getattr(lm, "model", None)
    if model is None or not hasattr(lm, "tok_batch_encode"):
        log.debug("generation margins: not lm-eval's HF backend")
        return None
    if getattr(lm, "think_end_token", None) is not None:
        log.debug("generation margins: none (think_end_token: the scored answer follows a reasoning trace)")
        return None
    stop_cache = stop_cache if stop_cache is not None else {}
    if id(lm.tokenizer) not in stop_cache:
        stop_cache.clear()
        stop_cache[id(lm.tokenizer)] = _StopTokens(lm.tokenizer, lm.eot_token_id)
    stops = stop_cache[id(lm.tokenizer)]
    eos = lm.tok_decode(lm.eot_token_id, skip_special_tokens=False)
    parts = []
    for name, task in tasks.items():
        why = task_reason(task, metric, filt)
        if why:
            log.debug("generation margins for %s: none (%s)", name, why)
            return None
        rows = sorted((r for r in samples.get(name, []) if r.get("filter") == filt), key=lambda r: r["doc_id"])
        if not rows:
            log.debug("generation margins for %s: none (no logged samples)", name)
            return None
        seqs: list[tuple[list[int], list[int], np.ndarray | None]] = []
        right_list: list[bool] = []
        for r in rows:
            try:
                ctx, gen_kwargs = r["arguments"][0][0], r["arguments"][0][1]
                target = r["target"]
                right_list.append(float(r[metric]) > 0.5)
            except (KeyError, IndexError, TypeError, ValueError):
                log.debug("generation margins for %s: none (samples are not what generate_until logs)", name)
                return None
            if not isinstance(ctx, str) or not isinstance(target, str):
                log.debug("generation margins for %s: none (a context or target is not a string)", name)
                return None
            kw = normalize_gen_kwargs(dict(gen_kwargs), lm.max_gen_toks)
            why = _gen_reason(kw)
            if why:
                log.debug("generation margins for %s: none (%s)", name, why)
                return None
            until = handle_stop_sequences(list(kw.get("until") or []), eos=eos)
            max_gen = int(kw["max_gen_toks"])
            ctx_ids, tgt = _encode(lm, ctx, target, lm.max_length - max_gen)
            if len(tgt) > max_gen or max_gen < 1:
                log.debug("generation margins for %s: none (a target of %d tokens, max_gen_toks=%d)", name, len(tgt), max_gen)
                return None
            seqs.append((ctx_ids, tgt, stops.ids(until) if len(tgt) < max_gen else None))
        m = _forward_margins(model, lm, seqs, torch)
        right = np.array(right_list)
        wrong = (m > 0) != right
        if (np.abs(m[wrong]) > TIE_TOLERANCE).any():
            i = int(np.flatnonzero(wrong & (np.abs(m) > TIE_TOLERANCE))[0])
            log.debug("generation margins for %s: none (document %s: margin %.4g but lm-eval's exact_match is %d)",
                      name, rows[i]["doc_id"], m[i], int(right[i]))
            return None
        tiny = np.finfo(np.float64).tiny
        parts.append(np.where(wrong, np.where(right, tiny, -tiny), m))
    if len({len(m) for m in parts}) != 1:
        log.debug("generation margins: none (tasks of different sizes: the objective does not weigh documents equally)")
        return None
    return np.concatenate(parts)


def _forward_margins(model: Any, lm: Any, seqs: list[tuple[list[int], list[int], np.ndarray | None]], torch: Any) -> np.ndarray:
    """One batched teacher-forced pass per ``lm.batch_size`` documents, left-padded with
    position ids from the attention mask as generation's prefill is, keeping only the logits
    of the last ``max target length + 1`` positions (where every document's target sits)."""
    bs = lm.batch_size if isinstance(lm.batch_size, int) and lm.batch_size > 0 else 32
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else lm.eot_token_id
    device = model_device(model)
    out = np.empty(len(seqs))
    for start in range(0, len(seqs), bs):
        chunk = seqs[start : start + bs]
        inputs = [c + t for c, t, _ in chunk]
        width = max(len(x) for x in inputs)
        keep = max(len(t) for _, t, _ in chunk) + 1
        ids = torch.full((len(chunk), width), int(pad), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, x in enumerate(inputs):
            ids[i, width - len(x):] = torch.tensor(x, dtype=torch.long)
            mask[i, width - len(x):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        kw = {"input_ids": ids.to(device), "attention_mask": mask.to(device), "position_ids": pos.to(device)}
        with torch.no_grad():
            try:
                logits = model(**kw, logits_to_keep=keep).logits
            except TypeError:  # a model without logits_to_keep: all positions
                logits = model(**kw).logits
        logits = logits[:, -keep:]
        for i, (_, t, stop) in enumerate(chunk):
            # the rows predicting target token k (k = 0..len(t)-1), then the token after the target
            L = logits[i, keep - len(t) - 1 :].double()
            ms = []
            if t:
                idx = torch.tensor(t, dtype=torch.long, device=L.device)[:, None]
                rows = L[: len(t)]
                ms.append((rows.gather(1, idx)[:, 0] - rows.scatter(1, idx, float("-inf")).max(1).values).min())
            if stop is not None:
                row = L[len(t)]
                is_stop = torch.zeros(row.shape[0], dtype=torch.bool, device=row.device)
                is_stop[torch.as_tensor(stop[stop < row.shape[0]], device=row.device)] = True
                ms.append(row[is_stop].max() - row[~is_stop].max())
            out[start + i] = float(torch.stack(ms).min())
    return out
