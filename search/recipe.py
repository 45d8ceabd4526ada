"""A mergekit recipe (``mergekit_config.yml``) that reproduces one trial's merge.

Shape of the recipe (mergekit >= 0.1, ``mergekit-yaml recipe.yml OUT``):

* one output slice per layer range of the coefficient space (``layers.04-07`` ->
  ``layer_range: [4, 8]``; ``global`` -> one slice over all layers);
* each slice lists the base model (for task-vector methods) and every expert with its
  per-expert parameters (``weight``, ``density``, ``gamma``) as plain numbers where the
  whole slice shares one value, else as per-tensor ``filter`` lists;
* the ``embed`` / ``head`` groups are written explicitly as ``filter`` entries naming
  their tensors in the first / last slice. mergekit merges embeddings and the final
  norm / lm_head with the parameters of the first / last slice (and ``t = 0`` for gradient
  lists), so without these entries they would silently take a layer's values;
* a ``schedule:K`` space is one slice over all layers whose layer parameters are mergekit
  gradient lists of the K knots (mergekit interpolates them at ``t = i / (L - 1)``, the
  rule the space uses); ``embed`` / ``head`` are scalar ``filter`` entries as above;
* ``merge.split`` groups (``self_attn``, ``mlp``, rest) become ``filter`` entries too:
  mergekit's filters match a substring of the tensor name and the first match wins, the
  same rule the coefficient space uses;
* the global options (``lambda``, ``normalize``, ``rescale``) go under ``parameters``.

:func:`build_recipe` checks its own output: it resolves every tensor's parameters the
way mergekit does and compares them with the trial's coefficients; any disagreement (and
every other reason the recipe cannot be exact, e.g. DARE's random masks) is returned as a
note for the model card.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import SearchConfig
from .merge.methods import RecipeContext, method_info
from .space import CoefficientSpace


@dataclass
class Recipe:
    """A mergekit config (None where the method has no mergekit equivalent) and why it may differ."""

    config: dict[str, Any] | None
    exact: bool
    notes: list[str] = field(default_factory=list)

    def to_yaml(self) -> str:
        import yaml

        if self.config is None:
            return ""
        return yaml.safe_dump(self.config, sort_keys=False, default_flow_style=None, width=100)


def _num(v: float) -> float | int:
    """A YAML-friendly number that reads back as the same float64 (repr round-trips)."""
    f = float(v)
    return int(f) if f.is_integer() and abs(f) < 2**53 else f


def _collapse(conds: list[dict[str, Any]]) -> Any:
    """A filter list whose entries all share one value (number or gradient list) becomes that value."""
    values = {tuple(v) if isinstance(v, list) else v for v in (c["value"] for c in conds)}
    if len(values) == 1:
        return conds[0]["value"]
    return conds


def _gradient(values: list[float], t: float) -> float:
    """mergekit's interpolation of a gradient list at ``t`` in [0, 1], in its float operations."""
    scaled = t * (len(values) - 1)
    i0 = int(scaled)
    i1 = min(len(values) - 1, i0 + 1)
    frac = scaled - i0
    return (1 - frac) * float(values[i0]) + frac * float(values[i1])


def _resolve(tensor: str, setting: Any, t: float = 0.0) -> Any:
    """mergekit's rule for a per-tensor setting: a scalar, a gradient list (interpolated at the
    layer's ``t``), or the first entry whose filter is absent, '*', or a substring of the
    tensor name."""
    if isinstance(setting, list) and setting and not isinstance(setting[0], dict):
        return _gradient(setting, t)
    if not isinstance(setting, list):
        return setting
    for c in setting:
        f = c.get("filter")
        if f is None or f == "*" or f in tensor:
            return _resolve(tensor, c["value"], t)
    return None


def _layer_ranges(space: CoefficientSpace) -> list[tuple[int, int]]:
    """Contiguous [lo, hi) decoder-layer ranges, one per output slice, in model order."""
    seen: list[tuple[int, int]] = []
    for g, layers in zip(space.groups, space.group_layers, strict=True):
        if g in ("embed", "head") or not layers:
            continue
        r = (min(layers), max(layers) + 1)
        if r not in seen:
            seen.append(r)
    return sorted(seen)


