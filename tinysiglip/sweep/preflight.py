"""What a sweep will run, and whether this machine can run it: small-budget overrides, the GPU check,
and the ``--dry-run`` plan. Nothing here opens the database or starts Ray."""

from __future__ import annotations

from tinysiglip.results.store import redact_url
from tinysiglip.sweep.options import SweepError, SweepOptions

__all__ = ["apply_overrides", "check_resources", "gpu_count", "plan_text"]


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def check_resources(study, *, gpus_available: int | None = None) -> None:
    gpus = float(study.resources.gpus_per_trial or 0)
    if study.local or gpus <= 0:
        return
    n = gpu_count() if gpus_available is None else gpus_available
    if n <= 0:
        raise SweepError(
            f"{study.path}: resources.gpus_per_trial={gpus:g} but this machine has no GPU "
            "(torch.cuda.is_available() is False). Run it on a GPU machine, set resources.gpus_per_trial: 0, "
            "or run the local world with --local."
        )
    if gpus > n:
        raise SweepError(f"{study.path}: resources.gpus_per_trial={gpus:g} but this machine has {n} GPU(s)")


def apply_overrides(study, options: SweepOptions) -> None:
    if options.trials_per_cell is not None:
        study.trials_per_cell = int(options.trials_per_cell)
        for c in study.cells:
            c.trials = (
                int(options.trials_per_cell) if c.search_space else min(1, int(options.trials_per_cell))
            )
    if options.epochs is not None:
        for c in study.cells:
            c.base_config.setdefault("train", {})["epochs"] = int(options.epochs)
            c.final_epochs = None
        if getattr(study, "budget", None) is not None:
            from dataclasses import replace

            study.budget = replace(study.budget, epochs=int(options.epochs))
        study.final_epochs = None
    if options.seeds is not None:
        study.final_seeds = [int(s) for s in options.seeds]
    if options.max_concurrent is not None:
        study.max_concurrent = int(options.max_concurrent)


def plan_text(study) -> str:
    """What a sweep of this study would run: the --dry-run summary after ``study.describe()``."""
    res = study.resources
    gpus = 0 if study.local else res.gpus_per_trial
    lines = ["", "plan:"]
    total = 0
    for c in study.cells:
        lines.append(
            f"  {c.study_name}: {c.trials} trial(s), {len(c.search_space)} searched param(s), "
            f"{len(study.final_seeds)} final run(s) (seeds {', '.join(map(str, study.final_seeds))})"
        )
        total += c.trials
    lines.append(f"  total: {total} search trials + {len(study.cells) * len(study.final_seeds)} final runs")
    lines.append(
        f"  resources per trial: {res.cpus_per_trial:g} CPU, {gpus:g} GPU; max concurrent: "
        f"{study.max_concurrent or 'as resources allow'}; max failures per trial: {study.max_failures}"
    )
    lines.append(f"  storage: {redact_url(study.storage_url)}   run dir: {study.run_dir}")
    return "\n".join(lines)
