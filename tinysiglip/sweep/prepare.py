"""Everything a sweep does before its first trial, in the study database and on disk.

One Optuna study per grid cell on the study database; a fresh study refuses to reuse a database that
already holds its runs (``--resume`` finishes one instead); the study's own row; the runs a killed
driver left behind (re-attached from their checkpoints, or closed where Optuna already knows the end);
the teacher caches (built once, before any trial) and the teacher's own test metrics per cell.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tinysiglip.results.store import StudyStore, redact_url
from tinysiglip.sweep.options import SweepError, SweepOptions
from tinysiglip.sweep.sampling import TrialSeededSampler

__all__ = [
    "check_fresh",
    "check_resume_compatible",
    "queue_failed_retries",
    "retried_run_keys",
    "trials_left",
    "open_cell_studies",
    "reconcile_left_running",
    "record_study",
    "record_teacher_reference",
    "study_caches",
    "teacher_reference_metrics",
]


def open_cell_studies(study, storage) -> dict:
    """``{cell name: optuna.Study}``: each cell is its own Optuna study (created, or loaded when it exists),
    its sampler seeded per trial (:mod:`.sampling`: a resumed or second driver never repeats a draw)."""
    import optuna

    return {
        c.name: optuna.create_study(
            storage=storage,
            study_name=c.study_name,
            load_if_exists=True,
            direction=study.objective.direction,
            sampler=TrialSeededSampler(study.make_sampler, study.sampler.get("seed")),
            pruner=study.make_pruner(),
        )
        for c in study.cells
    }


def check_fresh(study, store: StudyStore, ostudies: dict) -> None:
    n_runs = len(store.runs(study.name))
    n_trials = sum(len(s.get_trials(deepcopy=False)) for s in ostudies.values())
    if n_runs or n_trials:
        raise SweepError(
            f"study {study.name!r} already has {n_trials} Optuna trial(s) and {n_runs} run(s) in "
            f"{redact_url(study.storage_url)}. Rerun with --resume to finish it, or give a new --storage URL "
            "(or another run_dir) to start over."
        )


def check_resume_compatible(study, store: StudyStore, ostudies: dict, options: SweepOptions) -> None:
    """``--resume`` finishes the study that was started: a changed epoch budget or search space would
    mix incomparable trials in one Optuna study (and one pruner). Every difference is listed at once."""
    problems = []
    for c in study.cells:
        epochs = options.epochs or (c.base_config.get("train") or {}).get("epochs")
        done = sorted(
            {r.epochs_budget for r in store.runs(study.name, cell=c.name, kind="trial") if r.epochs_budget}
        )
        if epochs is not None and done and done != [int(epochs)]:
            was = ", ".join(map(str, done))
            problems.append(f"cell {c.name}: epochs per trial {was} -> {epochs} (resume with --epochs {was})")
        space = dict(c.search_space)
        trials = [t for t in ostudies[c.name].get_trials(deepcopy=False) if t.distributions]
        for name in sorted(set(space).union(*(t.distributions for t in trials))):
            was = [t.distributions.get(name) for t in trials if t.distributions.get(name) != space.get(name)]
            if was:
                problems.append(
                    f"cell {c.name}: search space {name}: {_dist(was[0])} -> {_dist(space.get(name))}"
                )
    if problems:
        raise SweepError(
            f"--resume: study {study.name!r} in {redact_url(study.storage_url)} was started with another budget "
            "or search space; one study must not mix them:\n  "
            + "\n  ".join(problems)
            + "\nResume with the original settings, or start a new study (another --storage or --run-dir)."
        )


def _dist(d) -> str:
    if d is None:
        return "(not searched)"
    shown = ", ".join(f"{k}={v}" for k, v in vars(d).items() if v is not None and v is not False)
    return f"{type(d).__name__.removesuffix('Distribution').lower()}({shown})"


RETRIED = "tsl_retried_failed"  # Optuna study user attr: numbers of the FAIL trials re-queued


def queue_failed_retries(study, ostudies: dict) -> dict[str, int]:
    """``--retry-failed``: every FAIL trial not retried yet is queued again with its parameters (a new
    Optuna trial, a fresh run dir); the failed one stays in the history. Returns ``{cell: n queued}``."""
    import optuna

    queued = {}
    for c in study.cells:
        ostudy = ostudies[c.name]
        done = set(ostudy.user_attrs.get(RETRIED, []))
        failed = [
            t
            for t in ostudy.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
            if t.number not in done and t.params
        ]
        for t in failed:
            ostudy.enqueue_trial(dict(t.params), user_attrs={"tsl_retry_of": t.number}, skip_if_exists=False)
        if failed:
            ostudy.set_user_attr(RETRIED, sorted(done | {t.number for t in failed}))
        queued[c.name] = len(failed)
    return queued


def retried_run_keys(study, ostudies: dict) -> set[str]:
    """Run keys of the failed trials ``--retry-failed`` ran again: no longer failures of the study."""
    from tinysiglip.results.schema import run_key

    return {
        run_key("trial", c.study_name, trial_number=n)
        for c in study.cells
        for n in ostudies[c.name].user_attrs.get(RETRIED, [])
    }


def trials_left(cell, ostudy) -> int:
    """New trials a cell still needs: its budget minus the trials that count (a failed trial that was
    re-queued by ``--retry-failed`` does not; a queued one is still to run)."""
    import optuna

    retried = set(ostudy.user_attrs.get(RETRIED, []))
    counted = [
        t
        for t in ostudy.get_trials(deepcopy=False)
        if t.number not in retried and t.state != optuna.trial.TrialState.WAITING
    ]
    return max(0, int(cell.trials) - len(counted))


def record_study(study, store: StudyStore, options: SweepOptions) -> None:
    """The study's row: its file, its text, and the settings the report reads back."""
    try:
        text = Path(study.path).read_text()
    except Exception:  # noqa: BLE001
        text = None
    store.upsert_study(
        study.name,
        study_file=study.path,
        study_text=text,
        local=bool(study.local),
        settings={
            "objective": {"metric": study.objective.metric, "direction": study.objective.direction},
            "trials_per_cell": study.trials_per_cell,
            "cells": {
                c.name: {
                    "optuna_study": c.study_name,
                    "trials": c.trials,
                    "teacher": c.teacher,
                    "dataset": c.dataset,
                    "description": c.description,
                }
                for c in study.cells
            },
            "final_seeds": list(study.final_seeds),
            "resources": {
                "cpus_per_trial": study.resources.cpus_per_trial,
                "gpus_per_trial": 0 if study.local else study.resources.gpus_per_trial,
            },
            "pruner": dict(study.pruner),
            "sampler": dict(study.sampler),
            "max_failures": study.max_failures,
            "epochs": options.epochs if options.epochs is not None else getattr(study.budget, "epochs", None),
        },
    )


