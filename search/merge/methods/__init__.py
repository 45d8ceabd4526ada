"""Merge methods, one file each, found by name in ``METHODS``.

The protocol is :class:`~search.merge.methods.base.MergeMethod`. A method module imports no
torch at import time (config validation reads ``params`` / ``options``); the kernels it runs
live in ``search.merge.kernels``. Adding a method: a file here with a ``MergeMethod``
subclass and an instance, and one line below (or, outside this package, an entry point in the
``mergesearch.merge_methods`` group naming the instance).
"""

from __future__ import annotations

from ...registry import Registry
from .base import MergeMethod, RecipeContext

METHODS: Registry[MergeMethod] = Registry(
    "merge method",
    {
        "linear": "search.merge.methods.linear:LINEAR",
        "task_arithmetic": "search.merge.methods.task_arithmetic:TASK_ARITHMETIC",
        "ties": "search.merge.methods.ties:TIES",
        "dare_ties": "search.merge.methods.dare_ties:DARE_TIES",
        "dare_linear": "search.merge.methods.dare_linear:DARE_LINEAR",
        "breadcrumbs": "search.merge.methods.breadcrumbs:BREADCRUMBS",
    },
    group="mergesearch.merge_methods",
)


def method_info(name: str) -> MergeMethod:
    """The registered method ``name`` (UnknownNameError with close names otherwise)."""
    return METHODS.get(name)


__all__ = ["METHODS", "MergeMethod", "RecipeContext", "method_info"]
