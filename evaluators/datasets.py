"""Named labelled datasets for the ``classification`` evaluator, found by name in ``DATASETS``.

A dataset is a :class:`Dataset`: its name, a ``load(split) -> (X, y)`` function (float
features (n, d), integer labels (n,); ``split`` is train, validation or test) and, when known,
the labels it has (``search validate`` refuses others). Datasets live with whatever builds
them (the digits zoo registers ``digits``, ``search/zoo/digits.py``); the registry names them
lazily, so listing names imports nothing. Third parties register through the
``mergesearch.datasets`` entry-point group (the entry point names a ``Dataset``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from search.registry import Registry


@dataclass(frozen=True)
class Dataset:
    name: str
    load: Callable[[str], tuple[Any, Any]]
    labels: tuple[int, ...] | None = None


DATASETS: Registry[Dataset] = Registry(
    "dataset",
    {
        "digits": "search.zoo.digits:DIGITS",
    },
    group="mergesearch.datasets",
)