def build_recipe(
    cfg: SearchConfig,
    space: CoefficientSpace,
    x: np.ndarray,
    numels: dict[str, int],
    base_ref: str,
    expert_refs: Sequence[str],
    *,
    architecture_known: bool = True,
) -> Recipe:
    """The mergekit recipe for coefficient vector ``x``.

    ``numels``: the base model's parameters (name -> number of entries) in model order;
    ``base_ref`` / ``expert_refs``: what mergekit should load (absolute folders or hub ids).
    ``architecture_known``: False for factory (non-Hugging Face) models, which mergekit
    cannot read; no recipe is written for them.
    """
    info = method_info(cfg.merge.method)
    notes: list[str] = []
    if info.mergekit is None:
        return Recipe(None, False, [f"merge method {info.name!r} has no mergekit equivalent; no recipe was written"])
    if not architecture_known:
        return Recipe(
            None,
            False,
            [f"models built by the factory {cfg.models.factory!r} are not Hugging Face architectures mergekit can read; no recipe was written"],
        )
    ranges = [(0, space.n_layers)] if space.knots and space.n_layers else _layer_ranges(space)
    if not ranges:
        return Recipe(None, False, ["the model has no decoder layers mergekit could slice; no recipe was written"])

    values = space.values(np.asarray(x, dtype=np.float64))  # param -> (groups, experts)
    gidx = {g: i for i, g in enumerate(space.groups)}
    experts = list(space.experts)
    params = list(info.params)
    opts = info.resolve_options(cfg.merge.params)
    task_vectors = info.task_vectors

    # tensors per slice (embed tensors go to the first slice, head tensors to the last)
    def slice_of(name: str) -> int:
        g = space.groups[space.tensor_group[name]]
        if g == "embed":
            return 0
        if g == "head":
            return len(ranges) - 1
        layers = space.group_layers[space.tensor_group[name]]
        lo = min(layers)
        return next(i for i, (a, b) in enumerate(ranges) if a <= lo < b)

    per_slice: list[list[str]] = [[] for _ in ranges]
    for n in numels:
        per_slice[slice_of(n)].append(n)

    def group_value(g: str, e: int, p: str) -> float:
        return float(values[p][gidx[g], e])

    if space.knots:
        cube = np.asarray(x, dtype=np.float64).reshape(len(space.cgroups), len(experts), len(space.searched))
        cidx = {c: i for i, c in enumerate(space.cgroups)}

    def knots_of(part: str, e: int, p: str) -> Any:
        """The gradient list of split part ``part`` ('' without split) for expert ``e``: the
        knots of a searched parameter (one number for K=1), the fixed value otherwise."""
        if p not in space.searched:
            return _num(space.fixed[p])
        width = len(str(space.knots - 1))
        ks = [_num(cube[cidx[f"knot.{k:0{width}d}" + (f".{part}" if part else "")], e, space.searched.index(p)])
              for k in range(space.knots)]
        return ks[0] if len(ks) == 1 else ks

    def schedule_setting(e: int, p: str) -> Any:
        """Per-tensor setting of a schedule: embed / head entries, then one gradient list per split part."""
        conds: list[dict[str, Any]] = []
        for n in per_slice[0]:
            g = space.groups[space.tensor_group[n]]
            if g in ("embed", "head"):
                conds.append({"filter": n, "value": _num(group_value(g, e, p))})
        parts = {c.split(".", 2)[2] if c.count(".") >= 2 else "" for c in space.cgroups if c.startswith("knot.")}
        for sub in cfg.merge.split:
            if sub in parts:
                conds.append({"filter": sub, "value": knots_of(sub, e, p)})
        if not cfg.merge.split or "rest" in parts:
            conds.append({"value": knots_of("rest" if cfg.merge.split else "", e, p)})
        return _collapse(conds)

    def setting_for(si: int, e: int, p: str, value_of=group_value) -> Any:
        """Per-tensor setting of parameter ``p`` of expert ``e`` in slice ``si``."""
        names = per_slice[si]
        groups_here = []
        for n in names:
            g = space.groups[space.tensor_group[n]]
            if g not in groups_here:
                groups_here.append(g)
        conds: list[dict[str, Any]] = []
        # explicit per-tensor entries for the embed/head groups
        for n in names:
            g = space.groups[space.tensor_group[n]]
            if g in ("embed", "head"):
                conds.append({"filter": n, "value": _num(value_of(g, e, p))})
        layer_groups = [g for g in groups_here if g not in ("embed", "head")]
        default_group = layer_groups[0] if layer_groups else None
        if cfg.merge.split:
            # same order as the space's rule: the first split filter found in the name wins
            by_sub = {g.rsplit(".", 1)[-1]: g for g in layer_groups}
            for sub in cfg.merge.split:
                if sub in by_sub:
                    conds.append({"filter": sub, "value": _num(value_of(by_sub[sub], e, p))})
            default_group = by_sub.get("rest", layer_groups[-1] if layer_groups else None)
        if default_group is not None:
            conds.append({"value": _num(value_of(default_group, e, p))})
        return _collapse(conds)

    def schedule_base_weight() -> Any:
        """linear without normalisation, as a schedule: the base's weight 1 - sum_e w_e per knot
        (interpolating these equals 1 - sum of the interpolated weights up to rounding)."""
        wj = space.searched.index("weight") if "weight" in space.searched else None

        def one(c: str) -> float:
            w = cube[cidx[c], :, wj] if wj is not None else np.full(len(experts), space.fixed["weight"])
            return 1.0 - float(np.sum(w))

        conds: list[dict[str, Any]] = []
        for n in per_slice[0]:
            g = space.groups[space.tensor_group[n]]
            if g in ("embed", "head"):
                conds.append({"filter": n, "value": _num(one(g))})
        knots = [c for c in space.cgroups if c.startswith("knot.")]
        by_part: dict[str, list[Any]] = {}
        for c in knots:
            by_part.setdefault(c.split(".", 2)[2] if c.count(".") >= 2 else "", []).append(_num(one(c)))
        for sub in cfg.merge.split:
            if sub in by_part:
                conds.append({"filter": sub, "value": by_part[sub]})
        if not cfg.merge.split or "rest" in by_part:
            conds.append({"value": by_part["rest" if cfg.merge.split else ""]})
        return _collapse(conds)

    # the slices
    slices: list[dict[str, Any]] = []
    for si, (lo, hi) in enumerate(ranges):
        sources: list[dict[str, Any]] = []
        if task_vectors:
            sources.append({"model": base_ref, "layer_range": [lo, hi]})
        elif info.recipe_base_weight(opts):
            # theta_0 + sum_e w_e tau_e = (1 - sum_e w_e) theta_0 + sum_e w_e theta_e
            def base_w(g: str, _e: int, _p: str) -> float:
                return 1.0 - float(np.sum(values["weight"][gidx[g]]))

            base_setting = schedule_base_weight() if space.knots else setting_for(si, 0, "weight", base_w)
            sources.append({"model": base_ref, "layer_range": [lo, hi], "parameters": {"weight": base_setting}})
        for e, ref in enumerate(expert_refs):
            sp = {p: schedule_setting(e, p) if space.knots else setting_for(si, e, p) for p in params}
            sources.append({"model": ref, "layer_range": [lo, hi], "parameters": sp})
        slices.append({"sources": sources})

    recipe: dict[str, Any] = {"slices": slices, "merge_method": info.mergekit}
    if task_vectors:
        recipe["base_model"] = base_ref
    gparams = {k: _num(v) if isinstance(v, float) else v for k, v in info.mergekit_parameters(opts).items()}
    if gparams:
        recipe["parameters"] = gparams
    recipe["dtype"] = "float32"
    if cfg.models.dtype != "float32":
        recipe["out_dtype"] = cfg.models.dtype
    recipe["tokenizer_source"] = "base"

    # ---------------------------------------------------------------- self-check
    def t_of(name: str, si: int) -> float:
        """mergekit's gradient position of a tensor: i / (n - 1) over its slice's layers (1 for a
        one-layer slice); 0 for embeddings, the final norm and lm_head."""
        layers = space.group_layers[space.tensor_group[name]]
        if space.groups[space.tensor_group[name]] in ("embed", "head") or not layers:
            return 0.0
        lo, hi = ranges[si]
        return (min(layers) - lo) / (hi - lo - 1) if hi - lo > 1 else 1.0

    mismatches: list[str] = []
    for si, names in enumerate(per_slice):
        for e in range(len(experts)):
            src = slices[si]["sources"][e + (1 if len(slices[si]["sources"]) > len(experts) else 0)]
            for p in params:
                setting = src["parameters"][p]
                for n in names:
                    want = float(values[p][space.tensor_group[n], e])
                    got = _resolve(n, setting, t_of(n, si))
                    if got is None or float(got) != want:
                        mismatches.append(f"{n} {experts[e]}/{p}: recipe gives {got}, trial used {want}")
    if mismatches:
        notes.append(
            f"{len(mismatches)} tensor parameters resolve differently in mergekit than in this trial "
            f"(first: {mismatches[0]}); the recipe approximates the merge"
        )

    # ---------------------------------------------------------------- known differences
    inexact = bool(mismatches)
    ctx = RecipeContext(values, numels, space.tensor_group, space.groups, experts, opts)
    for note, breaks in info.recipe_notes(ctx):
        notes.append(note)
        inexact = inexact or breaks
    if cfg.models.dtype != "float32":
        notes.append(
            f"the models are {cfg.models.dtype}: mergekit computes in float32 and rounds once at the end, as this "
            "export did on CPU; a search on an accelerator merges in the model's dtype and can differ in the last bits"
        )
    return Recipe(recipe, not inexact, notes)
