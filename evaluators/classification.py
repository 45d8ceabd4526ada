"""Accuracy of a plain torch classifier (logits out) on a labelled dataset.

Settings:

* ``dataset``: a registered dataset (``evaluators.datasets.DATASETS``: ``digits``, the digits
  zoo's fixed splits of scikit-learn's bundled 8x8 digits) or a path to an ``.npz`` file holding
  ``X_<split>`` (float features) and ``y_<split>`` (integer labels), relative to the config.
* ``split``: ``validation`` (search on it) or ``test`` (held-out reporting); ``train`` exists
  but scoring on training data says little.
* ``labels``: score only the examples whose label is in this list (e.g. ``[0, 1, 2, 3, 4]``),
  the prediction still being the argmax over all classes.
* ``metric``: ``accuracy`` (default, maximise) or ``nll`` (mean cross-entropy, minimise).

The model is called as ``model(X)`` on a float tensor of shape (n, features) in the model's
dtype and device, in batches of ``batch_size``; it returns logits (n, classes).

Per-sample: ``per_sample["<dataset>/<split>"]`` is the per-example correctness (0/1) of the
scored examples, in dataset order (M2N2 uses it); ``margins["accuracy"]`` the per-example
margins (the true class's logit minus the largest other one; positive exactly where the
argmax is right, ties included), which ``mobo`` models instead of the accuracy's steps.

Failures: an exception in the forward pass, logits of the wrong shape, or a NaN/inf metric
raise :class:`~evaluators.base.EvaluationError`; the trial is recorded as FAIL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from search.errors import did_you_mean

from ._common import argmax_margins, model_device, require_finite
from .base import EvalContext, EvalResult, EvaluationError, Evaluator, EvaluatorSettings
from .datasets import DATASETS


def _label_range(labels: tuple[int, ...]) -> str:
    """``0-9`` for a contiguous range, else the labels listed."""
    lo, hi = min(labels), max(labels)
    return f"{lo}-{hi}" if len(set(labels)) == hi - lo + 1 else ", ".join(map(str, sorted(labels)))


class ClassificationSettings(EvaluatorSettings):
    dataset: str = Field("digits", description="a registered dataset ('digits') or a .npz file with X_<split>, y_<split>")
    split: Literal["train", "validation", "test"] = "validation"
    labels: list[int] | None = Field(None, description="score only examples with these labels")
    metric: Literal["accuracy", "nll"] = "accuracy"
    batch_size: int = Field(512, gt=0)

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            if not v:
                raise ValueError("labels is empty; leave it out to score every example")
            if len(set(v)) != len(v):
                raise ValueError(f"labels {v} repeat a label")
        return v


def _load(settings: ClassificationSettings, ctx: EvalContext) -> tuple[Any, Any]:
    import numpy as np

    if settings.dataset in DATASETS:
        return DATASETS.get(settings.dataset).load(settings.split)
    path = ctx.resolve(settings.dataset)
    with np.load(path) as data:
        kx, ky = f"X_{settings.split}", f"y_{settings.split}"
        if kx not in data or ky not in data:
            raise EvaluationError(f"{path}: needs arrays {kx!r} and {ky!r}; it has {sorted(data.files)}")
        return np.asarray(data[kx], dtype=np.float32), np.asarray(data[ky], dtype=np.int64)


class ClassificationEvaluator(Evaluator):
    name: ClassVar[str] = "classification"
    Settings: ClassVar[type[EvaluatorSettings]] = ClassificationSettings
    settings: ClassificationSettings

    @classmethod
    def check(cls, settings: EvaluatorSettings, ctx: EvalContext) -> list[tuple[str, str]]:
        assert isinstance(settings, ClassificationSettings)
        if settings.dataset in DATASETS:
            try:
                known = DATASETS.get(settings.dataset).labels
            except ImportError as e:
                return [("dataset", f"dataset {settings.dataset!r} cannot be loaded: {e}")]
            if settings.labels is not None and known is not None:
                bad = [x for x in settings.labels if x not in known]
                if bad:
                    return [("labels", f"{settings.dataset} has labels {_label_range(known)}; {bad} are not among them")]
            return []
        p = ctx.resolve(settings.dataset)
        if Path(settings.dataset).suffix != ".npz":
            return [("dataset", f"unknown dataset {settings.dataset!r}{did_you_mean(settings.dataset, DATASETS.names())}; "
                                "use a registered dataset or a .npz file")]
        if not p.is_file():
            return [("dataset", f"no such file {str(p)!r} (relative paths resolve against the config's folder)")]
        return []

    def __init__(self, settings: EvaluatorSettings, ctx: EvalContext):
        super().__init__(settings, ctx)
        import numpy as np

        s = self.settings
        X, y = _load(s, ctx)
        if s.labels is not None:
            keep = np.isin(y, s.labels)
            if not keep.any():
                raise EvaluationError(f"classification: no {s.split} example of {s.dataset!r} has a label in {s.labels}")
            X, y = X[keep], y[keep]
        self.X, self.y = X, y
        self.key = f"{Path(s.dataset).stem}/{s.split}"

    @property
    def metric(self) -> str:
        return self.settings.metric

    @classmethod
    def subset_issue(cls, settings: EvaluatorSettings) -> tuple[str, str] | None:
        return None

    def example_groups(self) -> list[int] | None:
        return [len(self.y)]

    def evaluate(self, model: Any, tokenizer: Any = None, seed: int = 0, examples: Any = None) -> EvalResult:
        import numpy as np
        import torch

        from search.fidelity import Examples

        idx = np.arange(len(self.y)) if examples is None else np.asarray(examples, dtype=np.int64)
        X, y = self.X[idx], self.y[idx]
        try:
            p = next(iter(model.parameters()), None)
            dtype = p.dtype if p is not None and p.dtype.is_floating_point else torch.float32
            device = model_device(model)
            logits = []
            with torch.no_grad():
                for b in range(0, len(X), self.settings.batch_size):
                    xb = torch.as_tensor(X[b : b + self.settings.batch_size], dtype=dtype, device=device)
                    logits.append(model(xb).float().cpu())
            out = torch.cat(logits)
        except Exception as e:
            raise EvaluationError(f"classification on {self.key}: forward pass failed: {type(e).__name__}: {e}") from e
        if out.ndim != 2 or out.shape[0] != len(y):
            raise EvaluationError(f"classification on {self.key}: expected logits of shape ({len(y)}, classes), got {tuple(out.shape)}")
        if int(y.max()) >= out.shape[1]:
            raise EvaluationError(f"classification on {self.key}: label {int(y.max())} but only {out.shape[1]} logits")
        if not torch.isfinite(out).all():
            raise EvaluationError(f"classification on {self.key}: the model produced NaN/inf logits; the merge is probably broken")
        margin = argmax_margins(out.numpy(), y)
        correct = (margin > 0).astype(np.float64)  # the argmax is right exactly where the margin is positive
        nll_i = torch.nn.functional.cross_entropy(out.double(), torch.as_tensor(y), reduction="none").numpy()
        metrics = {"accuracy": float(correct.mean()), "nll": float(nll_i.mean())}
        require_finite(metrics, f"classification on {self.key}")
        if self.settings.metric == "accuracy":
            ex = Examples.of(idx, correct, margin=margin)
        else:
            ex = Examples.of(idx, nll_i)
        return EvalResult(metrics=metrics, per_sample={self.key: correct}, info={"n": len(y)}, margins={"accuracy": margin},
                          examples=ex)
