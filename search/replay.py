"""Rebuild a strategy from its logged calls: the resume path, with no pickle anywhere.

The controller logs every ``ask(n)`` (the proposed candidates' ids, a digest of each
clipped vector, and the trial number it became or the earlier trial it duplicates) and
every ``tell`` (pairs of candidate id and the trial number whose result it got). Replaying
that log into a new strategy built with the same problem, options and seed repeats the
same calls with the same results, so the strategy ends in the state the live one had.
A data snapshot (:mod:`search.statedata`), where the strategy keeps one, shortens the
replay to the calls made after it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .strategies.base import Candidate, Strategy, TrialResult


def vector_key(x: np.ndarray) -> bytes:
    """Identity of a coefficient vector (rounded to 1e-10): equal keys = the same trial."""
    return np.round(np.asarray(x, dtype=np.float64), 10).tobytes()


def digest(x: np.ndarray) -> str:
    """A short fingerprint of a vector, logged with each ask to detect a replay that diverges."""
    return hashlib.sha1(vector_key(x)).hexdigest()[:16]


def clip_candidates(cands: Sequence[Candidate], lower: np.ndarray, upper: np.ndarray) -> None:
    """What the controller does to every proposal before using it (in place)."""
    for c in cands:
        c.x = np.clip(np.asarray(c.x, dtype=np.float64), lower, upper)


def outstanding(events: Sequence[Any]) -> dict[int, dict[str, Any]]:
    """Candidate id -> its ask item, for candidates asked and never told."""
    asked: dict[int, dict[str, Any]] = {}
    for ev in events:
        if ev.kind == "ask":
            for it in ev.payload["items"]:
                asked[int(it["id"])] = it
        elif ev.kind == "tell":
            for cid, _ in ev.payload["items"]:
                asked.pop(int(cid), None)
    return asked


def replay(
    strategy: Strategy,
    events: Sequence[Any],
    lower: np.ndarray,
    upper: np.ndarray,
    candidate_of: Callable[[int], Candidate],
    result_of: Callable[[Candidate, int], TrialResult],
) -> tuple[dict[int, Candidate], int | None]:
    """Repeat ``events`` (each with ``kind`` and ``payload``) on ``strategy``.

    ``candidate_of(id)`` gives a candidate asked before the replayed events (from the store);
    ``result_of(candidate, number)`` the stored result of trial ``number``. Returns the
    candidates the replay asked and did not tell (by id), and the ``seq`` of the first ask
    whose proposals differ from the logged ones, where the replay stops (None when it is
    exact: it can differ only under other library versions or another version of the
    strategy's code; docs/store.md).
    """
    asked: dict[int, Candidate] = {}
    for ev in events:
        if ev.kind == "ask":
            got = strategy.ask(int(ev.payload["n"]))
            clip_candidates(got, lower, upper)
            items = ev.payload["items"]
            same = len(got) == len(items) and all(
                c.id == int(it["id"]) and digest(c.x) == it["h"] for c, it in zip(got, items, strict=False)
            )
            if not same:
                return asked, int(ev.seq)
            for c in got:
                asked[c.id] = c
        elif ev.kind == "tell":
            batch = []
            for cid, number in ev.payload["items"]:
                cand = asked.pop(int(cid), None) or candidate_of(int(cid))
                batch.append(result_of(cand, int(number)))
            strategy.tell(batch)
    return asked, None
