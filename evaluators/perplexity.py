"""Mean token negative log-likelihood and perplexity of a causal LM on local text.

Settings:

* ``path``: a ``.txt`` file (one document per non-empty line, or the whole file as one
  document with ``per_line: false``) or a ``.jsonl`` file (the string field ``text_field`` of
  each record); relative to the config's folder.
* ``max_length``: tokens per window (default: the model's ``max_position_embeddings``, at most
  1024). A longer document is scored in consecutive windows that overlap by one token, so
  every token after the first is predicted exactly once (with the context of its window).
* ``batch_size``, ``limit`` (the first N documents), ``add_special_tokens`` (tokenize with the
  tokenizer's special tokens, e.g. a leading BOS, as the model was trained).
* ``metric``: ``perplexity`` (default) or ``nll``; both are reported, corpus-level: the mean
  NLL over all predicted tokens (nats), and ``perplexity = exp(mean NLL)``. Minimise either.

No per-sample scores (per-document NLL does not lie in [0, 1]). Example subsets
(``fidelity``): the examples are the documents; a subset's NLL is the token-weighted mean over
its documents (``combine`` ``mean`` with token weights; ``exp_mean`` for perplexity).

Failures: an exception in the forward pass, or a NaN/inf NLL or perplexity (a broken merge),
raises :class:`~evaluators.base.EvaluationError`; the trial is recorded as FAIL.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

from pydantic import Field

from ._common import check_data_file, model_device, read_texts, require_finite
from .base import EvalContext, EvalResult, EvaluationError, Evaluator, EvaluatorSettings


class PerplexitySettings(EvaluatorSettings):
    path: str = Field(description=".txt or .jsonl file of documents")
    text_field: str = Field("text", description="jsonl field holding the text")
    per_line: bool = Field(True, description=".txt: one document per line (false: the whole file)")
    max_length: int | None = Field(None, ge=2, description="tokens per window")
    batch_size: int = Field(8, gt=0)
    limit: int | None = Field(None, gt=0, description="score only the first N documents")
    add_special_tokens: bool = True
    metric: Literal["perplexity", "nll"] = "perplexity"


class PerplexityEvaluator(Evaluator):
    name: ClassVar[str] = "perplexity"
    Settings: ClassVar[type[EvaluatorSettings]] = PerplexitySettings
    settings: PerplexitySettings

    @classmethod
    def check(cls, settings: EvaluatorSettings, ctx: EvalContext) -> list[tuple[str, str]]:
        assert isinstance(settings, PerplexitySettings)
        return check_data_file(settings.path, ctx)

    def __init__(self, settings: EvaluatorSettings, ctx: EvalContext):
        super().__init__(settings, ctx)
        s = self.settings
        docs = read_texts(ctx.resolve(s.path), field=s.text_field, per_line=s.per_line)
        self.docs = docs[: s.limit] if s.limit else docs
        self._windows: list[list[int]] | None = None
        self._win_doc: list[int] = []  # the document of each window
        self._tok_id: int | None = None

    @property
    def metric(self) -> str:
        return self.settings.metric

    def _max_length(self, model: Any) -> int:
        if self.settings.max_length:
            return self.settings.max_length
        n = getattr(getattr(model, "config", None), "max_position_embeddings", None) or 1024
        return int(min(n, 1024))

    def windows(self, tokenizer: Any, max_length: int) -> list[list[int]]:
        """Token windows of all documents (computed once per tokenizer)."""
        if self._windows is None or self._tok_id != id(tokenizer):
            out: list[list[int]] = []
            win_doc: list[int] = []
            for d, doc in enumerate(self.docs):
                ids = tokenizer(doc, add_special_tokens=self.settings.add_special_tokens)["input_ids"]
                if len(ids) < 2:
                    continue
                start = 0
                while start < len(ids) - 1:
                    out.append(ids[start : start + max_length])
                    win_doc.append(d)
                    start += max_length - 1
            if not out:
                raise EvaluationError(f"perplexity: no document of {self.settings.path!r} has two or more tokens")
            self._windows, self._win_doc, self._tok_id = out, win_doc, id(tokenizer)
        return self._windows

    @classmethod
    def subset_issue(cls, settings: EvaluatorSettings) -> tuple[str, str] | None:
        return None

    def example_groups(self) -> list[int] | None:
        return [len(self.docs)]

    def evaluate(self, model: Any, tokenizer: Any, seed: int = 0, examples: Any = None) -> EvalResult:
        if tokenizer is None:
            raise EvaluationError("perplexity needs a tokenizer; the model source has none (set models.tokenizer)")
        import numpy as np
        import torch

        from search.fidelity import Examples

        idx = np.arange(len(self.docs)) if examples is None else np.asarray(examples, dtype=np.int64)
        try:
            windows = self.windows(tokenizer, self._max_length(model))
            device = model_device(model)
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
            total, count = 0.0, 0
            doc_nll = np.zeros(len(self.docs))
            doc_tok = np.zeros(len(self.docs))
            bs = self.settings.batch_size
            keep = set(idx.tolist())
            chosen = [i for i in range(len(windows)) if self._win_doc[i] in keep]
            order = sorted(chosen, key=lambda i: -len(windows[i]))  # less padding
            with torch.no_grad():
                for b in range(0, len(order), bs):
                    batch = [windows[i] for i in order[b : b + bs]]
                    width = max(len(w) for w in batch)
                    ids = torch.full((len(batch), width), pad, dtype=torch.long)
                    mask = torch.zeros((len(batch), width), dtype=torch.long)
                    for j, w in enumerate(batch):
                        ids[j, : len(w)] = torch.tensor(w)
                        mask[j, : len(w)] = 1
                    ids, mask = ids.to(device), mask.to(device)
                    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
                    logp = torch.log_softmax(logits, dim=-1)
                    tgt = ids[:, 1:]
                    nll = -logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
                    m = mask[:, 1:].bool()
                    total += float(nll[m].double().sum())
                    count += int(m.sum())
                    per_win = (nll.double() * m).sum(1).cpu().numpy()
                    for j, i in enumerate(order[b : b + bs]):
                        doc_nll[self._win_doc[i]] += per_win[j]
                        doc_tok[self._win_doc[i]] += len(windows[i]) - 1
        except EvaluationError:
            raise
        except Exception as e:
            raise EvaluationError(f"perplexity on {self.settings.path!r} failed: {type(e).__name__}: {e}") from e
        if count == 0:
            raise EvaluationError(f"perplexity: none of the {len(idx)} documents scored has two or more tokens")
        mean_nll = total / count
        if not math.isfinite(mean_nll):
            raise EvaluationError(f"perplexity: mean NLL is {mean_nll} (not finite); the merged model is probably broken")
        ppl = math.exp(mean_nll) if mean_nll < 700 else math.inf
        metrics = {"nll": mean_nll, "perplexity": ppl}
        require_finite(metrics, f"perplexity on {self.settings.path!r}")
        tok = doc_tok[idx]
        ex = Examples.of(idx, np.where(tok > 0, doc_nll[idx] / np.maximum(tok, 1), 0.0), weight=tok,
                         combine="exp_mean" if self.settings.metric == "perplexity" else "mean")
        return EvalResult(metrics=metrics, per_sample=None, info={"docs": len(idx), "tokens": count, "windows": len(order)},
                          examples=ex)
