"""The sweep driver: Ray Tune over a study's grid, one Optuna study per cell, the study database.

Flow of :func:`run_sweep` (each step lives in its own module of this package):

1. check resources (:mod:`.plan`; a study asking for GPUs on a machine without one stops here unless
   ``--local``), open the study database (:mod:`tinysiglip.results.store`) and Optuna's
   ``RDBStorage`` on the same URL, take the study's lease (:mod:`.lease`: one driver per study; a
   second one is refused, a dead one's lease taken over), and refuse to touch a study that already has
   runs unless ``resume`` (:mod:`.prepare`);
2. make sure every cache exists (:mod:`.caches`; built once, before any trial) and record the
   teacher's own test metrics per cell (:mod:`.prepare`);
3. search (:mod:`.runner`): Ray Tune runs :func:`~.trainable.tsl_trainable` for every trial;
   :class:`~.searcher.CellSearcher` asks the cell's Optuna study (round-robin over cells) and tells it
   the outcome, :class:`~.scheduler.OptunaPruningScheduler` reports every evaluation to Optuna and
   stops (PRUNED) what the cell's pruner prunes; a failing trial is retried from its checkpoint by Ray
   (``FailureConfig(max_failures)``) and recorded failed (with its error) in between
   (:class:`~.callback.AttemptRecorder`); all three share the :class:`~.state.SweepState`;
4. final runs (:mod:`.final`): each cell's best COMPLETE trial re-run with every final seed, evaluated
   on the test split; then the summary table (:mod:`.summary`).

The driver process is the only writer of the database; workers only call ``tune.report``. The database
is the state that survives a restart: with ``resume`` a trial that a killed driver left RUNNING is
re-attached (same Optuna trial, same ``tsl_runs`` row, same run dir, so it resumes from its
checkpoint), finished trials and complete final runs are skipped.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

from tinysiglip.errors import check_writable_folder
from tinysiglip.results.store import (
    dashboard_command,
    open_store,
    optuna_storage,
    redact_url,
    schema_creation_lock,
)
from tinysiglip.sweep.cluster import check_reachable, resolve_target
from tinysiglip.sweep.final import queue_final_runs
from tinysiglip.sweep.lease import DriverLease
from tinysiglip.sweep.options import SweepError, SweepOptions
from tinysiglip.sweep.preflight import apply_overrides, check_resources
from tinysiglip.sweep.prepare import (
    check_fresh,
    check_resume_compatible,
    open_cell_studies,
    queue_failed_retries,
    reconcile_left_running,
    record_study,
    record_teacher_reference,
    retried_run_keys,
    study_caches,
    teacher_reference_metrics,
    trials_left,
)
from tinysiglip.sweep.state import SweepState
from tinysiglip.sweep.stopping import StopSignals, SweepInterrupted
from tinysiglip.sweep.summary import SweepSummary, failed_run_lines, summarize, summary_lines
from tinysiglip.sweep.trainable import function_path

__all__ = ["SweepError", "SweepOptions", "SweepSummary", "check_resources", "run_sweep"]


def run_sweep(
    study,
    options: SweepOptions | None = None,
    *,
    ensure_caches: Callable | None = None,
    teacher_metrics: Callable | None = None,
    gpus_available: int | None = None,
) -> SweepSummary:
    """Run (or with ``options.resume`` finish) a study. ``ensure_caches(study) -> {(teacher, dataset,
    split): path}`` and ``teacher_metrics(path) -> (metrics, params)`` default to the real ones.

    SIGINT/SIGTERM stop it (:mod:`.stopping`): :class:`SweepInterrupted` (exit 130/143), no finals."""
    options = options or SweepOptions()
    echo = options.echo
    t0 = time.time()
    apply_overrides(study, options)
    target = resolve_target(options.address)
    check_reachable(target)
    if options.artifacts and "://" not in options.artifacts:
        check_writable_folder(options.artifacts, "--artifacts")
    if not target.attach:  # this machine's own capacity, before anything is written
        check_resources(study, gpus_available=gpus_available, cpus_available=options.num_cpus)
    signals = StopSignals(echo)
    signals.install()
    try:
        return _run(study, options, target, signals, t0, ensure_caches, teacher_metrics)
    finally:
        signals.restore()


def _run(
    study, options: SweepOptions, target, signals: StopSignals, t0: float, ensure_caches, teacher_metrics
):
    """The study database (tables created under a lock) and this driver's lease on the study, taken
    before Ray starts: a second driver is refused at once."""
    url = study.storage_url
    with schema_creation_lock(url):
        store = open_store(url)
        storage = optuna_storage(url)
    try:
        with DriverLease(store, study.name, options.echo):
            return _with_ray(
                study, options, target, signals, t0, store, storage, ensure_caches, teacher_metrics
            )
    finally:
        store.close()


def _with_ray(study, options, target, signals, t0, store, storage, ensure_caches, teacher_metrics):
    import optuna
    import ray

    from tinysiglip.sweep.runner import start_ray

    t_ray = time.time()
    started_ray = start_ray(study, options, target)
    signals.install()  # again: Ray's core worker installs its own SIGTERM handler (abort + stack dump)
    ray_start_s = time.time() - t_ray
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not options.log_to_driver:  # failures are recorded in the database and echoed in one line
        import logging

        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    try:
        if target.attach:  # the cluster's nodes, before the study is touched
            check_resources(study, nodes=ray.nodes())
        return _in_study(
            study, options, signals, t0, ray_start_s, store, storage, ensure_caches, teacher_metrics
        )
    finally:
        if started_ray:
            ray.shutdown()


def _in_study(study, options, signals, t0, ray_start_s, store, storage, ensure_caches, teacher_metrics):
    from tinysiglip.sweep.runner import TuneRunner

    echo = options.echo
    run_dir = Path(study.run_dir).resolve()
    url = study.storage_url
    ostudies = open_cell_studies(study, storage)
    if not options.resume:
        check_fresh(study, store, ostudies)
    else:
        check_resume_compatible(study, store, ostudies, options)
    record_study(study, store, options)
    echo(f"study {study.name}: {len(study.cells)} cells, storage {redact_url(url)}, run dir {run_dir}")
    echo(f"  watch it: {dashboard_command(url)}")
    reattach = reconcile_left_running(study, store, ostudies)
    if reattach:
        echo(f"  resuming: {len(reattach)} trial(s) left running are re-attached from their checkpoints")

    # 2. caches (built once, before any trial) and the teacher reference per cell
    caches, fingerprints = study_caches(study, ensure_caches)
    if teacher_metrics is None and ensure_caches is None:
        teacher_metrics = teacher_reference_metrics
    if teacher_metrics is not None:
        record_teacher_reference(study, store, caches, fingerprints, teacher_metrics, echo)

    state = SweepState(
        study=study,
        store=store,
        optuna_studies=ostudies,
        caches=caches,
        options=options,
        fingerprints=fingerprints,
        run_dir=run_dir,
        gpu_fraction=0.0 if study.local else float(study.resources.gpus_per_trial or 0.0),
        cpus=float(study.resources.cpus_per_trial or 1.0),
        train_fn=function_path(options.train_fn),
        signals=signals,
    )
    state.reattach = list(reattach)
    if options.retry_failed:
        queued = queue_failed_retries(study, ostudies)
        echo(f"  --retry-failed: {sum(queued.values())} failed trial(s) queued again with their parameters")
    for c in study.cells:
        state.new_left[c.name] = trials_left(c, ostudies[c.name])

    # 3. search, then 4. final runs, each phase one Tuner; a signal stops the phase and skips the rest
    runner = TuneRunner(state, run_dir)
    n_search = len(state.reattach) + sum(state.new_left.values())
    n_finished = sum(len(s.get_trials(deepcopy=False)) for s in ostudies.values()) - len(reattach)
    echo(f"search: {n_search} trial(s) to run ({n_finished} already finished)")
    search_s = runner.run_phase("search", n_search)
    _raise_if_stopped(study, state, "search")
    final_s = 0.0
    if not options.skip_final:
        n_final = queue_final_runs(state)
        echo(f"final: {n_final} run(s) to run")
        final_s = runner.run_phase("final", n_final)
        _raise_if_stopped(study, state, "final")

    summary = summarize(study, store, ostudies)
    for line in summary_lines(summary, study):
        echo(line)
    failed_keys, failed_lines = failed_run_lines(store, study.name, retried_run_keys(study, ostudies))
    if failed_lines:
        echo(f"{len(failed_keys)} run(s) failed every attempt (the sweep exits non-zero):")
        for line in failed_lines:
            echo(line)
    total = time.time() - t0
    echo(
        f"done in {total:.0f}s (Ray start {ray_start_s:.1f}s, search {search_s:.0f}s, final {final_s:.0f}s); "
        f"database {redact_url(url)}"
    )
    return SweepSummary(
        study=study.name,
        storage_url=url,
        cells=summary,
        wall_time_s=total,
        ray_start_s=ray_start_s,
        search_s=search_s,
        final_s=final_s,
        failed_runs=failed_keys,
    )


def _raise_if_stopped(study, state: SweepState, phase: str) -> None:
    """After a phase: if a signal stopped it, leave the unfinished runs for ``--resume`` and stop here."""
    signals = state.signals
    if signals is None or not signals.requested:
        return
    left = state.leave_unfinished()
    skipped = "no final runs were started" if phase == "search" else "the final phase stopped"
    raise SweepInterrupted(
        signals.signum,
        f"stopped by {signal.Signals(signals.signum).name} during the {phase} phase: {left} run(s) left "
        f"running keep their checkpoints, {skipped}. Finish with: python -m tinysiglip.sweep {study.path} "
        "--resume (and the same flags)",
    )
