"""The merge-method protocol: what a method declares and implements.

A merge method is an instance of a :class:`MergeMethod` subclass, registered by name in
``search.merge.methods.METHODS`` (or through the ``mergesearch.merge_methods`` entry-point
group). Every formula is per tensor: theta_0 the base tensor, tau_t = theta_t - theta_0 the
task vector of expert t, and the method's per-(group, expert) parameters (``params``: weight,
density, ...) taken from the tensor's coefficient group. A method declares

* ``params``: per-(group, expert) parameters with their defaults (None: must be given when
  not searched), and ``bounds``: the values each may take (``search validate`` refuses
  search bounds or fixed values outside them);
* ``options``: global options (``merge.params``) with defaults, ``choices`` for the string ones;
* ``trim``: the parameters that decide which entries are kept; ``magnitude_trim``: True when
  that decision is a deterministic rule on |tau| (a fixed trim is then applied once at build
  and may be stored sparse, and a searched one reads exact thresholds from magnitudes sorted
  once); ``random``: True when the trim draws masks (seeded per trial);
* ``mergekit``: mergekit's name of the same method, or None ("no mergekit equivalent"), and
  ``task_vectors``: whether mergekit's recipe lists the base model as a source;
* ``summary``: the formula in one line, for the model card and ``docs``.

and implements

* :meth:`plan`: a trial's per-expert scalars for one tensor (a ``TensorPlan``): coefficients,
  magnitude bounds, DARE keys, whether to run the TIES election. No torch: plain floats;
* :attr:`kernel`: None for the shared kernels (``kernels.merge_chunk``: copy + K adds, or the
  election), or a function with ``merge_chunk``'s signature for a method that needs
  different elementwise arithmetic;
* :meth:`fixed_trim_mask` (``magnitude_trim`` methods): the keep-mask of a fixed trim (by
  default read off :meth:`plan`'s magnitude bounds);
* :meth:`rank_range`: the ranks of |tau| a searched trim can ask for (sorted once at build);
* :meth:`needs_l1`: whether :meth:`plan` needs sum |tau_t| per tensor (computed once at build);
* :meth:`kept_fraction`: the share of task-vector entries a fixed trim keeps (the memory
  planner's size of a sparse plan): by default the fixed value of ``kept_param``;
* :meth:`recipe_base_weight`: for a method without task vectors in mergekit's terms, whether
  the recipe lists the base model as a source weighted 1 - sum of the expert weights;
* :meth:`reference`: a slow, obviously-correct numpy version of the formula, which the
  conformance suite (``tests/test_method_conformance.py``) compares the kernels against;
* :meth:`recipe_notes`: why a mergekit recipe of this method may differ from the merge;
* :meth:`card_line`: the method's line in the model card.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from ...errors import ConfigError, ConfigIssue
from ..tensorplan import TensorPlan

if TYPE_CHECKING:
    import numpy as np
    import torch

Kth = Callable[[int, int], float]


class MergeMethod:
    """Base class of merge methods (see the module docstring for the protocol)."""

    name: ClassVar[str] = ""
    params: ClassVar[dict[str, float | None]] = {"weight": 1.0}
    bounds: ClassVar[dict[str, tuple[float, float]]] = {}
    options: ClassVar[dict[str, Any]] = {}
    choices: ClassVar[dict[str, tuple[str, ...]]] = {}
    trim: ClassVar[tuple[str, ...]] = ()
    magnitude_trim: ClassVar[bool] = False
    kept_param: ClassVar[str | None] = None  # the parameter that is the share of entries a trim keeps
    random: ClassVar[bool] = False
    mergekit: ClassVar[str | None] = None
    task_vectors: ClassVar[bool] = True
    summary: ClassVar[str] = ""
    kernel: ClassVar[Callable[..., None] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        k = cls.__dict__.get("kernel")
        if callable(k) and not isinstance(k, staticmethod):  # a plain function: never bind it as a method
            cls.kernel = staticmethod(k)

    def __repr__(self) -> str:
        return f"<merge method {self.name}>"

    # ---------------------------------------------------------------- options and checks
    def resolve_options(self, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """The global options: defaults overridden by ``params`` (per-group parameters such as
        weight or density are ignored here). A string option outside ``choices`` is a ConfigError."""
        opts = dict(self.options)
        for k, v in (params or {}).items():
            if k in self.options:
                opts[k] = v
        for k, allowed in self.choices.items():
            if k in opts and opts[k] not in allowed:
                raise ConfigError(ConfigIssue(f"merge.params.{k}", f"{opts[k]!r} is not one of {', '.join(map(repr, allowed))}"))
        for k, default in self.options.items():
            if k not in self.choices:
                opts[k] = _typed_option(k, default, opts[k])
        return opts

    def check(self, search: dict[str, tuple[float, float]], params: dict[str, Any]) -> list[ConfigIssue]:
        """Problems of ``merge.search`` / ``merge.params`` beyond names and types: values outside ``bounds``."""
        issues: list[ConfigIssue] = []
        for p, (lo, hi) in search.items():
            if p in self.bounds:
                a, b = self.bounds[p]
                if not (a <= lo and hi <= b):
                    issues.append(ConfigIssue(f"merge.search.{p}", f"bounds [{lo}, {hi}] must lie in [{a:g}, {b:g}]"))
        for p, v in params.items():
            if p not in self.params or p in search:
                continue
            try:  # a fixed per-group value: a finite number (YAML gives '1e-3' as a string)
                v = _typed_option(p, 1.0, v)
            except ConfigError as e:
                issues += e.issues
                continue
            if p in self.bounds:
                a, b = self.bounds[p]
                if not a <= v <= b:
                    issues.append(ConfigIssue(f"merge.params.{p}", f"{v} must lie in [{a:g}, {b:g}]"))
        for k, default in self.options.items():
            if k in params and k not in self.choices:
                try:
                    _typed_option(k, default, params[k])
                except ConfigError as e:
                    issues += e.issues
        for k, allowed in self.choices.items():
            if k in params and params[k] not in allowed:
                issues.append(ConfigIssue(f"merge.params.{k}", f"{params[k]!r} is not one of {', '.join(map(repr, allowed))}"))
        return issues

    # ---------------------------------------------------------------- per trial
    def plan(
        self,
        options: dict[str, Any],
        vals: dict[str, Sequence[float]],
        numel: int,
        *,
        name: str = "",
        seed: int = 0,
        kth: Kth | None = None,
        pretrimmed: bool = False,
        l1: Sequence[float] | None = None,
    ) -> TensorPlan:
        """Per-expert scalars of one tensor for one trial.

        ``vals``: per parameter, the values of the tensor's group per expert. ``kth(t, k)``:
        the k-th largest |tau_t| (exact). ``pretrimmed``: the stored task vectors already carry
        the fixed magnitude trim. ``l1``: sum |tau_t| per expert. ``seed``: the trial seed."""
        raise NotImplementedError

    def rank_range(self, n: int, bounds: dict[str, tuple[float, float]]) -> tuple[int, int]:
        """Ranks of |tau| a trial can ask ``kth`` for under searched-parameter bounds."""
        return 1, n

    def needs_l1(self, options: dict[str, Any]) -> bool:
        """True when :meth:`plan` needs ``l1`` (sum |tau_t| per expert) under these options."""
        return False

    def kept_fraction(self, fixed: dict[str, float]) -> float:
        """The share of task-vector entries kept by the trim with these fixed (not searched)
        parameters (the fixed ``kept_param``); 1.0 when nothing is trimmed or the trim is searched."""
        return float(fixed.get(self.kept_param, 1.0)) if self.kept_param else 1.0

    def recipe_base_weight(self, options: dict[str, Any]) -> bool:
        """For a method with ``task_vectors`` False: True when mergekit's recipe must list the
        base model as a source weighted 1 - sum_t w_t (theta_0 + sum_t w_t tau_t written as a
        weighted sum of models)."""
        return False

    def fixed_trim_mask(self, tau: torch.Tensor, vals: dict[str, float]) -> torch.Tensor | None:
        """Keep-mask (bool, flat) of a fixed magnitude trim of one expert's tau; None keeps all.

        For ``magnitude_trim`` methods it is read off :meth:`plan` for this expert alone
        (exact thresholds): a zero coefficient keeps nothing, else lo <= |tau| < hi, so the
        stored, pre-trimmed task vector gives the same tensors as trimming per trial."""
        if not self.magnitude_trim:
            raise ValueError(f"method {self.name!r} has no fixed magnitude trim")
        import torch

        from ..kernels import exact_kth_largest

        a = tau.abs()
        tp = self.plan(self.resolve_options(), {**{p: [v] for p, v in vals.items()}, "weight": [1.0]}, tau.numel(),
                       kth=lambda _t, k: exact_kth_largest(a, k))
        if tp.coeffs[0] == 0.0:
            return torch.zeros(tau.numel(), dtype=torch.bool, device=tau.device)
        lo, hi = tp.lo[0], tp.hi[0]
        m = a >= lo if lo is not None else None
        if hi is not None:
            m = (a < hi) if m is None else m.logical_and_(a < hi)
        return m  # bool: used once at start (masked_fill / sparse encoding)

    def reference(
        self,
        base: np.ndarray,
        taus: Sequence[np.ndarray],
        vals: dict[str, Sequence[float]],
        options: dict[str, Any],
        *,
        name: str = "",
        seed: int = 0,
    ) -> np.ndarray:
        """The merged tensor (flat, float64) by a slow numpy version of the formula. ``taus``
        are float32 as the engine stores them; ``options`` are resolved; ``seed``: the trial seed."""
        raise NotImplementedError

    # ---------------------------------------------------------------- export
    def mergekit_parameters(self, options: dict[str, Any]) -> dict[str, Any]:
        """The recipe's global ``parameters`` (mergekit's names) for these options."""
        out: dict[str, Any] = {}
        if "lambda" in options:
            out["lambda"] = options["lambda"]
        if "normalize" in options:
            out["normalize"] = bool(options["normalize"])
        return out

    def recipe_notes(self, ctx: RecipeContext) -> list[tuple[str, bool]]:
        """(note, makes the recipe inexact) for the model card: where mergekit's merge differs."""
        return []

    def card_line(self, options: dict[str, Any]) -> str:
        """The model card's line about the method."""
        return f"`{self.name}`: {self.summary}."


