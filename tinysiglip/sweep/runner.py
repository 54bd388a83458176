"""Ray and Ray Tune for a sweep: start Ray in the driver, and run one phase (search or final) as a Tuner.

Every phase runs the same trainable (:func:`~.trainable.tsl_trainable`) with the study's resources per
trial; the three plug-ins that run in the driver's Tune loop share the :class:`~.state.SweepState`:
:class:`~.searcher.CellSearcher` (which run next), :class:`~.scheduler.OptunaPruningScheduler`
(record each evaluation, prune) and :class:`~.callback.AttemptRecorder` (attempts and retries).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tinysiglip.sweep.callback import AttemptRecorder, StopOnSignal
from tinysiglip.sweep.cluster import ClusterTarget, check_reachable, resolve_target, token_auth_note
from tinysiglip.sweep.options import SweepError, SweepOptions
from tinysiglip.sweep.preflight import gpu_count
from tinysiglip.sweep.scheduler import OptunaPruningScheduler
from tinysiglip.sweep.searcher import CellSearcher
from tinysiglip.sweep.state import SweepState
from tinysiglip.sweep.trainable import tsl_trainable

__all__ = ["KEEP_CHECKPOINTS", "TuneRunner", "start_ray", "worker_runtime_env"]

KEEP_CHECKPOINTS = 2  # per run in the artifacts location: every evaluation's copy would fill the storage


def start_ray(study, options: SweepOptions, target: ClusterTarget | None = None) -> bool:
    """Attach to the cluster the options or environment name, else start a private Ray that listens on
    127.0.0.1 only; True when this call started Ray (so the sweep shuts it down at the end)."""
    import ray

    if ray.is_initialized():
        return False
    if target is None:
        target = resolve_target(options.address)
        check_reachable(target)
    common = dict(log_to_driver=options.log_to_driver, configure_logging=True, logging_level="WARNING")
    if target.attach:
        try:
            ctx = ray.init(address=target.address, runtime_env=worker_runtime_env(), **common)
        except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
            raise SweepError(
                f"cannot attach to the Ray cluster at {target.address} ({target.source}): {exc}"
            ) from exc
        options.echo(f"ray: attached to the cluster at {target.address} ({target.source})")
    else:
        _bind_private_ray_to_loopback()
        ctx = ray.init(
            num_cpus=options.num_cpus or os.cpu_count() or 1,
            num_gpus=0 if study.local else gpu_count(),
            _node_ip_address="127.0.0.1",
            **common,
            **_dashboard_kwargs(options),
        )
    _echo_access(ctx, options, attached=target.attach)
    return True


def _bind_private_ray_to_loopback() -> None:
    """A private Ray serves nobody else: its GCS, raylet and workers listen on 127.0.0.1 only.

    Ray resolves 127.0.0.1 to the machine's address unless cluster mode is off (the switch it uses on
    macOS/Windows); the environment variable reaches the processes Ray starts, the constant this one."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
    except Exception:  # noqa: BLE001 - another Ray layout: it binds as it always did
        pass


def worker_runtime_env(environ=None) -> dict:
    """What trials on a cluster's nodes need from the driver: the ``tinysiglip`` package (through Ray's
    ``py_modules``, so nodes need not have it installed) and the ``TINYSIGLIP_*``/``TSL_*`` settings.

    A sweep submitted as a Ray job keeps the job's own runtime environment (its ``working_dir``, its
    ``env_vars``): Ray refuses a driver runtime env that names a variable the job's already sets."""
    environ = os.environ if environ is None else environ
    in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in environ
    set_by_job = _job_env_var_names(environ["RAY_JOB_CONFIG_JSON_ENV_VAR"]) if in_job else set()
    env_vars = {
        k: v for k, v in environ.items() if k.startswith(("TINYSIGLIP_", "TSL_")) and k not in set_by_job
    }
    out: dict = {"env_vars": env_vars} if env_vars else {}
    if not in_job:
        import tinysiglip

        out["py_modules"] = [str(Path(tinysiglip.__file__).parent)]
    return out


def _job_env_var_names(job_config_json: str) -> set[str]:
    """Names of the variables a submitted Ray job's runtime environment sets (all of them, as far as
    this driver can tell, when the job config cannot be read)."""
    try:
        config = json.loads(job_config_json)
        runtime_env = config.get("runtime_env") or {}
        if isinstance(runtime_env, str):
            runtime_env = json.loads(runtime_env)
        return set((runtime_env.get("env_vars") or {}).keys())
    except (ValueError, AttributeError, TypeError):
        return _EVERY_NAME


class _Everything(set):
    def __contains__(self, item) -> bool:  # an unreadable job config: forward nothing, let the job's env be
        return True


_EVERY_NAME = _Everything()


def _echo_access(ctx, options: SweepOptions, *, attached: bool) -> None:
    """Where the cluster's dashboard is and, with token auth, where its token is (never the token)."""
    url = (getattr(ctx, "address_info", None) or {}).get("webui_url") or getattr(ctx, "dashboard_url", None)
    if url:
        options.echo(f"ray dashboard: http://{url.split('://')[-1]}")
    elif attached:
        options.echo("ray dashboard: none on this cluster (start the head with ray[default] installed)")
    note = token_auth_note() if (attached or url) else None
    if note:
        options.echo(f"ray: {note}")


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


def artifacts_location(artifacts: str | None, run_dir: Path) -> str:
    """Where Tune keeps trial checkpoints and students: ``--artifacts`` (a shared path, or a URI that
    Tune's ``storage_path`` accepts: ``s3://``, ``gs://``, ...) or ``run_dir/ray`` on this machine."""
    if artifacts and "://" in artifacts:
        return artifacts
    path = Path(artifacts).expanduser().resolve() if artifacts else run_dir / "ray"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


class TuneRunner:
    """Runs the sweep's phases, one ``tune.Tuner`` each, with Tune's files under the artifacts location."""

    def __init__(self, state: SweepState, run_dir: Path):
        from ray import tune

        self.state = state
        custom = dict(getattr(state.study.resources, "custom", None) or {})
        self.trainable = tune.with_resources(
            tsl_trainable, {"cpu": state.cpus, "gpu": state.gpu_fraction, **custom}
        )
        self.ray_dir = artifacts_location(state.options.artifacts, run_dir)
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # the driver's StopSignals take SIGINT/SIGTERM

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
                storage_path=self.ray_dir,
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=int(study.max_failures)),
                # the newest training checkpoint (what a retry resumes from) and the final student
                checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
                callbacks=[AttemptRecorder(self.state)],
                stop=StopOnSignal(self.state.signals),
            ),
        )
        with self.state.signals.phase():
            tuner.fit()
        return time.time() - started
