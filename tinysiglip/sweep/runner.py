"""Ray and Ray Tune for a sweep: start Ray in the driver, and run one phase (search or final) as a Tuner.

Every phase runs the same trainable (:func:`~.trainable.tsl_trainable`) with the study's resources per
trial; the three plug-ins that run in the driver's Tune loop share the :class:`~.state.SweepState`:
:class:`~.searcher.CellSearcher` (which run next), :class:`~.scheduler.OptunaPruningScheduler`
(record each evaluation, prune) and :class:`~.callback.AttemptRecorder` (attempts and retries).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tinysiglip.sweep.callback import AttemptRecorder
from tinysiglip.sweep.options import SweepOptions
from tinysiglip.sweep.preflight import gpu_count
from tinysiglip.sweep.scheduler import OptunaPruningScheduler
from tinysiglip.sweep.searcher import CellSearcher
from tinysiglip.sweep.state import SweepState
from tinysiglip.sweep.trainable import tsl_trainable

__all__ = ["TuneRunner", "start_ray"]


def start_ray(study, options: SweepOptions) -> bool:
    """Start a local Ray for this sweep unless one is already initialised; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(
        num_cpus=options.num_cpus or os.cpu_count() or 1,
        num_gpus=0 if study.local else gpu_count(),
        log_to_driver=options.log_to_driver,
        configure_logging=True,
        logging_level="WARNING",
        **_dashboard_kwargs(options),
    )
    return True


def _dashboard_kwargs(options: SweepOptions) -> dict:
    if not options.dashboard:
        return {"include_dashboard": False}
    try:
        from ray._private.utils import get_dashboard_dependency_error

        missing = get_dashboard_dependency_error()
    except Exception as exc:  # noqa: BLE001
        missing = exc
    if missing is not None:
        options.echo(
            "--dashboard: the Ray dashboard needs ray[default], which is not installed "
            f"({missing}). Install it with `pip install 'tinysiglip[dashboard]'` (or `pip install 'ray[default]'`);"
            " continuing without the dashboard."
        )
        return {"include_dashboard": False}
    return {"include_dashboard": True, "dashboard_host": "127.0.0.1"}


class TuneRunner:
    """Runs the sweep's phases, one ``tune.Tuner`` each, with Tune's files under ``run_dir/ray``."""

    def __init__(self, state: SweepState, run_dir: Path):
        from ray import tune

        self.state = state
        self.trainable = tune.with_resources(tsl_trainable, {"cpu": state.cpus, "gpu": state.gpu_fraction})
        self.ray_dir = run_dir / "ray"
        self.ray_dir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

    def run_phase(self, phase: str, n: int) -> float:
        """Run ``n`` runs of ``phase`` ("search" or "final") to the end; returns the seconds it took."""
        from ray import tune

        if n <= 0:
            return 0.0
        started = time.time()
        study = self.state.study
        tuner = tune.Tuner(
            self.trainable,
            tune_config=tune.TuneConfig(
                search_alg=CellSearcher(self.state, phase),
                scheduler=OptunaPruningScheduler(self.state),
                num_samples=n,
                max_concurrent_trials=study.max_concurrent or None,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=f"{phase}-{time.strftime('%Y%m%d-%H%M%S')}",
                storage_path=str(self.ray_dir),
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=int(study.max_failures)),
                callbacks=[AttemptRecorder(self.state)],
            ),
        )
        tuner.fit()
        return time.time() - started
