"""One validation path for ``search validate``, ``search launch`` and ``search resume``.

:func:`check_run` runs, in order, and stops at the first stage that finds problems:

1. :func:`check_config`: names resolve, bounds, evaluator settings, model folders.
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
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import SearchConfig, load_config
from .errors import ConfigError, ConfigIssue, did_you_mean

if TYPE_CHECKING:
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


# ----------------------------------------------------------------------------- semantic checks


def check_config(cfg: SearchConfig, *, check_files: bool = True) -> list[ConfigIssue]:
    """Checks beyond the schema. Returns every issue found (empty list = valid)."""
    from .merge.methods import METHODS
    from .strategies import STRATEGIES

    issues: list[ConfigIssue] = []

    # strategy
    if cfg.strategy.name not in STRATEGIES:
        issues.append(
            ConfigIssue("strategy.name", f"unknown strategy {cfg.strategy.name!r}{did_you_mean(cfg.strategy.name, STRATEGIES.names())}")
        )
    else:
        from .strategies import validate_options

        issues += validate_options(cfg.strategy.name, cfg.strategy.options, cfg)

    # merge method and its parameters
    m = cfg.merge
    info = None
    if m.method not in METHODS:
        issues.append(ConfigIssue("merge.method", f"unknown merge method {m.method!r}{did_you_mean(m.method, METHODS.names())}"))
    else:
        try:
            info = METHODS.get(m.method)
        except ImportError as e:  # a plugin's module failed to import: report, do not crash
            issues.append(ConfigIssue("merge.method", f"merge method {m.method!r} cannot be loaded: {e}"))
    if info is not None:
        for pname in m.search:
            if pname not in info.params:
                issues.append(
                    ConfigIssue(
                        f"merge.search.{pname}",
                        f"method {m.method!r} has no {pname!r}; its searchable parameters are: {', '.join(info.params)}",
                    )
                )
        for key, val in m.params.items():
            if key in m.search:
                issues.append(ConfigIssue(f"merge.params.{key}", f"{key!r} is both fixed here and searched in merge.search; keep one"))
            elif key in info.params:
                if not isinstance(val, (int, float)) or isinstance(val, bool):
                    issues.append(ConfigIssue(f"merge.params.{key}", f"expected a number, got {val!r}"))
            elif key not in info.options:
                known = list(info.params) + list(info.options)
                issues.append(
                    ConfigIssue(f"merge.params.{key}", f"method {m.method!r} has no parameter {key!r}{did_you_mean(key, known)}")
                )
        issues += info.check({k: v for k, v in m.search.items() if k in info.params},
                             {k: v for k, v in m.params.items() if k not in m.search})
        if not m.search:
            issues.append(ConfigIssue("merge.search", "nothing is searched; give at least one parameter with bounds, e.g. weight: [0, 1]"))

    # objectives and their evaluators
    from evaluators import EVALUATORS, validate_settings

    for i, o in enumerate(cfg.objectives):
        if o.evaluator not in EVALUATORS:
            issues.append(
                ConfigIssue(
                    f"objectives[{i}].evaluator",
                    f"unknown evaluator {o.evaluator!r}{did_you_mean(o.evaluator, EVALUATORS.names())}",
                )
            )
            continue
        found = validate_settings(o.evaluator, o.settings, f"objectives[{i}].settings", cfg)
        issues += found
        if any(x.path == f"objectives[{i}].evaluator" for x in found):  # the evaluator cannot be loaded: said once
            continue
        if cfg.fidelity is not None:
            issues += subset_issues(o.evaluator, o.settings, i)
        if o.heldout is not None:
            issues += validate_settings(o.evaluator, {**o.settings, **o.heldout}, f"objectives[{i}].heldout", cfg)

    from evaluators.vllm_engine import check_engine

    issues += check_engine(cfg)  # lm_eval objectives with engine: vllm

    # workers
    w = cfg.workers
    if w.backend == "local" and w.gpus_per_worker > 1:
        issues.append(ConfigIssue("workers.gpus_per_worker", "the local backend gives each worker at most one GPU; use backend: ray"))
    if w.address and w.backend != "ray":
        issues.append(ConfigIssue("workers.address", "an address only applies to backend: ray"))
    if w.device not in ("auto", "cpu") and not re.fullmatch(r"cuda(:\d+)?|mps", w.device):
        issues.append(ConfigIssue("workers.device", f"{w.device!r} is not 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"))

    if check_files:
        from .models import check_model_sources

        issues += check_model_sources(cfg.models, cfg.base_dir)
        if m.schedule_knots and not issues:
            from .space import schedule_issues

            issues += schedule_issues(cfg)
    return issues


def subset_issues(evaluator: str, settings: dict[str, Any], i: int) -> list[ConfigIssue]:
    """Why objective ``i`` cannot be scored on example subsets (``fidelity``), as issues."""
    from pydantic import ValidationError

    from evaluators import EVALUATORS

    try:
        cls = EVALUATORS.get(evaluator)
        found = cls.subset_issue(cls.Settings(**settings))
    except (ImportError, ValidationError):  # reported by the settings checks
        return []
    if found is None:
        return []
    field, msg = found
    return [ConfigIssue(f"objectives[{i}].settings.{field}" if field else f"objectives[{i}].evaluator", msg)]


def validate_file(path: str | os.PathLike[str], *, check_files: bool = True) -> SearchConfig:
    """Load + check; raise :class:`ConfigError` listing every issue."""
    cfg = load_config(path)
    issues = check_config(cfg, check_files=check_files)
    if issues:
        raise ConfigError(issues, str(path))
    return cfg
