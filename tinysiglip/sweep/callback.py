"""Ray Tune plug-ins of the driver: a callback that times each attempt of a run and records the failed
ones, and a stopper that stops every trial once the driver got SIGINT/SIGTERM (:mod:`.stopping`).

Ray retries a failing trial from its checkpoint (``FailureConfig(max_failures)``); in between, the
attempt that failed is recorded failed (with its error) in the study database and a new attempt row
starts, so the cost of every attempt is counted.
"""

from __future__ import annotations

from ray.tune import Callback, Stopper

from tinysiglip.sweep.state import NoPickleState, SweepState, trial_error
from tinysiglip.sweep.stopping import StopSignals

__all__ = ["AttemptRecorder", "StopOnSignal"]


class AttemptRecorder(NoPickleState, Callback):
    def __init__(self, state: SweepState):
        super().__init__()
        self.state = state

    def on_trial_start(self, iteration, trials, trial, **info):
        self.state.attempt_started(trial.trial_id)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.state.attempt_failed(trial.trial_id, trial_error(trial) or "trial failed (retrying)")


class StopOnSignal(Stopper):
    """Tune stops every trial once a signal was received (``stop_all``); no single trial is stopped."""

    def __init__(self, signals: StopSignals):
        self.signals = signals

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.signals is not None and self.signals.requested

    def __getstate__(self):  # saved with the experiment: the live handlers are not
        return {"signals": None}
