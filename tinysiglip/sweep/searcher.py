"""A Ray Tune searcher that owns one Optuna study per grid cell (ask/tell, no OptunaSearch internals).

``suggest(trial_id)`` asks the driver's :class:`~tinysiglip.sweep.state.SweepState` for the next run:
in the search phase that is a RUNNING trial left by a killed driver (re-attached) or a new Optuna trial
asked from the next cell that still needs trials (round-robin); in the final phase the next
(cell, seed) final run. ``on_trial_complete`` tells Optuna COMPLETE with the objective, FAIL with the
error, or (for a trial the scheduler pruned) leaves the PRUNED it already told.
"""

from __future__ import annotations

from typing import Any

from ray.tune.search import Searcher

from tinysiglip.sweep.state import NoPickleState, SweepState


class CellSearcher(NoPickleState, Searcher):
    def __init__(self, state: SweepState, phase: str):
        super().__init__(metric=None, mode=None)
        self.state = state
        self.phase = phase

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        spec = self.state.next_spec(trial_id, self.phase)
        if spec is None:
            return Searcher.FINISHED if self.state.exhausted(self.phase) else None
        return {"tsl": spec}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.state.on_trial_end(trial_id, error=error)

    def get_state(self) -> dict:  # the database is the state that survives a restart
        return {}

    def set_state(self, state: dict) -> None:
        pass
