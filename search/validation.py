"""One validation path for ``search validate``, ``search launch`` and ``search resume``.

:func:`check_run` runs, in order, and stops at the first stage that finds problems:

1. :func:`search.config.check_config`: names resolve, bounds, evaluator settings, model folders.
2. The coefficient space, from the base model's structure (no weights are read), and the
   strategy's :meth:`~search.strategies.base.Strategy.check` with the real
   :meth:`~search.strategies.base.Problem.info` (dimension, budget, experts, objectives).
3. The strategy itself is constructed with that problem, so refusals only its constructor
   knows (``cmaes`` ``x0``, ``map``'s design) are found too.

Each problem is a :class:`~search.errors.ConfigIssue`; :func:`check_run` raises one
:class:`~search.errors.ConfigError` listing them. Launch and resume call it before the store
is opened, so a refused config leaves no store file and no run behind.

Where the model structure comes from:

* ``launch`` / ``resume`` (``run_code=True``): the model as the workers build it
  (:func:`search.models.param_names`: a causal LM on the meta device, or the ``models.factory``
  model); ``zoo:`` models are built first.
* ``validate`` (``run_code=False``) runs no code from the config and builds nothing: a causal
  LM is built from its ``config.json`` on the meta device; a ``models.factory`` or
  ``trust_remote_code`` model is read as the tensor names of its safetensors headers. When
  that is not possible (a ``zoo:`` model not built yet, a factory base without local
  safetensors files) the space checks are skipped and :attr:`CheckedRun.note` says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, ConfigIssue

if TYPE_CHECKING:
    from .config import SearchConfig
    from .space import CoefficientSpace
    from .strategies import Problem, Strategy

log = logging.getLogger("search.validation")


@dataclass
class CheckedRun:
    """A config that passed every check, with what the checks built.

    ``space``, ``problem`` and ``strategy`` (a fresh instance, seeded with ``cfg.seed``) are
    None when the space checks were skipped; ``note`` then says why.
    """

    cfg: SearchConfig
    space: CoefficientSpace | None = None
    problem: Problem | None = None
    strategy: Strategy | None = None
    note: str | None = None


def check_run(cfg: SearchConfig, *, check_files: bool = True, run_code: bool = False, source: str | None = None) -> CheckedRun:
    """Every check of a run's config; raise :class:`ConfigError` listing the problems.

    ``check_files=False`` (``search validate --no-files``) skips the model folders and so the
    space checks. ``run_code=True`` (launch, resume) may build ``zoo:`` models and call
    ``models.factory``; without it nothing from the config is imported or called.
    """
    from .config import check_config

    issues = check_config(cfg, check_files=check_files)
    if issues:
        raise ConfigError(issues, source)
    if not check_files:
        return CheckedRun(cfg, note="the search space and the strategy's checks against it were skipped (--no-files)")
    names, note = _parameter_names(cfg, run_code)
    if names is None:
        return CheckedRun(cfg, note=note)

    from .controller import build_problem
    from .space import CoefficientSpace

    space = CoefficientSpace.build(names, [e.name for e in cfg.models.experts], cfg.merge)
    problem = build_problem(space, cfg)
    strategy, issues = _build_strategy(cfg, problem)
    if issues:
        raise ConfigError(issues, source)
    return CheckedRun(cfg, space, problem, strategy)


# ----------------------------------------------------------------------------- model structure


def _parameter_names(cfg: SearchConfig, run_code: bool) -> tuple[list[str] | None, str | None]:
    """The base's parameter names (see the module docstring), or (None, why not)."""
    from .models import is_zoo, param_names, resolve_source, safetensors_shapes

    m = cfg.models
    field = "models.factory" if m.factory else "models.base"
    try:
        if run_code:
            return param_names(cfg), None
        if is_zoo(m.base) and not _zoo_built(m.base):
            problem = m.base[4:].partition("/")[0]
            return None, (f"the search space and the strategy's checks against it were skipped: {m.base} is not built "
                          f"yet ('search zoo build {problem}' builds it; launch builds it too)")
        path = Path(resolve_source(m.base, cfg.base_dir, build=False))
        if m.factory or m.trust_remote_code:
            shapes = safetensors_shapes(path) if path.is_dir() else None
            if not shapes:
                return None, (f"the search space and the strategy's checks against it were skipped: the base {m.base!r} "
                              "has no local safetensors files to read the model structure from (launch checks them)")
            return list(shapes), None
        return param_names(cfg), None
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to read the model is the user's model or path
        log.debug("reading the model structure failed", exc_info=True)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        what = "the models.factory model" if (m.factory and run_code) else f"the model structure of {m.base!r}"
        raise ConfigError(ConfigIssue(field, f"cannot read {what}: {first}")) from None


def _zoo_built(src: str) -> bool:
    from .zoo import PROBLEMS, is_complete, zoo_path

    root = zoo_path(src, build=False).parent
    return is_complete(root, PROBLEMS[src[4:].partition("/")[0]][0])


# ----------------------------------------------------------------------------- strategy


def _build_strategy(cfg: SearchConfig, problem: Problem) -> tuple[Strategy | None, list[ConfigIssue]]:
    """The strategy's checks with ``problem.info()``, then its constructor; refusals as issues."""
    from .strategies import STRATEGIES

    name = cfg.strategy.name
    cls = STRATEGIES.get(name)
    opts = cls.Options(**cfg.strategy.options)
    msgs = cls.check(opts, problem.info())
    if msgs:  # the messages check_config prints for checks that need no space
        return None, [ConfigIssue("strategy.options", m) for m in msgs]
    try:
        return cls(problem, opts, seed=cfg.seed), []
    except ConfigError as e:
        return None, list(e.issues)
    except ValueError as e:
        return None, [_strategy_issue(name, opts, str(e))]


def _strategy_issue(name: str, opts: Any, msg: str) -> ConfigIssue:
    """``"cmaes: x0 has 3 values ..."`` -> ``strategy.options.x0: x0 has 3 values ...``."""
    body = msg.split("\n", 1)[0].strip()
    body = body[len(name) + 2:] if body.startswith(f"{name}: ") else body
    first = body.split(" ", 1)[0]
    path = f"strategy.options.{first}" if first in type(opts).model_fields else "strategy.options"
    return ConfigIssue(path, body)
