"""The searched coordinates: groups of tensors x experts x method parameters.

Tensors are grouped by ``merge.granularity``:

* ``global``: one group, ``all``.
* ``layer`` / ``block:K``: one group per decoder layer (``layers.07``) or per K consecutive
  layers (``layers.04-07``). Tensors before the first layer (embeddings) form the group
  ``embed``; tensors after the last layer (final norm, lm_head) form ``head``.
  Models without a ``layers.N`` / ``h.N`` / ``blocks.N`` pattern (plain torch classifiers)
  count each module holding parameters as one layer, in definition order.
* ``schedule:K``: tensors are grouped per layer, but the searched coordinates are K knots
  per (expert, param), spread evenly over the decoder layers (``knot.0`` at the first layer,
  ``knot.<K-1>`` at the last); each layer takes the piecewise-linear interpolation of the
  knots. Layer ``i`` of ``L`` sits at ``t = i / (L - 1)`` (``t = 1`` for one layer), and its
  value is ``(1 - f) * knot[j] + f * knot[j + 1]`` with ``j + f = t * (K - 1)``: mergekit's
  rule for gradient lists, computed the same way, so an exported gradient list reproduces
  every layer's value exactly. K=1 is one value for all layers, K=2 a ramp from shallow to
  deep layers, K=L the same values as ``layer``. ``embed`` and ``head`` stay their own
  groups (one coordinate each per (expert, param)).
* ``merge.split`` (e.g. ``[self_attn, mlp]``) further splits each layer group by the first
  filter that occurs in a tensor's name; tensors matching none go to ``<group>.rest``. With
  a schedule, each split part gets its own knots (``knot.0.self_attn``).

A coordinate is one (coordinate group, expert, parameter), named ``<group>/<expert>/<param>``,
e.g. ``layers.04-07/math/weight`` or ``knot.1/math/density``. The coordinate groups are the
tensor groups, except under ``schedule:K`` where they are ``embed``, the knots and ``head``.
Coordinates are ordered group-major (all of a group's coordinates are adjacent, groups in
model order), so crossover split points fall on layer (or knot) boundaries. The tensor -> group map is computed once; :meth:`CoefficientSpace.values`
turns a vector into per-group tables without any per-tensor work.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .config import MergeConfig, SearchConfig
from .errors import ConfigError, ConfigIssue
from .merge.methods import method_info

_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")


def layer_index(name: str) -> int | None:
    """Decoder-layer index in a parameter name (``model.layers.3.mlp...`` -> 3), else None."""
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def schedule_weights(n_layers: int, knots: int) -> list[tuple[int, int, float]]:
    """Per decoder layer, ``(j0, j1, f)``: its value is ``(1 - f) * knot[j0] + f * knot[j1]``.

    mergekit's gradient rule, in its float operations: ``t = i / (L - 1)`` (1 for a single
    layer), ``scaled = t * (K - 1)``, ``j0 = int(scaled)``, ``j1 = min(K - 1, j0 + 1)``,
    ``f = scaled - j0``.
    """
    out = []
    for i in range(n_layers):
        t = i / (n_layers - 1) if n_layers > 1 else 1.0
        scaled = t * (knots - 1)
        j0 = int(scaled)
        out.append((j0, min(knots - 1, j0 + 1), scaled - j0))
    return out


def _module_layers(names: Sequence[str]) -> dict[str, int]:
    """For models without a layer pattern: each module holding parameters is one layer."""
    order: dict[str, int] = {}
    out = {}
    for n in names:
        mod = n.rsplit(".", 1)[0] if "." in n else n
        if mod not in order:
            order[mod] = len(order)
        out[n] = order[mod]
    return out


@dataclass(frozen=True)
class CoefficientSpace:
    """Searched coordinates with bounds, and the tensor -> group map.

    ``values(x)`` returns, per method parameter, an array of shape (n_groups, n_experts)
    that holds the searched coordinates of ``x`` and the fixed values elsewhere.
    """

    groups: tuple[str, ...]
    experts: tuple[str, ...]
    searched: tuple[str, ...]  # method params that are searched, in coordinate order
    fixed: dict[str, float]  # method params held fixed
    lower: np.ndarray
    upper: np.ndarray
    names: tuple[str, ...]
    tensor_group: dict[str, int]  # parameter name -> group index
    group_layers: tuple[tuple[int, ...], ...] = field(default=())  # layer indices per group
    n_layers: int = 0
    # schedule:K only: the coordinate groups (embed, knots, head) and, per tensor group, the two
    # coordinate groups it interpolates between with the fraction of the second
    coord_groups: tuple[str, ...] = field(default=())
    knots: int = 0
    interp: tuple[tuple[int, int, float], ...] = field(default=())

    # ---------------------------------------------------------------- construction
    @classmethod
    def build(cls, param_names: Sequence[str], experts: Sequence[str], merge: MergeConfig) -> CoefficientSpace:
        info = method_info(merge.method)
        searched = tuple(p for p in info.params if p in merge.search)
        fixed: dict[str, float] = {}
        for p, default in info.params.items():
            if p in searched:
                continue
            val = merge.params.get(p, default)
            fixed[p] = float(val if val is not None else 0.0)

        names = list(param_names)
        layered = {n: layer_index(n) for n in names}
        if any(v is not None for v in layered.values()):
            first = next(i for i, n in enumerate(names) if layered[n] is not None)
            layers = {}
            for i, n in enumerate(names):
                if layered[n] is not None:
                    layers[n] = layered[n]
                else:
                    layers[n] = -1 if i < first else -2  # -1: embed, -2: head
        else:
            layers = _module_layers(names)
        real = sorted({v for v in layers.values() if v >= 0})
        n_layers = (max(real) + 1) if real else 0
        width = max(2, len(str(max(n_layers - 1, 0))))

        knots = merge.schedule_knots or 0
        if knots and knots > max(n_layers, 1):
            raise ConfigError(
                ConfigIssue(
                    "merge.granularity",
                    f"schedule:{knots} has more knots than the model's {n_layers} layers; use schedule:K with K <= {n_layers}",
                )
            )

        def layer_group(li: int) -> tuple[str, tuple[int, ...]]:
            if merge.granularity == "layer" or knots:
                return f"layers.{li:0{width}d}", (li,)
            k = merge.block_size or 1
            lo = (li // k) * k
            hi = min(lo + k, n_layers) - 1
            name = f"layers.{lo:0{width}d}" if lo == hi else f"layers.{lo:0{width}d}-{hi:0{width}d}"
            return name, tuple(range(lo, hi + 1))

        group_of: dict[str, str] = {}
        group_layers: dict[str, tuple[int, ...]] = {}
        for n in names:
            li = layers[n]
            if merge.granularity == "global":
                g, ls = "all", tuple(range(n_layers))
            elif li == -1:
                g, ls = "embed", ()
            elif li == -2:
                g, ls = "head", ()
            else:
                g, ls = layer_group(li)
                if merge.split:
                    sub = next((f for f in merge.split if f in n), "rest")
                    g = f"{g}.{sub}"
            group_of[n] = g
            group_layers.setdefault(g, ls)

        # order groups: embed, layer groups by first layer (split order as given), head
        def gkey(g: str) -> tuple[int, int, int]:
            if g == "embed":
                return (0, 0, 0)
            if g == "head":
                return (2, 0, 0)
            ls = group_layers[g]
            sub = g.rsplit(".", 1)[-1] if merge.split and g != "all" else ""
            subi = merge.split.index(sub) if sub in merge.split else len(merge.split)
            return (1, ls[0] if ls else 0, subi)

        groups = tuple(sorted(group_layers, key=gkey))
        gidx = {g: i for i, g in enumerate(groups)}
        coord_groups, interp = groups, ()
        if knots:
            coord_groups, interp = _knot_groups(groups, group_layers, merge.split, knots, n_layers)
        coord_names, lo, hi = [], [], []
        for g in coord_groups:
            for e in experts:
                for p in searched:
                    coord_names.append(f"{g}/{e}/{p}")
                    lo.append(merge.search[p][0])
                    hi.append(merge.search[p][1])
        return cls(
            groups=groups,
            experts=tuple(experts),
            searched=searched,
            fixed=fixed,
            lower=np.asarray(lo, dtype=np.float64),
            upper=np.asarray(hi, dtype=np.float64),
            names=tuple(coord_names),
            tensor_group={n: gidx[group_of[n]] for n in names},
            group_layers=tuple(group_layers[g] for g in groups),
            n_layers=n_layers,
            coord_groups=coord_groups if knots else (),
            knots=knots,
            interp=interp,
        )

    # ---------------------------------------------------------------- vector <-> tables
    @property
    def dim(self) -> int:
        return len(self.names)

    @property
    def cgroups(self) -> tuple[str, ...]:
        """The coordinate groups: the tensor groups, or embed / knots / head for a schedule."""
        return self.coord_groups or self.groups

    @property
    def coord_group(self) -> np.ndarray:
        """Coordinate-group index of each coordinate (coordinates of a group are contiguous)."""
        per_group = len(self.experts) * len(self.searched)
        return np.repeat(np.arange(len(self.cgroups)), per_group)

    def values(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Per method parameter: array (n_groups, n_experts) of coefficients for vector ``x``."""
        x = np.asarray(x, dtype=np.float64)
        if x.shape != (self.dim,):
            raise ValueError(f"coefficient vector has shape {x.shape}; this space has {self.dim} coordinates")
        G, E, P = len(self.groups), len(self.experts), len(self.searched)
        out: dict[str, np.ndarray] = {}
        if P:
            cube = x.reshape(len(self.cgroups), E, P)
            if self.interp:  # (1 - f) * knot[j0] + f * knot[j1], elementwise as mergekit computes it
                j0, j1, f = (np.asarray(a) for a in zip(*self.interp, strict=True))
                f = f.astype(np.float64)[:, None, None]
                cube = (1 - f) * cube[j0] + f * cube[j1]
            for j, p in enumerate(self.searched):
                out[p] = cube[:, :, j].copy()
        for p, v in self.fixed.items():
            out[p] = np.full((G, E), v)
        return out

    def to_dict(self, x: np.ndarray) -> dict[str, float]:
        return {n: float(v) for n, v in zip(self.names, np.asarray(x), strict=True)}

    def from_dict(self, d: dict[str, float]) -> np.ndarray:
        missing = [n for n in self.names if n not in d]
        if missing:
            raise KeyError(f"coefficients missing for {missing[:3]}{'...' if len(missing) > 3 else ''}")
        return np.asarray([d[n] for n in self.names], dtype=np.float64)

    def clip(self, x: np.ndarray) -> np.ndarray:
        return np.clip(x, self.lower, self.upper)

    def contains(self, x: np.ndarray, tol: float = 1e-9) -> bool:
        x = np.asarray(x)
        return bool(np.all(x >= self.lower - tol) and np.all(x <= self.upper + tol))

    def point(self, per_expert: dict[str, float] | Sequence[float], param: str = "weight", rest: float | None = None) -> np.ndarray:
        """A vector with the same ``param`` value per expert in every group (other searched
        params at ``rest``, default the middle of their bounds), clipped to the bounds.
        Used to seed strategies with the experts (one-hot), the base (zeros) and uniform merges."""
        vals = [per_expert[e] for e in self.experts] if isinstance(per_expert, dict) else list(per_expert)
        x = (self.lower + self.upper) / 2 if rest is None else np.full(self.dim, float(rest))
        E, P = len(self.experts), len(self.searched)
        if param in self.searched:
            cube = x.reshape(len(self.cgroups), E, P)
            cube[:, :, self.searched.index(param)] = np.asarray(vals)[None, :]
        return self.clip(x)

    def describe(self) -> str:
        what = f"{len(self.cgroups)} groups" if not self.knots else f"{len(self.cgroups)} groups (embed, {self.knots} knot{'s' if self.knots > 1 else ''} per part, head)"
        return (
            f"{self.dim} coordinates = {what} x {len(self.experts)} experts x "
            f"{len(self.searched)} params ({', '.join(self.searched)})"
        )


