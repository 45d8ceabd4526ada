"""Strategy state as data: JSON plus numpy arrays, never a pickle.

A store is a file people share, so nothing read from it may run code. A strategy's
``state_dict()`` (where it has one: see :attr:`search.strategies.Strategy.snapshots`) is
encoded here as a JSON document plus an ``.npz`` archive of its arrays, read back with
``allow_pickle=False``. Only these values are accepted: ``None``, ``bool``, ``int``,
``float`` (NaN and infinities included), ``str``, lists, tuples, dicts with ``str`` or
``int`` keys, numpy scalars (stored as Python numbers) and numpy arrays of a numeric or bool
dtype. Anything else (an object, a function, an array of objects) is refused when the state
is written, with the path to the offending value.

Floats and integers round-trip exactly (JSON keeps Python's shortest exact ``repr`` and
arbitrary-size integers, e.g. a PCG64 generator's 128-bit state); arrays keep their dtype.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

FORMAT = "mergesearch-state/1"
_ARR, _TUP, _IDICT = "__array__", "__tuple__", "__int_keys__"


class StateDataError(ValueError):
    """A state that is not plain data, or bytes that are not an encoded state."""


def encode(state: Any) -> tuple[str, bytes]:
    """``state`` -> (JSON text, npz bytes). Raises :class:`StateDataError` naming the path of a
    value that is not plain data."""
    arrays: list[np.ndarray] = []

    def enc(v: Any, path: str) -> Any:
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, (int, float)):
            return v
        if isinstance(v, np.generic):
            if isinstance(v, (np.bool_, np.integer, np.floating)):
                return v.item()
            raise StateDataError(f"{path}: numpy scalar of dtype {v.dtype} is not plain data")
        if isinstance(v, np.ndarray):
            if v.dtype.kind not in "biuf":
                raise StateDataError(f"{path}: array of dtype {v.dtype} is not plain data (numbers or bools only)")
            arrays.append(np.ascontiguousarray(v))
            return {_ARR: len(arrays) - 1}
        if isinstance(v, tuple):
            return {_TUP: [enc(x, f"{path}[{i}]") for i, x in enumerate(v)]}
        if isinstance(v, list):
            return [enc(x, f"{path}[{i}]") for i, x in enumerate(v)]
        if isinstance(v, dict):
            if all(isinstance(k, str) for k in v):
                if any(k in (_ARR, _TUP, _IDICT) for k in v):
                    raise StateDataError(f"{path}: the keys {_ARR!r}, {_TUP!r}, {_IDICT!r} are reserved")
                return {k: enc(x, f"{path}.{k}") for k, x in v.items()}
            if all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in v):
                return {_IDICT: [[int(k), enc(x, f"{path}[{k}]")] for k, x in v.items()]}
            raise StateDataError(f"{path}: dict keys must be all str or all int")
        raise StateDataError(f"{path}: {type(v).__name__} is not plain data")

    doc = {"format": FORMAT, "state": enc(state, "state")}
    buf = io.BytesIO()
    np.savez(buf, **{f"a{i}": a for i, a in enumerate(arrays)})
    return json.dumps(doc, separators=(",", ":")), buf.getvalue()


def decode(text: str, blob: bytes) -> Any:
    """The inverse of :func:`encode`; never unpickles. Raises :class:`StateDataError` on bytes
    that are not an encoded state."""
    try:
        doc = json.loads(text)
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError) as e:
        raise StateDataError(f"not an encoded strategy state ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise StateDataError(f"not an encoded strategy state (format {doc.get('format') if isinstance(doc, dict) else None!r}, expected {FORMAT!r})")

    def dec(v: Any) -> Any:
        if isinstance(v, list):
            return [dec(x) for x in v]
        if isinstance(v, dict):
            if _ARR in v:
                key = f"a{int(v[_ARR])}"
                if key not in arrays:
                    raise StateDataError(f"the state names array {key} that its archive lacks")
                return arrays[key]
            if _TUP in v:
                return tuple(dec(x) for x in v[_TUP])
            if _IDICT in v:
                return {int(k): dec(x) for k, x in v[_IDICT]}
            return {k: dec(x) for k, x in v.items()}
        return v

    return dec(doc["state"])