def reconcile_left_running(study, store: StudyStore, ostudies: dict) -> list[tuple[Any, Any]]:
    """The ``(cell, FrozenTrial)`` pairs a killed driver left RUNNING in Optuna (to re-attach); runs
    whose Optuna trial did finish but whose ``tsl_runs`` row still says running are closed here."""
    import optuna

    reattach = []
    for c in study.cells:
        for ft in ostudies[c.name].get_trials(deepcopy=False):
            if ft.state == optuna.trial.TrialState.RUNNING:
                reattach.append((c, ft))
            elif ft.state.is_finished():
                rec = store.find_trial_run(c.study_name, ft.number)
                if rec is not None and rec.status == "running":  # killed between tell and DB write
                    status = {"COMPLETE": "complete", "PRUNED": "pruned"}.get(ft.state.name, "failed")
                    store.finish_run(
                        rec.id,
                        status,
                        objective=ft.value if ft.value is not None else None,
                        error=None if status != "failed" else "marked failed in Optuna",
                    )
    return reattach


def study_caches(study, ensure_caches: Callable | None) -> tuple[dict, dict]:
    """``({(teacher, dataset, split): path}, {same key: fingerprint})``: every cache the study uses,
    built once before any trial. ``ensure_caches`` (a test hook) replaces the real builder."""
    caches = (ensure_caches or _default_ensure_caches)(study)
    caches = {tuple(k): Path(v) for k, v in caches.items()}
    fingerprints = {
        k: _fingerprint(p) if ensure_caches is None else {"path": str(p)} for k, p in caches.items()
    }
    return caches, fingerprints


def record_teacher_reference(
    study, store: StudyStore, caches: dict, fingerprints: dict, metrics_fn: Callable, echo: Callable
) -> None:
    """Each cell's teacher evaluated on its own cached test embeddings: the reference row of the report."""
    for c in study.cells:
        path = caches.get((c.teacher, c.dataset, "test"))
        if path is None:
            continue
        try:
            metrics, tparams, *ranks = metrics_fn(path)  # a third item: QueryRanks for the bootstrap
        except Exception as exc:  # noqa: BLE001 - the reference is informative, never fatal
            echo(f"  warning: teacher metrics for {c.name} failed: {exc}")
            continue
        record = store.record_teacher_metrics(
            study_name=study.name,
            cell=c.name,
            teacher_source=study.teachers[c.teacher].effective_source
            if hasattr(study, "teachers")
            else c.teacher,
            split="test",
            metrics=metrics,
            teacher_params=tparams,
            cache_path=path,
            cache_fingerprint=json.dumps(fingerprints.get((c.teacher, c.dataset, "test")), default=str),
        )
        if ranks and ranks[0] is not None:
            from tinysiglip.results.ranks import save_teacher_ranks

            save_teacher_ranks(store, record.id, ranks[0])


def _fingerprint(path: Path) -> dict:
    out: dict[str, Any] = {"path": str(path)}
    try:
        from tinysiglip.cache import open_cache

        meta = open_cache(path).meta
        for k, v in meta.items():
            if "fingerprint" in k or k in ("teacher_source", "teacher_revision", "dataset_name", "split"):
                out[k] = v
    except Exception as exc:  # noqa: BLE001 - a fingerprint is informative, never fatal
        out["error"] = str(exc)[:200]
    return out


def teacher_reference_metrics(path: Path) -> tuple[dict, dict, Any]:
    """Retrieval metrics of the teacher's own cached test embeddings, the teacher's parameter counts,
    and the per-query ranks the metrics come from (``QueryRanks``)."""
    from tinysiglip.cache import open_cache
    from tinysiglip.evaluate import recall_at_k, retrieval_ranks
    from tinysiglip.results.ranks import QueryRanks

    cache = open_cache(path)
    owner = cache.caption_image_index()
    image_ranks, text_ranks = retrieval_ranks(cache.image_embeds(), cache.text_embeds(), owner)
    params = cache.meta.get("teacher_params") or cache.meta.get("teacher_param_counts") or {}
    if not isinstance(params, dict):
        params = {"total": params}
    return recall_at_k(image_ranks, text_ranks), params, QueryRanks(image_ranks, text_ranks, owner)


def _default_ensure_caches(study):
    from tinysiglip.sweep.caches import ensure_study_caches

    return ensure_study_caches(study, progress=True)
