"""Small name -> plugin registries with lazy imports and "did you mean" errors.

Entries are either objects or ``"module:attribute"`` strings resolved on first use, so
listing names (for config validation) never imports torch or lm_eval.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .errors import UnknownNameError, did_you_mean

T = TypeVar("T")


def import_object(spec: str) -> Any:
    """Import ``"package.module:attr"`` (``attr`` may be dotted)."""
    if ":" not in spec:
        raise ValueError(f"expected 'module:function', got {spec!r}")
    module_name, attr = spec.split(":", 1)
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    """A named collection of plugins of one kind (strategy, merge method, evaluator)."""

    def __init__(self, kind: str, entries: dict[str, str | T] | None = None):
        self.kind = kind
        self._entries: dict[str, str | T] = dict(entries or {})

    def register(self, name: str, obj: str | T | None = None) -> Callable[[T], T] | None:
        """Register ``obj`` under ``name``; used bare it works as a decorator."""
        if obj is not None:
            self._entries[name] = obj
            return None

        def deco(o: T) -> T:
            self._entries[name] = o
            return o

        return deco

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def check(self, name: str) -> None:
        """Raise :class:`UnknownNameError` with suggestions if ``name`` is not registered."""
        if name not in self._entries:
            raise UnknownNameError(f"unknown {self.kind} {name!r}{did_you_mean(name, self._entries)}")

    def get(self, name: str) -> T:
        self.check(name)
        entry = self._entries[name]
        if isinstance(entry, str):
            entry = import_object(entry)
            self._entries[name] = entry
        return entry  # type: ignore[return-value]
