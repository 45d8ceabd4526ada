"""User-facing errors: each names the field or file at fault and the fix."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return "; did you mean 'x'?" (or a list of known names) for an unknown ``name``."""
    choices = sorted(set(choices))
    close = difflib.get_close_matches(name, choices, n=n, cutoff=0.6)
    if not close:
        close = [c for c in choices if name.lower() in c.lower() or c.lower() in name.lower()][:n]
    if close:
        return "; did you mean " + " or ".join(repr(c) for c in close) + "?"
    if choices and len(choices) <= 12:
        return "; known: " + ", ".join(choices)
    return ""


class MergeSearchError(Exception):
    """Base class of errors meant for the user (printed without a traceback)."""


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config: the dotted field path and what is wrong / how to fix it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(MergeSearchError):
    """A config (or another user input) has one or more problems."""

    def __init__(self, issues: list[ConfigIssue] | ConfigIssue | str, source: str | None = None):
        if isinstance(issues, str):
            issues = [ConfigIssue("", issues)]
        elif isinstance(issues, ConfigIssue):
            issues = [issues]
        self.issues = list(issues)
        self.source = source
        super().__init__("\n".join(str(i) for i in self.issues))


class UnknownNameError(MergeSearchError, KeyError):
    """A registry lookup failed; the message suggests close names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class StoreError(MergeSearchError):
    """The store cannot be opened or used as asked (locked, newer schema, unknown run...)."""