def _knot_groups(
    groups: tuple[str, ...], group_layers: dict[str, tuple[int, ...]], split: Sequence[str], knots: int, n_layers: int
) -> tuple[tuple[str, ...], tuple[tuple[int, int, float], ...]]:
    """Coordinate groups of a schedule (embed, ``knot.<k>[.<part>]`` knot-major, head) and, per
    tensor group, the coordinate groups and fraction it interpolates with."""
    parts: list[str] = []  # split parts present in the layers, in split order ("" without split)
    for g in groups:
        if g in ("embed", "head"):
            continue
        part = g.rsplit(".", 1)[-1] if split else ""
        if part not in parts:
            parts.append(part)
    order = {p: (split.index(p) if p in split else len(split)) for p in parts}
    parts.sort(key=order.__getitem__)
    width = len(str(knots - 1))
    cg: list[str] = ["embed"] if "embed" in groups else []
    for k in range(knots):
        cg += [f"knot.{k:0{width}d}" + (f".{p}" if p else "") for p in parts]
    cg += ["head"] if "head" in groups else []
    index = {c: i for i, c in enumerate(cg)}
    weights = schedule_weights(n_layers, knots)
    interp = []
    for g in groups:
        if g in ("embed", "head"):
            interp.append((index[g], index[g], 0.0))
            continue
        suffix = "." + g.rsplit(".", 1)[-1] if split else ""
        j0, j1, f = weights[group_layers[g][0]]
        interp.append((index[f"knot.{j0:0{width}d}{suffix}"], index[f"knot.{j1:0{width}d}{suffix}"], f))
    return tuple(cg), tuple(interp)


def schedule_issues(cfg: SearchConfig) -> list[ConfigIssue]:
    """``search validate``'s check that ``schedule:K`` fits the base model's layers, from its
    safetensors headers only (no weights loaded; nothing reported when they cannot be read)."""
    from pathlib import Path

    from .models import is_zoo, safetensors_shapes

    src = cfg.models.base
    try:
        if is_zoo(src):
            from .zoo import zoo_path

            folder = Path(zoo_path(src, build=False))
        else:
            folder = cfg.resolve(src)
        shapes = safetensors_shapes(folder) if folder.is_dir() else None
    except Exception:  # noqa: BLE001 - unreadable here; the run checks again with the real model
        return []
    if not shapes:
        return []
    try:
        CoefficientSpace.build(list(shapes), [e.name for e in cfg.models.experts], cfg.merge)
    except ConfigError as e:
        return list(e.issues)
    return []
