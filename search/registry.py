"""Small name -> plugin registries with lazy imports and "did you mean" errors.

Entries are either objects or ``"module:attribute"`` strings resolved on first use, so
listing names (for config validation) never imports torch or lm_eval. A registry with an
entry-point ``group`` also lists the entry points installed packages declare in that group
(``mergesearch.strategies``, ``mergesearch.evaluators``, ``mergesearch.merge_methods``): the
entry point's name is the registered name, its value the ``"module:attribute"`` to import. A
built-in name is never replaced by a plugin. A plugin whose module fails to import is named,
with its package and entry point, in the one-line error of :meth:`Registry.get`.
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

    def __init__(self, kind: str, entries: dict[str, str | T] | None = None, group: str | None = None):
        self.kind = kind
        self.group = group
        self._entries: dict[str, str | T] = dict(entries or {})
        self._plugins: dict[str, str] = {}  # name -> where it comes from (package and entry point)
        self._discovered = group is None

    def _discover(self) -> None:
        """Add the installed entry points of ``group`` (once; built-in names win)."""
        if self._discovered:
            return
        self._discovered = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.group or ""):
            if ep.name in self._entries:
                continue
            dist = getattr(ep, "dist", None)
            self._entries[ep.name] = ep.value
            self._plugins[ep.name] = f"plugin {dist.name if dist else '?'} (entry point {ep.name} = {ep.value!r} in {self.group})"

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
        self._discover()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._entries

    def check(self, name: str) -> None:
        """Raise :class:`UnknownNameError` with suggestions if ``name`` is not registered."""
        self._discover()
        if name not in self._entries:
            raise UnknownNameError(f"unknown {self.kind} {name!r}{did_you_mean(name, self._entries)}")

    def get(self, name: str) -> T:
        self.check(name)
        entry = self._entries[name]
        if isinstance(entry, str):
            if name in self._plugins:
                try:
                    entry = import_object(entry)
                except Exception as e:  # noqa: BLE001 - any failure of a plugin's import is reported the same way
                    msg = f"{self._plugins[name]} failed to import: {type(e).__name__}: {e}"
                    raise ImportError(msg.replace("\n", " ")) from e
            else:
                entry = import_object(entry)
            self._entries[name] = entry
        return entry  # type: ignore[return-value]
