"""lm-eval task discovery for the ``lm_eval`` evaluator, without importing lm_eval.

The local task index (``scan_tasks``: task, group and tag names and the metrics each task
reports, read from the YAMLs of the shipped folder and ``include_path``), lm-eval's built-in
task names (``builtin_task_names``, slow: it indexes lm-eval's YAMLs), the public benchmarks
whose test sets are refused (``public_benchmark``), and the shipped task folder as lm-eval needs
it (``materialized_shipped_tasks``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml

SHIPPED_TASKS = Path(__file__).resolve().parent / "tasks"

# Public benchmarks whose test sets must not be searched on (prefix match on the task name).
PUBLIC_BENCHMARKS: tuple[str, ...] = (
    "mmlu", "cmmlu", "kmmlu", "global_mmlu", "mmmlu", "gsm8k", "gsm_plus", "mgsm", "arc_easy", "arc_challenge",
    "arc_", "hellaswag", "truthfulqa", "winogrande", "humaneval", "mbpp", "math", "minerva_math",
    "hendrycks_math", "bbh", "bigbench", "ifeval", "gpqa", "musr", "leaderboard", "piqa", "siqa",
    "social_iqa", "boolq", "openbookqa", "commonsense_qa", "lambada", "triviaqa", "nq_open",
    "naturalquestions", "drop", "squad", "race", "agieval", "aime", "mathqa", "logiqa", "sciq",
    "anli", "xnli", "xcopa", "copa", "super_glue", "glue",
)

# lm-eval's metrics when a task config names none
_DEFAULT_METRICS = {
    "generate_until": ["exact_match"],
    "loglikelihood": ["perplexity", "acc"],
    "multiple_choice": ["acc", "acc_norm"],
    "loglikelihood_rolling": ["word_perplexity", "byte_perplexity", "bits_per_byte"],
}


def public_benchmark(name: str) -> str | None:
    """The benchmark ``name`` belongs to, if it is a well-known public benchmark task."""
    low = name.lower()
    for b in PUBLIC_BENCHMARKS:
        if b.endswith("_"):
            if low.startswith(b):
                return b.rstrip("_")
        elif low == b or (low.startswith(b) and not low[len(b)].isalpha()):
            return b
    return None


# ----------------------------------------------------------------------------- local task index


class _AnyTagLoader(yaml.SafeLoader):
    """Reads lm-eval YAMLs without importing lm_eval: ``!function x.y`` becomes the string."""


_AnyTagLoader.add_multi_constructor("!", lambda loader, suffix, node: f"{suffix} {loader.construct_scalar(node)}")


def _read_yaml(path: Path, depth: int = 0) -> dict[str, Any]:
    cfg = yaml.load(path.read_text(encoding="utf-8"), Loader=_AnyTagLoader)  # noqa: S506 (safe loader subclass)
    if not isinstance(cfg, dict):
        return {}
    inc = cfg.pop("include", None)
    if isinstance(inc, str) and depth < 5:
        p = Path(inc) if Path(inc).is_absolute() else path.parent / inc
        if p.is_file():
            cfg = {**_read_yaml(p, depth + 1), **cfg}
    return cfg


@dataclass
class LocalTask:
    name: str
    kind: Literal["task", "group", "tag"]
    path: Path | None
    cfg: dict[str, Any] = field(default_factory=dict)

    def produced_metrics(self) -> list[str] | None:
        """Result keys (``metric,filter``) this task reports, or None when unknown."""
        if self.kind != "task" or "class" in self.cfg:
            return None
        ml = self.cfg.get("metric_list")
        if ml:
            metrics = [m["metric"] for m in ml if isinstance(m, dict) and isinstance(m.get("metric"), str)]
        else:
            metrics = _DEFAULT_METRICS.get(self.cfg.get("output_type", "generate_until"), [])
        filters = [f["name"] for f in self.cfg.get("filter_list") or [] if isinstance(f, dict) and "name" in f] or ["none"]
        return [f"{m},{f}" for f in filters for m in metrics] or None


def scan_tasks(folders: list[Path]) -> dict[str, LocalTask]:
    """Task, group and tag names defined by the YAMLs under ``folders`` (later folders win)."""
    out: dict[str, LocalTask] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*.yaml")):
            if "__pycache__" in path.parts:
                continue
            try:
                cfg = _read_yaml(path)
            except (yaml.YAMLError, OSError, UnicodeDecodeError):
                continue
            if isinstance(cfg.get("group"), str):
                out[cfg["group"]] = LocalTask(cfg["group"], "group", path, cfg)
            elif isinstance(cfg.get("task"), str):
                out[cfg["task"]] = LocalTask(cfg["task"], "task", path, cfg)
                tags = cfg.get("tag") or []
                for t in [tags] if isinstance(tags, str) else tags:
                    if isinstance(t, str) and t not in out:
                        out[t] = LocalTask(t, "tag", None)
    return out


@lru_cache(maxsize=1)
def builtin_task_names() -> frozenset[str]:
    """Names of lm-eval's built-in tasks, groups and tags (slow: indexes thousands of YAMLs)."""
    from lm_eval.tasks import TaskManager

    return frozenset(TaskManager(include_defaults=True).all_tasks)


def _absolute_data_files(value: Any, folder: Path) -> Any:
    if isinstance(value, str):
        p = Path(value).expanduser()
        return value if p.is_absolute() or "://" in value else str((folder / p).resolve())
    if isinstance(value, list):
        return [_absolute_data_files(v, folder) for v in value]
    if isinstance(value, dict):
        return {k: _absolute_data_files(v, folder) for k, v in value.items()}
    return value


def materialized_shipped_tasks() -> Path:
    """The shipped task folder as lm-eval needs it: a cached copy whose ``data_files`` are absolute.

    Keyed by the shipped folder's location and YAML contents; written atomically (a temporary
    folder renamed into place), so concurrent workers never see a half-written copy.
    """
    from search.zoo import cache_dir

    files = sorted(SHIPPED_TASKS.rglob("*.yaml"))
    h = hashlib.sha256(str(SHIPPED_TASKS).encode())
    for f in files:
        h.update(f.relative_to(SHIPPED_TASKS).as_posix().encode() + b"\0" + f.read_bytes())
    out = cache_dir() / "lm_eval_tasks" / f"shipped-{h.hexdigest()[:16]}"
    if out.is_dir():
        return out
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        for f in files:
            cfg = yaml.safe_load(f.read_text(encoding="utf-8"))
            kw = cfg.get("dataset_kwargs") or {}
            if "data_files" in kw:
                kw["data_files"] = _absolute_data_files(kw["data_files"], f.parent)
            dest = tmp / f.relative_to(SHIPPED_TASKS)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
        try:
            os.rename(tmp, out)
        except OSError:  # another process won the race
            if not out.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
