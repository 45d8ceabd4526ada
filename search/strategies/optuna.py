"""Optuna samplers through ask/tell on an in-memory study.

Each coordinate is a ``FloatDistribution(lower, upper)`` named after the coordinate
(``layers.04-07/math/weight``); objective directions map to the study's directions; a
failed result (None, NaN or inf) is told as ``TrialState.FAIL``. The study is private to
the strategy: the project's own store stays the record of what was evaluated.

Samplers (``sampler``):

* ``default``: whatever ``optuna.create_study`` picks for this number of objectives in the
  installed Optuna (TPE for one and for several objectives since Optuna 5, the floor; Optuna
  4 picked NSGA-II for several), seeded;
* ``tpe`` (``TPESampler``, multi-objective capable), ``gp`` (``GPSampler``: log EI / log EHVI),
  ``nsga2`` (``NSGAIISampler``), ``random`` (``RandomSampler``);
* ``cmaes`` (``CmaEsSampler``, from the ``cmaes`` package): single objective only.

``sampler_kwargs`` go to the sampler's constructor unchanged (``n_startup_trials``,
``population_size``, ``multivariate`` ...); the seed always comes from the run seed.

Several ``ask``s before any ``tell`` are fine: TPE's ``constant_liar`` (on by default in
Optuna 5) and GP's batch handling account for running trials; NSGA-II fills its current
generation.

State and "exact": on resume the run's asks and tells are replayed into a new in-memory
study whose sampler is seeded from the run seed, so a restored strategy's next proposals
are identical to the uninterrupted run's, with the same Optuna version. Trials asked but
never told stay RUNNING in the restored study, as they would in the live one.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
from pydantic import Field

from ..seeding import derive_seed
from .base import Candidate, Strategy, StrategyOptions, TrialResult

log = logging.getLogger(__name__)

SamplerName = Literal["default", "tpe", "gp", "nsga2", "cmaes", "random"]


class OptunaOptions(StrategyOptions):
    sampler: SamplerName = Field("default", description="Optuna sampler; 'default' = Optuna's choice for the number of objectives")
    sampler_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments for the sampler")


@contextmanager
def _quiet():
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ExperimentalWarning (GP), independent-sampling notes
        level = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            yield
        finally:
            optuna.logging.set_verbosity(level)


class OptunaStrategy(Strategy):
    name = "optuna"
    Options = OptunaOptions

    def __init__(self, problem, options=None, seed: int = 0):
        super().__init__(problem, options, seed)
        names = list(problem.names) if problem.names and len(set(problem.names)) == problem.dim else []
        self._names = names or [f"x{i:04d}" for i in range(problem.dim)]
        self._sampler_seed = derive_seed("optuna", self.seed) % (2**32)
        self._next_id = 0
        self._trials: dict[int, int] = {}  # candidate id -> trial number (pending)
        self._study = self._new_study()

    # ------------------------------------------------------------------ helpers
    def _distributions(self) -> dict[str, Any]:
        from optuna.distributions import FloatDistribution

        return {n: FloatDistribution(float(lo), float(hi)) for n, lo, hi in zip(self._names, self.problem.lower, self.problem.upper, strict=True)}

    def _make_sampler(self):
        import optuna

        kind = self.options.sampler
        kw = dict(self.options.sampler_kwargs)
        kw["seed"] = self._sampler_seed
        with _quiet():
            if kind == "default":
                probe = optuna.create_study(directions=self._directions())
                return type(probe.sampler)(**kw)
            cls = {
                "tpe": optuna.samplers.TPESampler,
                "gp": optuna.samplers.GPSampler,
                "nsga2": optuna.samplers.NSGAIISampler,
                "cmaes": optuna.samplers.CmaEsSampler,
                "random": optuna.samplers.RandomSampler,
            }[kind]
            return cls(**kw)

    def _directions(self) -> list[str]:
        return [o.direction for o in self.problem.objectives]

    def _new_study(self):
        import optuna

        with _quiet():
            return optuna.create_study(
                storage=optuna.storages.InMemoryStorage(),
                sampler=self._make_sampler(),
                directions=self._directions(),
                study_name="mergesearch",
            )

    def _generation(self, trial) -> int:
        attrs = self._study._storage.get_trial_system_attrs(trial._trial_id)
        for k, v in attrs.items():
            if k.endswith(":generation") and isinstance(v, int):
                return v
        return 0

    # ------------------------------------------------------------------ protocol
    def ask(self, n: int) -> list[Candidate]:
        out: list[Candidate] = []
        dists = self._distributions()
        lo, hi = self.problem.lower, self.problem.upper
        with _quiet():
            for _ in range(n):
                trial = self._study.ask(fixed_distributions=dists)
                x = np.clip(np.array([trial.params[nm] for nm in self._names], dtype=np.float64), lo, hi)
                cid = self._next_id
                self._next_id += 1
                self._trials[cid] = trial.number
                out.append(Candidate(x, cid, generation=self._generation(trial), meta={"optuna_trial": trial.number}))
        return out

    def tell(self, results: Sequence[TrialResult]) -> None:
        import optuna
        from optuna.trial import TrialState

        with _quiet():
            for r in results:
                cid = int(r.candidate.id)
                self._next_id = max(self._next_id, cid + 1)
                values = None
                if r.ok:
                    v = np.asarray(r.values, dtype=np.float64).reshape(-1)
                    if v.shape == (self.problem.n_obj,):
                        values = [float(t) for t in v]
                params = {nm: float(t) for nm, t in zip(self._names, np.clip(r.candidate.x, self.problem.lower, self.problem.upper), strict=True)}
                state = "COMPLETE" if values is not None else "FAIL"
                number = self._trials.pop(cid, None)
                if number is None:  # not asked by this instance (e.g. replayed results): add as a finished trial
                    self._study.add_trial(
                        optuna.trial.create_trial(
                            params=params, distributions=self._distributions(), values=values, state=TrialState[state]
                        )
                    )
                elif values is not None:
                    self._study.tell(number, values)
                else:
                    self._study.tell(number, state=TrialState.FAIL)

    @classmethod
    def check(cls, options: StrategyOptions, problem_info: dict[str, Any]) -> list[str]:
        n_obj = problem_info.get("n_objectives")
        if getattr(options, "sampler", None) == "cmaes" and n_obj is not None and n_obj > 1:
            return [
                f"Optuna's CmaEsSampler handles one objective but there are {n_obj}; use sampler: tpe, gp or nsga2, "
                "or strategy cmaes (a weighted sum of the objectives)"
            ]
        return []
