"""A Ray Tune callback that times each attempt of a run and records the failed ones.

Ray retries a failing trial from its checkpoint (``FailureConfig(max_failures)``); in between, the
attempt that failed is recorded failed (with its error) in the study database and a new attempt row
starts, so the cost of every attempt is counted.
"""

from __future__ import annotations

from ray.tune import Callback

from tinysiglip.sweep.state import NoPickleState, SweepState, trial_error

__all__ = ["AttemptRecorder"]


class AttemptRecorder(NoPickleState, Callback):
    def __init__(self, state: SweepState):
        super().__init__()
        self.state = state

    def on_trial_start(self, iteration, trials, trial, **info):
        self.state.attempt_started(trial.trial_id)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.state.attempt_failed(trial.trial_id, trial_error(trial) or "trial failed (retrying)")
