"""Deterministic seeds: every random choice of a trial derives from (run seed, trial number)."""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any printable parts (stable across processes and Python versions)."""
    h = hashlib.blake2b("/".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def trial_seed(run_seed: int, trial_number: int) -> int:
    """Seed for a trial's randomness (DARE masks, evaluation subsets)."""
    return derive_seed("trial", run_seed, trial_number)
