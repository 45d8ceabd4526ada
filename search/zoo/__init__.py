"""The model zoo: small, real merging problems built locally and deterministically.

``zoo:<problem>/<model>`` names a model folder built on first use into the cache
(``$MERGESEARCH_CACHE``, default ``~/.cache/mergesearch``). Problems:

* ``tiny-lm``: a tiny Llama base and experts fine-tuned on different synthetic tasks.
* ``tiny-lm-h64``: the same with head_dim 64 (what vLLM's CPU attention needs).
* ``digits``: an MLP base and experts on disjoint label subsets of sklearn's digits.
* ``digits-deep``: the same on a 14-layer residual MLP (12 hidden blocks): 84 TIES coordinates.
* ``tiny-lm-deep``: the tiny-lm problem on an 8-layer Llama: 156 TIES coordinates with
  ``split: [self_attn, mlp]``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ConfigIssue, did_you_mean
from ..registry import import_object

# problem -> (builder "module:function(out_dir: Path) -> None", model names)
PROBLEMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "tiny-lm": ("search.zoo.tiny_lm:build", ("base", "add", "reverse", "sort")),
    "tiny-lm-h64": ("search.zoo.tiny_lm:build_h64", ("base", "add", "reverse", "sort")),
    "digits": ("search.zoo.digits:build", ("base", "low", "high", "a", "b", "c")),
    "digits-deep": ("search.zoo.digits_deep:build", ("base", "a", "b", "c")),
    "tiny-lm-deep": ("search.zoo.tiny_lm_deep:build", ("base", "add", "reverse", "sort")),
}


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
    if build and not is_complete(root, builder):
        import_object(builder)(root)
    return root / name


def _recipe_version(builder: str) -> str | None:
    """``VERSION`` of a builder's module (bumped when what it builds changes), if it has one."""
    import importlib

    try:
        return getattr(importlib.import_module(builder.split(":", 1)[0]), "VERSION", None)
    except ImportError:
        return None


def is_complete(root: Path, builder: str | None = None) -> bool:
    """A finished build of the current recipe is in ``root`` (``.complete`` written last)."""
    marker = root / ".complete"
    if not marker.exists():
        return False
    if builder is None:
        return True
    want = _recipe_version(builder)
    if want is None:
        return True
    try:
        return json.loads(marker.read_text()).get("version") == want
    except (OSError, ValueError, AttributeError):
        return False


def atomic_build(root: Path, build_into: Callable[[Path], Any], version: str | None = None) -> None:
    """Build a problem into ``root`` at most once, safely against concurrent builders.

    Under a file lock beside ``root``: if ``root/.complete`` exists (for this ``version`` of
    the recipe), return; otherwise call ``build_into(tmp)`` on a fresh temporary folder beside
    ``root``, write ``tmp/.complete`` (version, build time and whatever ``build_into``
    returned), and rename ``tmp`` to ``root`` (an incomplete or outdated ``root`` is removed
    first). A failed build leaves no partial ``root``.
    """
    from filelock import FileLock

    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root.parent / f".{root.name}.lock")):
        marker = root / ".complete"
        if marker.exists():
            try:
                if version is None or json.loads(marker.read_text()).get("version") == version:
                    return
            except (OSError, ValueError, AttributeError):
                pass
        tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            t0 = time.perf_counter()
            info = build_into(tmp)
            meta = {"version": version, "built_at": time.time(), "build_seconds": round(time.perf_counter() - t0, 2), "info": info}
            (tmp / ".complete").write_text(json.dumps(meta, indent=1, default=str) + "\n")
            if root.exists():
                stale = root.parent / f".{root.name}.stale-{uuid.uuid4().hex[:8]}"
                os.rename(root, stale)
                shutil.rmtree(stale, ignore_errors=True)
            os.rename(tmp, root)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
