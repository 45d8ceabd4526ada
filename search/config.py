"""The search config: a frozen pydantic schema.

``load_config(path)`` parses YAML and validates the schema, reporting every problem as one
:class:`~search.errors.ConfigIssue` naming the field path and the fix. The checks that need
registries or the file system (names resolve, bounds make sense, model folders exist and agree
in shapes) are :func:`search.validation.check_config`; this module imports nothing else of the
project but its errors.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError, ConfigIssue, did_you_mean


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ExpertConfig(_Frozen):
    """One fine-tuned expert of the base model."""

    name: str = Field(description="short name used in coordinate names, e.g. 'math'")
    path: str = Field(description="local folder, Hugging Face hub id, or 'zoo:<problem>/<model>'")

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", v):
            raise ValueError(f"expert name {v!r} may use only letters, digits, '_', '.', '-'")
        return v


class ModelsConfig(_Frozen):
    base: str = Field(description="base model: local folder, hub id, or 'zoo:<problem>/<model>'")
    experts: list[ExpertConfig] = Field(min_length=1)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    tokenizer: str | None = Field(None, description="tokenizer folder or hub id (default: the base's)")
    trust_remote_code: bool = False
    factory: str | None = Field(
        None, description="'module:function(path, dtype) -> torch.nn.Module' for models that are not causal LMs"
    )

    @model_validator(mode="after")
    def _unique_names(self) -> ModelsConfig:
        seen: set[str] = set()
        for e in self.experts:
            if e.name in seen:
                raise ValueError(f"expert name {e.name!r} appears twice; give each expert its own name")
            seen.add(e.name)
        return self


Granularity = str  # "global" | "layer" | "block:K" | "schedule:K"
_GRAN_RE = re.compile(r"^(global|layer|block:([1-9][0-9]*)|schedule:([1-9][0-9]*))$")


class MergeConfig(_Frozen):
    method: str = "task_arithmetic"
    granularity: Granularity = Field(
        "layer", description="'global', 'layer', 'block:K' (K layers per group) or 'schedule:K' (K knots over the layers)"
    )
    split: list[str] = Field(
        default_factory=list,
        description="module-name filters that split each layer group, e.g. [self_attn, mlp]; the rest form a 'rest' group",
    )
    params: dict[str, Any] = Field(default_factory=dict, description="fixed method parameters and options")
    search: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {"weight": (0.0, 1.0)},
        description="searched per-(group, expert) parameters with [low, high] bounds",
    )
    plan: Literal["auto", "resident", "streamed", "sparse"] = Field(
        "auto", description="worker memory plan for task vectors (see docs)"
    )
    memory_budget_gb: float | None = Field(None, gt=0, description="device memory a worker may use for merging")
    accumulate_fp32: bool = Field(False, description="accumulate the weighted sum in float32 on low-precision devices")

    @field_validator("granularity")
    @classmethod
    def _gran(cls, v: str) -> str:
        if not _GRAN_RE.match(v):
            raise ValueError(
                f"granularity {v!r} is not one of 'global', 'layer', 'block:K', 'schedule:K' (K a positive integer)"
            )
        return v

    @field_validator("search")
    @classmethod
    def _bounds(cls, v: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for name, (lo, hi) in v.items():
            if not lo < hi:
                raise ValueError(f"{name}: bounds [{lo}, {hi}] need low < high; write [{min(lo, hi)}, {max(lo, hi)}]")
        return v

    @property
    def block_size(self) -> int | None:
        m = _GRAN_RE.match(self.granularity)
        return int(m.group(2)) if m and m.group(2) else None

    @property
    def schedule_knots(self) -> int | None:
        """K of ``schedule:K`` (knots per (expert, param) over the decoder layers), else None."""
        m = _GRAN_RE.match(self.granularity)
        return int(m.group(3)) if m and m.group(3) else None


class ObjectiveConfig(_Frozen):
    name: str
    evaluator: str
    direction: Literal["maximize", "minimize"]
    settings: dict[str, Any] = Field(default_factory=dict, description="the evaluator's settings")
    heldout: dict[str, Any] | None = Field(
        None, description="settings overrides for the held-out evaluation of front members"
    )
    weight: float = Field(1.0, description="weight in scalarising strategies (cmaes)")
    ref_point: float | None = Field(
        None, description="hypervolume reference value (worst value worth counting); default: 0 for maximised, worst x 1.1 for minimised"
    )

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", v):
            raise ValueError(f"objective name {v!r} may use only letters, digits, '_', '.', '-'")
        return v


class StrategyConfig(_Frozen):
    name: str = "nsga2"
    budget: int = Field(100, gt=0, description="number of evaluated trials (failed ones count)")
    max_time: float | None = Field(None, gt=0, description="wall-clock limit in seconds")
    options: dict[str, Any] = Field(default_factory=dict)


def _increasing(v: list[Any] | None, what: str, kind: str, example: str) -> list[Any] | None:
    """``v`` unless it is empty or not strictly increasing (then a ValueError naming ``what``)."""
    if v is None:
        return v
    if not v:
        raise ValueError(f"{what} is empty; give {kind} {example}")
    if any(b <= a for a, b in zip(v, v[1:], strict=False)):
        raise ValueError(f"{what} {v} must increase strictly, e.g. {example}")
    return v


class FidelityConfig(_Frozen):
    """Multi-fidelity evaluation (docs/fidelity.md): candidates are scored on nested, seeded
    subsets of each objective's examples first and promoted to the next level only while
    they could still reach the full-fidelity front."""

    levels: list[float] | None = Field(
        None, description="increasing fractions of each objective's examples, e.g. [0.1, 0.3, 1.0] (1.0 is added when missing)"
    )
    counts: list[int] | None = Field(
        None, description="increasing numbers of examples per objective instead of fractions, e.g. [30, 100] (then all)"
    )
    z: float = Field(2.0, ge=0, description="promote while the value z standard errors better than measured could join the front")
    epsilon: float = Field(
        0.0, ge=0, lt=1, description="a candidate that could beat a full-fidelity trial by at most this fraction of each "
        "objective's measured range counts as no better (epsilon-dominance); 0: any improvement counts"
    )
    rule: Literal["paired", "independent"] = Field(
        "paired", description="compare per-example results with each full-fidelity trial on the same examples (paired), or "
        "the candidate's own confidence bound with the front (independent)"
    )

    @field_validator("levels")
    @classmethod
    def _levels(cls, v: list[float] | None) -> list[float] | None:
        for x in v or []:
            if x > 1.0:
                raise ValueError(f"level {x} is above 1: levels are fractions of each objective's examples "
                                 "(use fidelity.counts for numbers of examples)")
            if x <= 0.0:
                raise ValueError(f"level {x} must be above 0")
        return _increasing(v, "levels", "fractions such as", "[0.1, 0.3, 1.0]")

    @field_validator("counts")
    @classmethod
    def _counts(cls, v: list[int] | None) -> list[int] | None:
        if v and any(x < 1 for x in v):
            raise ValueError(f"counts {v} must be at least 1")
        return _increasing(v, "counts", "numbers of examples such as", "[30, 100]")

    @model_validator(mode="after")
    def _one(self) -> FidelityConfig:
        if (self.levels is None) == (self.counts is None):
            raise ValueError("give exactly one of levels (fractions, e.g. [0.1, 0.3, 1.0]) or counts (e.g. [30, 100])")
        return self

    @property
    def by_count(self) -> bool:
        return self.counts is not None

    @property
    def schedule(self) -> list[float]:
        """Every level, the full set last (``1.0``; ``inf`` with counts)."""
        if self.counts is not None:
            return [float(c) for c in self.counts] + [math.inf]
        lv = list(self.levels or [])
        return lv if lv and lv[-1] == 1.0 else [*lv, 1.0]


class WorkersConfig(_Frozen):
    backend: Literal["local", "ray"] = "local"
    count: int = Field(1, ge=1)
    gpus_per_worker: float = Field(0, ge=0)
    cpus_per_worker: float = Field(1, gt=0)
    resources: dict[str, float] = Field(default_factory=dict, description="custom Ray resources per worker")
    address: str | None = Field(None, description="Ray address ('auto', 'ray://host:10001'); none starts a local Ray")
    device: str = Field("auto", description="'auto' (cuda if the worker has a GPU), 'cpu', 'cuda', 'cuda:1'")
    trial_timeout: float | None = Field(None, gt=0, description="seconds before a trial is failed")
    max_retries: int = Field(2, ge=0, description="retries of a trial whose worker died")
    threads: int = Field(1, ge=1, description="torch threads per worker")
    runtime_env: dict[str, Any] | None = Field(
        None, description="Ray runtime_env for the workers (e.g. working_dir with local task folders)"
    )


class SearchConfig(_Frozen):
    name: str = Field(description="run name; the store keeps runs apart by it")
    seed: int = 0
    models: ModelsConfig
    merge: MergeConfig = Field(default_factory=MergeConfig)
    objectives: list[ObjectiveConfig] = Field(min_length=1)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    workers: WorkersConfig = Field(default_factory=WorkersConfig)
    fidelity: FidelityConfig | None = Field(None, description="score candidates on nested example subsets first (docs/fidelity.md)")
    store: str | None = Field(None, description="SQLite path or SQLAlchemy URL (default runs/<name>.db)")
    allow_public_test_sets: bool = Field(
        False, description="allow objectives on well-known public benchmark test sets (contamination risk)"
    )
    _base_dir: str | None = PrivateAttr(None)

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", v):
            raise ValueError(f"run name {v!r} may use only letters, digits, '_', '.', '-'")
        return v

    @model_validator(mode="after")
    def _unique_objectives(self) -> SearchConfig:
        seen: set[str] = set()
        for o in self.objectives:
            if o.name in seen:
                raise ValueError(f"objective name {o.name!r} appears twice; objective names must be unique")
            seen.add(o.name)
        return self

    @property
    def base_dir(self) -> Path:
        """Folder that relative paths in the config resolve against (the config file's folder)."""
        return Path(self._base_dir) if self._base_dir else Path.cwd()

    def with_base_dir(self, base_dir: str | os.PathLike[str] | None) -> SearchConfig:
        self._base_dir = str(Path(base_dir).resolve()) if base_dir else None
        return self

    def resolve(self, p: str | os.PathLike[str]) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else self.base_dir / q

    @property
    def store_url(self) -> str:
        return self.store or f"runs/{self.name}.db"

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# ----------------------------------------------------------------------------- loading


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _fields_of(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Known field names of the (nested) model at ``loc`` (for 'unknown field' hints)."""
    cur: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(cur, type) and issubclass(cur, BaseModel)) or part not in cur.model_fields:
            return []
        ann = cur.model_fields[part].annotation
        args = getattr(ann, "__args__", None)
        cur = args[0] if args and not (isinstance(ann, type) and issubclass(ann, BaseModel)) else ann
    if isinstance(cur, type) and issubclass(cur, BaseModel):
        return list(cur.model_fields)
    return []


def pydantic_issues(err: ValidationError, model: type[BaseModel], prefix: str = "") -> list[ConfigIssue]:
    """Turn a pydantic ValidationError into one-line issues with field paths and fixes."""
    issues = []
    for e in err.errors():
        loc = tuple(e["loc"])
        path = _loc_to_path(loc)
        if prefix:
            path = f"{prefix}.{path}" if path else prefix
        kind = e["type"]
        if kind == "extra_forbidden":
            known = _fields_of(model, loc[:-1])
            msg = f"unknown field {loc[-1]!r}{did_you_mean(str(loc[-1]), known)}"
        elif kind == "missing":
            msg = "required field is missing; add it"
        elif kind == "literal_error":
            msg = f"{e['input']!r} is not allowed; use {e['ctx']['expected']}"
        elif kind == "value_error":
            msg = str(e["ctx"]["error"])
        else:
            msg = f"{e['msg']} (got {e['input']!r})" if not isinstance(e.get("input"), dict) else e["msg"]
        issues.append(ConfigIssue(path, msg))
    return issues


def parse_config(data: Any, source: str = "<config>") -> SearchConfig:
    """Validate a parsed YAML mapping against the schema (no file-system checks)."""
    if not isinstance(data, dict):
        raise ConfigError(ConfigIssue("", f"{source}: the config must be a YAML mapping of sections"), source)
    try:
        return SearchConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(pydantic_issues(e, SearchConfig), source) from None


def load_config(path: str | os.PathLike[str]) -> SearchConfig:
    """Read and schema-validate a YAML config; the run name defaults to the file's stem."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(ConfigIssue("", f"{p}: no such config file"), str(p))
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(ConfigIssue("", f"{p}:{where} is not valid YAML: {getattr(e, 'problem', e)}"), str(p)) from None
    if isinstance(data, dict) and "name" not in data:
        data = {"name": p.stem, **data}
    return parse_config(data, str(p)).with_base_dir(p.parent)
