"""Helpers shared by the evaluators: local text data, finiteness checks, torch threads.

Nothing here imports torch at module level.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .base import EvalContext, EvaluationError


def check_data_file(path: str, ctx: EvalContext, field: str = "path") -> list[tuple[str, str]]:
    """``(field, message)`` issues for a local ``.txt`` / ``.jsonl`` data file."""
    p = ctx.resolve(path)
    if not p.is_file():
        return [(field, f"no such file {str(p)!r} (relative paths resolve against the config's folder)")]
    if p.suffix not in (".txt", ".jsonl", ".json"):
        return [(field, f"{p.name!r}: expected a .txt or .jsonl file")]
    return []


def read_texts(path: Path, *, field: str = "text", per_line: bool = True) -> list[str]:
    """Documents of a local file: ``.txt`` one per non-empty line (or the whole file when
    ``per_line`` is false); ``.jsonl`` the string ``field`` of each record."""
    if not path.is_file():
        raise EvaluationError(f"no such data file {str(path)!r}")
    if path.suffix in (".jsonl", ".json"):
        out = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise EvaluationError(f"{path}:{i}: not a JSON line ({e.msg})") from None
            if not isinstance(rec, Mapping) or not isinstance(rec.get(field), str):
                keys = sorted(rec) if isinstance(rec, Mapping) else type(rec).__name__
                raise EvaluationError(f"{path}:{i}: no string field {field!r} (record has {keys}); set text_field")
            out.append(rec[field])
    else:
        text = path.read_text(encoding="utf-8")
        out = [ln for ln in text.splitlines() if ln.strip()] if per_line else ([text] if text.strip() else [])
    if not out:
        raise EvaluationError(f"{path}: no documents found")
    return out


def require_finite(metrics: Mapping[str, float], who: str) -> None:
    """Raise :class:`EvaluationError` naming the first NaN/inf metric."""
    for k, v in metrics.items():
        try:
            ok = math.isfinite(float(v))
        except (TypeError, ValueError):
            raise EvaluationError(f"{who}: metric {k!r} is not a number ({v!r})") from None
        if not ok:
            raise EvaluationError(f"{who}: metric {k!r} is {v} (not finite); the merged model is probably broken")


def model_device(model: Any) -> Any:
    """The device of a torch module's first parameter (cpu for a parameterless module)."""
    import torch

    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def argmax_margins(scores: Any, gold: Any) -> Any:
    """Per-example margins of an argmax prediction: ``scores[i, gold[i]]`` minus the best other
    score, nudged so that ``margin > 0`` exactly where ``argmax(scores[i]) == gold[i]``
    (numpy's argmax takes the first maximum, so a tie is right only when gold comes first)."""
    import numpy as np

    S = np.asarray(scores, dtype=np.float64)
    g = np.asarray(gold, dtype=np.int64)
    rows = np.arange(len(g))
    true = S[rows, g]
    others = S.copy()
    others[rows, g] = -np.inf
    margin = true - others.max(axis=1) if S.shape[1] > 1 else np.full(len(g), np.inf)
    right = S.argmax(axis=1) == g
    return np.where(right, np.maximum(margin, np.finfo(np.float64).tiny), np.minimum(margin, 0.0))


def margins_give_back(margins: Any, value: float) -> bool:
    """Whether ``value == mean(margins > 0)``: the contract of :attr:`EvalResult.margins`."""
    import numpy as np

    m = np.asarray(margins, dtype=np.float64)
    return bool(m.size) and not np.isnan(m).any() and abs(float((m > 0).mean()) - value) <= 1e-9
