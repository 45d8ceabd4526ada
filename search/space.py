"""The searched coordinates: groups of tensors x experts x method parameters.

Tensors are grouped by ``merge.granularity``:

* ``global``: one group, ``all``.
* ``layer`` / ``block:K``: one group per decoder layer (``layers.07``) or per K consecutive
  layers (``layers.04-07``). Tensors before the first layer (embeddings) form the group
  ``embed``; tensors after the last layer (final norm, lm_head) form ``head``.
  Models without a ``layers.N`` / ``h.N`` / ``blocks.N`` pattern (plain torch classifiers)
  count each module holding parameters as one layer, in definition order.
* ``merge.split`` (e.g. ``[self_attn, mlp]``) further splits each layer group by the first
  filter that occurs in a tensor's name; tensors matching none go to ``<group>.rest``.

A coordinate is one (group, expert, parameter), named ``<group>/<expert>/<param>``, e.g.
``layers.04-07/math/weight``. Coordinates are ordered group-major (all of a group's
coordinates are adjacent, groups in model order), so crossover split points fall on layer
boundaries. The tensor -> group map is computed once; :meth:`CoefficientSpace.values`
turns a vector into per-group tables without any per-tensor work.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .config import MergeConfig
from .merge.info import method_info

_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")


def layer_index(name: str) -> int | None:
    """Decoder-layer index in a parameter name (``model.layers.3.mlp...`` -> 3), else None."""
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else None


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

        def layer_group(li: int) -> tuple[str, tuple[int, ...]]:
            if merge.granularity == "layer":
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
        coord_names, lo, hi = [], [], []
        for g in groups:
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
        )

    # ---------------------------------------------------------------- vector <-> tables
    @property
    def dim(self) -> int:
        return len(self.names)

    @property
    def coord_group(self) -> np.ndarray:
        """Group index of each coordinate (coordinates of a group are contiguous)."""
        per_group = len(self.experts) * len(self.searched)
        return np.repeat(np.arange(len(self.groups)), per_group)

    def values(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Per method parameter: array (n_groups, n_experts) of coefficients for vector ``x``."""
        x = np.asarray(x, dtype=np.float64)
        if x.shape != (self.dim,):
            raise ValueError(f"coefficient vector has shape {x.shape}; this space has {self.dim} coordinates")
        G, E, P = len(self.groups), len(self.experts), len(self.searched)
        out: dict[str, np.ndarray] = {}
        if P:
            cube = x.reshape(G, E, P)
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
        G, E, P = len(self.groups), len(self.experts), len(self.searched)
        if param in self.searched:
            cube = x.reshape(G, E, P)
            cube[:, :, self.searched.index(param)] = np.asarray(vals)[None, :]
        return self.clip(x)

    def describe(self) -> str:
        return (
            f"{self.dim} coordinates = {len(self.groups)} groups x {len(self.experts)} experts x "
            f"{len(self.searched)} params ({', '.join(self.searched)})"
        )
