"""A Ray Tune scheduler that consults the cell's Optuna pruner on every reported evaluation.

Each evaluation a trial reports (``tsl_event == "eval"``) goes to the driver's
:class:`~tinysiglip.sweep.state.SweepState`, which writes it to the study database, reports it to the
trial's Optuna trial (``trial.report(value, step=epoch)``) and asks the cell's pruner
(``trial.should_prune()``; each cell is its own Optuna study, so a trial is only compared with trials
of its own cell). When the pruner says so, the trial is told PRUNED (Optuna and ``tsl_runs``) and the
scheduler returns ``STOP``. Everything else is FIFO.
"""

from __future__ import annotations

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from tinysiglip.sweep.state import NoPickleState, SweepState


class OptunaPruningScheduler(NoPickleState, FIFOScheduler):
    def __init__(self, state: SweepState):
        super().__init__()
        self.state = state

    def on_trial_add(self, tune_controller, trial) -> None:
        self.state.register_ray_trial(trial)
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        event = result.get("tsl_event")
        if event == "eval":
            if self.state.on_eval(trial.trial_id, result):
                return TrialScheduler.STOP
        elif event == "final":
            self.state.on_final(trial.trial_id, result)
        return TrialScheduler.CONTINUE
