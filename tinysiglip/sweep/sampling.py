"""Sampler randomness tied to the trial, not to the driver process.

A seeded Optuna sampler made afresh by every driver draws the same sequence again: after ``--resume`` a
cell's next trial repeated trial 0's parameters, and two drivers drew identical pairs.
:class:`TrialSeededSampler` makes a new inner sampler before each trial, seeded from (study seed, Optuna
study name, trial number): a resumed or second driver asks for new trial numbers, hence new draws, and a
rerun of the same study draws the same values trial by trial (reproducible). Model-based samplers (TPE)
keep working: they read the finished trials from the storage, not from their own memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from optuna.samplers import BaseSampler

__all__ = ["TrialSeededSampler", "trial_seed"]


def trial_seed(seed: int | None, study_name: str, number: int) -> int | None:
    """A 32-bit seed from the study's seed, the cell's Optuna study and the trial number (None: unseeded)."""
    if seed is None:
        return None
    digest = hashlib.sha256(f"{seed}/{study_name}/{number}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class TrialSeededSampler(BaseSampler):
    """Delegates to ``make(seed)``, a fresh sampler per trial seeded by :func:`trial_seed`."""

    def __init__(self, make: Callable[[int | None], BaseSampler], seed: int | None):
        self._make = make
        self._seed = seed
        self._inner = make(seed)

    def before_trial(self, study, trial) -> None:
        self._inner = self._make(trial_seed(self._seed, study.study_name, trial.number))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial) -> dict[str, Any]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()
