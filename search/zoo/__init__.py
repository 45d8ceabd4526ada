"""The model zoo: small, real merging problems built locally and deterministically.

``zoo:<problem>/<model>`` names a model folder built on first use into the cache
(``$MERGESEARCH_CACHE``, default ``~/.cache/mergesearch``). Problems:

* ``tiny-lm``: a tiny Llama base and experts fine-tuned on different synthetic tasks.
* ``digits``: an MLP base and experts on disjoint label subsets of sklearn's digits.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError, ConfigIssue, did_you_mean
from ..registry import import_object

# problem -> (builder "module:function(out_dir: Path) -> None", model names)
PROBLEMS: dict[str, tuple[str, tuple[str, ...]]] = {}


def cache_dir() -> Path:
    return Path(os.environ.get("MERGESEARCH_CACHE", Path.home() / ".cache" / "mergesearch")).expanduser()


def zoo_problem_models() -> dict[str, tuple[str, ...]]:
    return {k: v[1] for k, v in PROBLEMS.items()}


def zoo_path(spec: str, build: bool = True) -> Path:
    """Folder of ``zoo:<problem>/<model>``; builds the whole problem first if asked and missing."""
    body = spec[4:] if spec.startswith("zoo:") else spec
    problem, _, name = body.partition("/")
    if problem not in PROBLEMS:
        raise ConfigError(ConfigIssue("", f"unknown zoo problem {problem!r}{did_you_mean(problem, PROBLEMS)}"))
    builder, names = PROBLEMS[problem]
    if name not in names:
        raise ConfigError(ConfigIssue("", f"zoo problem {problem!r} has no model {name!r}{did_you_mean(name, names)}"))
    root = cache_dir() / "zoo" / problem
    if build and not (root / ".complete").exists():
        import_object(builder)(root)
    return root / name