def _typed_option(key: str, default: Any, value: Any) -> Any:
    """``value`` of option ``key`` in its default's type: a boolean stays a boolean, a number
    becomes a float where the default is one (a numeric string too: YAML reads ``1e-3`` as a
    string); anything else is a ConfigError naming ``merge.params.<key>``."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(ConfigIssue(f"merge.params.{key}", f"{value!r} is not true or false; write true or false"))
        return value
    if isinstance(default, (int, float)):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(ConfigIssue(f"merge.params.{key}", f"{value!r} is not a finite number; write e.g. {default!r}"))
        if isinstance(default, float):
            return float(value)
        if not float(value).is_integer():
            raise ConfigError(ConfigIssue(f"merge.params.{key}", f"{value!r} is not a whole number; write e.g. {default!r}"))
        return int(value)
    return value


class RecipeContext:
    """What :meth:`MergeMethod.recipe_notes` may look at: the trial's per-group values
    (``values[param]``: groups x experts), tensor sizes and groups, expert names, options."""

    def __init__(self, values: dict[str, Any], numels: dict[str, int], tensor_group: dict[str, int],
                 groups: Sequence[str], experts: Sequence[str], options: dict[str, Any]):
        self.values = values
        self.numels = numels
        self.tensor_group = tensor_group
        self.groups = list(groups)
        self.experts = list(experts)
        self.options = options


ROUNDING_NOTE = (
    "mergekit sums the weighted task vectors and then scales and adds them to the base; this merge adds "
    "each scaled task vector in turn: results agree up to float rounding (last bits)"
)
MAGNITUDE_TIE_NOTE = (
    "magnitude trims keep every entry tied with the cut-off magnitude, mergekit exactly k of them; they differ "
    "only where |task vector| values tie at the cut (zeros, which add nothing, aside)"
)
