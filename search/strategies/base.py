"""The strategy protocol: ask / tell / state_dict / load_state_dict.

Hooks, in the order the controller calls them:

1. ``__init__(problem, options, seed)``: build internal state; cheap; no evaluations.
2. ``ask(n)``: called whenever workers are free. Return ``n`` new candidates inside the
   bounds when possible (generational strategies fill a generation barrier by asking ahead);
   return fewer only if nothing sensible can be proposed before more results arrive (the
   controller then waits for a result and asks again). Never returns the same candidate id
   twice.
3. ``tell(results)``: called with finished trials in any order, possibly a subset of what was
   asked, possibly failed (``values is None``) or with NaN/inf values (treated as failed).

Resume: the controller logs every ``ask(n)`` and ``tell`` call in the store (trial numbers
only: the results themselves are the trials' rows) and rebuilds a strategy by replaying that
log into a new instance with the same problem, options and seed. Every strategy must
therefore be deterministic for a seed and a sequence of calls (no wall-clock, no global RNG).
Strategies whose replay is costly (model fits in ``ask``) set ``snapshots = True`` and
implement ``state_dict()`` / ``load_state_dict(state)`` with plain data only (see
:mod:`search.statedata`: numbers, strings, lists, dicts, numpy arrays; never objects, since a
store is never unpickled); the controller then saves a snapshot now and then and replays only
the calls made after it. Either way the next ``ask`` proposes what the uninterrupted run
would have.

Values are raw objective values in objective order; each :class:`Objective` carries its
direction. Use :meth:`Problem.minimization` to get a "smaller is better" matrix; never flip or
drop an objective silently.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict


@dataclass(frozen=True)
class Objective:
    name: str
    direction: Literal["maximize", "minimize"] = "maximize"
    weight: float = 1.0

    @property
    def sign(self) -> float:
        """+1 for minimize, -1 for maximize: ``sign * value`` is to be minimised."""
        return 1.0 if self.direction == "minimize" else -1.0


@dataclass
class Candidate:
    """A proposed coefficient vector plus where it came from."""

    x: np.ndarray
    id: int
    generation: int = 0
    parents: tuple[int, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "x": [float(v) for v in self.x],
            "id": int(self.id),
            "generation": int(self.generation),
            "parents": [int(p) for p in self.parents],
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Candidate:
        return cls(
            x=np.asarray(d["x"], dtype=np.float64),
            id=int(d["id"]),
            generation=int(d.get("generation", 0)),
            parents=tuple(d.get("parents", ())),
            meta=dict(d.get("meta", {})),
        )


@dataclass
class TrialResult:
    """The outcome of evaluating one candidate.

    ``values``: raw objective values in objective order, or None if the trial failed.
    ``per_sample``: per-example scores in [0, 1] (higher is better), concatenated over
    objectives, for strategies that use them (M2N2); None when evaluators give none.
    ``margins``: objective index -> per-example margins with ``values[i] == mean(margins[i]
    > 0)`` (accuracies whose evaluator reports them; ``mobo`` models them); None or missing
    keys when evaluators give none.
    ``fidelity``: 1.0 for a result on every example; below 1 (the smallest fraction of an
    objective's examples scored) for a candidate that fidelity stopped at a low level: its
    ``values`` are then estimates from subsets, ``value_se`` their standard errors as
    estimates of the full-set values, and its ``per_sample`` / ``margins`` have NaN for the
    examples not scored. A strategy may use such results as they are, or as noisier
    observations (``mobo``); they never enter the front.
    """

    candidate: Candidate
    values: np.ndarray | None
    per_sample: np.ndarray | None = None
    error: str | None = None
    margins: dict[int, np.ndarray] | None = None
    fidelity: float = 1.0
    value_se: np.ndarray | None = None

    @property
    def low_fidelity(self) -> bool:
        return self.fidelity < 1.0

    @property
    def ok(self) -> bool:
        return self.values is not None and bool(np.all(np.isfinite(self.values)))


@dataclass(frozen=True)
class Problem:
    """What a strategy searches: box bounds, objectives, and optional structure hints."""

    lower: np.ndarray
    upper: np.ndarray
    objectives: tuple[Objective, ...]
    budget: int
    names: tuple[str, ...] = ()
    coord_group: np.ndarray | None = None  # group index per coordinate (layer order)
    seeds: tuple[tuple[str, np.ndarray], ...] = ()  # named starting points: experts, base, uniform
    n_experts: int = 0

    @property
    def dim(self) -> int:
        return int(len(self.lower))

    @property
    def n_obj(self) -> int:
        return len(self.objectives)

    def minimization(self, values: np.ndarray) -> np.ndarray:
        """Values (n, n_obj) or (n_obj,) -> signed so that smaller is better for every objective."""
        signs = np.array([o.sign for o in self.objectives])
        return np.asarray(values, dtype=np.float64) * signs

    def info(self) -> dict[str, Any]:
        """What :meth:`Strategy.check` is told about this problem."""
        return {"dim": self.dim, "budget": self.budget, "n_experts": self.n_experts, "n_objectives": self.n_obj}

    def scalarize(self, values: np.ndarray) -> np.ndarray:
        """Weighted sum of minimization-signed values (smaller is better)."""
        w = np.array([o.weight for o in self.objectives])
        return self.minimization(values) @ w


class StrategyOptions(BaseModel):
    """Base of each strategy's ``strategy.options`` schema."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Strategy(ABC):
    """Base class for search strategies. Subclasses set ``name`` and ``Options``."""

    name: ClassVar[str]
    Options: ClassVar[type[StrategyOptions]] = StrategyOptions
    #: True if the strategy needs per-example scores (TrialResult.per_sample)
    needs_per_sample: ClassVar[bool] = False
    #: True if ``state_dict`` / ``load_state_dict`` give the whole state as plain data
    #: (:mod:`search.statedata`); False: the state is rebuilt by replaying asks and tells only
    snapshots: ClassVar[bool] = False

    def __init__(self, problem: Problem, options: StrategyOptions | dict[str, Any] | None = None, seed: int = 0):
        self.problem = problem
        self.options = options if isinstance(options, StrategyOptions) else self.Options(**(options or {}))
        self.seed = int(seed)
        self._refuse_unfit_options()

    def _refuse_unfit_options(self) -> None:
        """Hook: raise ``ValueError("<name>: ...")`` when :meth:`check` rejects the options for
        this problem (the same messages ``search validate`` prints)."""
        msgs = self.check(self.options, self.problem.info())
        if msgs:
            raise ValueError(f"{self.name}: " + "; ".join(msgs))

    @abstractmethod
    def ask(self, n: int) -> list[Candidate]: ...

    @abstractmethod
    def tell(self, results: Sequence[TrialResult]) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        """The whole state as plain data (only where ``snapshots`` is True)."""
        raise NotImplementedError(f"{self.name} is rebuilt by replaying its asks and tells; it keeps no snapshot")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s data exactly (only where ``snapshots`` is True)."""
        raise NotImplementedError(f"{self.name} is rebuilt by replaying its asks and tells; it keeps no snapshot")

    @classmethod
    def check(cls, options: StrategyOptions, problem_info: dict[str, Any]) -> list[str]:
        """Extra checks of options against the problem (dimension, objectives); messages."""
        return []
