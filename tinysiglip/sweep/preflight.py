"""What a sweep will run, and whether this machine or the attached cluster can run it: small-budget
overrides, the resource check, and the ``--dry-run`` plan. Nothing here opens the database or starts
Ray (a dry run attached to a cluster connects to it only to read its nodes)."""

from __future__ import annotations

import os

from tinysiglip.results.store import redact_url
from tinysiglip.sweep.cluster import (
    NodeCapacity,
    check_fits,
    check_reachable,
    cluster_nodes,
    node_capacities,
    resolve_target,
    trial_request,
)
from tinysiglip.sweep.options import SweepError, SweepOptions

__all__ = ["apply_overrides", "check_resources", "gpu_count", "plan_text", "resource_check_text"]


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def check_resources(
    study,
    *,
    gpus_available: int | None = None,
    cpus_available: float | None = None,
    nodes: list | None = None,
) -> None:
    """Can one trial run on one node? ``nodes`` (``ray.nodes()`` output) checks an attached cluster's
    nodes; without it the check is against this machine (``cpus_available``/``gpus_available``, by
    default what it has). A study that fits no node would wait forever: it is an error before anything
    runs, naming the resource and the biggest node."""
    request = trial_request(study)
    if nodes is not None:
        check_fits(request, node_capacities(nodes), where=str(study.path))
        return
    gpus = request.get("gpu", 0.0)
    n = gpu_count() if gpus_available is None else gpus_available
    if gpus > 0 and n <= 0:
        raise SweepError(
            f"{study.path}: resources.gpus_per_trial={gpus:g} but this machine has no GPU "
            "(torch.cuda.is_available() is False). Run it on a GPU machine or attach to a cluster with GPU "
            "nodes (--address), set resources.gpus_per_trial: 0, or run the local world with --local."
        )
    cpus = float(cpus_available or os.cpu_count() or 1)
    this_machine = NodeCapacity(node_id="local", host="this machine", cpu=cpus, gpu=float(n))
    check_fits(request, [this_machine], where=str(study.path))


def resource_check_text(study, options: SweepOptions) -> str:
    """The --dry-run's resource check: against an attached cluster's nodes (an error when no node fits
    a trial, as the sweep itself would stop), else against this machine (a warning: the plan may be
    meant for another machine)."""
    target = resolve_target(options.address)
    if not target.attach:
        try:
            check_resources(study, cpus_available=options.num_cpus)
        except SweepError as exc:
            return f"  resources: WARNING: a sweep on this machine would stop: {exc}"
        return "  resources: one trial fits this machine (private Ray on 127.0.0.1)"
    check_reachable(target)
    nodes = cluster_nodes(target.address)
    lines = [f"  cluster {target.address} ({target.source}): {len(node_capacities(nodes))} alive node(s)"]
    lines += [f"    {n.describe()}" for n in node_capacities(nodes)]
    check_resources(study, nodes=nodes)
    lines.append("  resources: one trial fits at least one node")
    return "\n".join(lines)


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
