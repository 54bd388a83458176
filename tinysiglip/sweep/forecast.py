"""What a study will cost before it runs: trial-epochs, device-hours and wall time, per cell and in total.

    python -m tinysiglip.sweep STUDY.yaml --dry-run --forecast [--local] [--storage URL] [--num-cpus N]
    tinysiglip forecast STUDY.yaml [--local] [--storage URL] [--num-cpus N] [--num-gpus N]

Seconds per optimiser step come, per distinct (student, batch size, training cache), from the study
database when it holds complete runs of that combination (their wall time over their steps: evaluations,
start-up and whatever else shared the machine included), else from timing a few real optimiser steps on
random batches of the training cache's shapes on this machine (training steps only). Steps per run =
training images // batch size × epochs (capped by ``train.max_steps``).

Device-hours follow the cost table: GPU-hours = run time × GPUs per trial, or CPU-hours = run time × CPUs
per trial when the study uses no GPU. "With pruning" scales the search trials by the share of
trial-epochs the study's own pruner saves when the earlier studies in the same database are replayed
through it (:mod:`tinysiglip.results.replay`); with no earlier study it is left out, not guessed. Wall
time packs the runs longest first onto the trials that fit at once (CPUs and GPUs given, max_concurrent),
search phase then final phase: a lower bound that ignores start-up and uneven finishing.

The forecast is stored in ``tsl_forecasts``; after the sweep the report's cost table compares it with
what the study used.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tinysiglip.errors import TinySigLIPError

__all__ = ["CellForecast", "StudyForecast", "forecast_study", "forecast_text", "register", "store_forecast"]


@dataclass(frozen=True)
class StepTime:
    seconds: float
    source: str  # "measured on cpu (5 steps)" | "database: 4 runs"


@dataclass
class CellForecast:
    cell: str
    student: str
    batch_size: int
    image_size: int | None
    steps_per_epoch: int
    search_trials: int
    search_epochs: int  # per trial
    final_runs: int
    final_epochs: int  # per final run
    step_seconds: float
    step_source: str
    run_seconds_search: float  # one search trial, unpruned
    run_seconds_final: float

    @property
    def trial_epochs(self) -> int:
        return self.search_trials * self.search_epochs + self.final_runs * self.final_epochs

    def seconds(self, saved_fraction: float = 0.0) -> float:
        search = self.search_trials * self.run_seconds_search * (1.0 - saved_fraction)
        return search + self.final_runs * self.run_seconds_final


@dataclass
class StudyForecast:
    study: str
    device: str
    hours_kind: str  # "gpu" | "cpu"
    hours_per_second: float  # device-hours per second of one run (GPUs or CPUs per trial / 3600)
    concurrency: int
    cells: list[CellForecast]
    saved_fraction: float | None  # of search trial-epochs, from replaying earlier studies
    pruning_source: str
    notes: list[str] = field(default_factory=list)

    @property
    def trial_epochs(self) -> int:
        return sum(c.trial_epochs for c in self.cells)

    def device_hours(self, *, pruned: bool = False) -> float | None:
        if pruned and self.saved_fraction is None:
            return None
        f = self.saved_fraction if pruned else 0.0
        return sum(c.seconds(f or 0.0) for c in self.cells) * self.hours_per_second

    def wall_seconds(self, *, pruned: bool = False) -> float | None:
        if pruned and self.saved_fraction is None:
            return None
        f = (self.saved_fraction or 0.0) if pruned else 0.0
        search = [c.run_seconds_search * (1.0 - f) for c in self.cells for _ in range(c.search_trials)]
        final = [c.run_seconds_final for c in self.cells for _ in range(c.final_runs)]
        return packed_wall_seconds(search, self.concurrency) + packed_wall_seconds(final, self.concurrency)


def packed_wall_seconds(durations: list[float], slots: int) -> float:
    """Makespan of runs packed longest first onto ``slots`` parallel places (inf when none fits)."""
    if not durations:
        return 0.0
    if slots < 1:
        return math.inf
    ends = [0.0] * min(slots, len(durations))
    for d in sorted(durations, reverse=True):
        heapq.heapreplace(ends, ends[0] + d)
    return max(ends)


# ---------------------------------------------------------------------------------------- configs


def _cell_configs(study, cell, caches: dict[str, Path]) -> tuple[dict, dict]:
    """The resolved training configs of the cell's search trials and final runs, as the sweep runs them."""
    from tinysiglip.config.training import resolve_config

    out = []
    seed = study.final_seeds[0] if study.final_seeds else 0
    for final in (False, True):
        config = cell.apply({}, seed=seed, final=final)
        data = config.setdefault("data", {})
        data["train_cache"], data["val_cache"] = str(caches["train"]), str(caches["val"])
        train = config.setdefault("train", {})
        if study.local:
            train["device"] = "cpu"
        if not (study.resources.gpus_per_trial and not study.local) and not train.get("threads"):
            train["threads"] = max(1, int(study.resources.cpus_per_trial))
        out.append(resolve_config(config, source=f"{study.path} cell {cell.name}"))
    return out[0], out[1]


def _combination(config: dict) -> str:
    """What a step's time depends on: the student, the batch size and the training cache (resolution)."""
    return json.dumps(
        [config["student"], int(config["optim"]["batch_size"]), config["data"]["train_cache"]], sort_keys=True
    )


def _recorded_step_times(storage_url: str) -> dict[str, list[float]]:
    """combination -> seconds per step of every complete run in the database (none when it does not exist)."""
    from tinysiglip.results.frames import load_runs
    from tinysiglip.results.store import StoreError, open_existing

    try:
        store = open_existing(storage_url)
    except StoreError:
        return {}
    try:
        runs = load_runs(store)
    finally:
        store.close()
    from tinysiglip.config.training import resolve_config

    out: dict[str, list[float]] = {}
    done = runs[(runs["state"] == "complete") & (runs["steps"].fillna(0) > 0) & (runs["wall_time_s"] > 0)]
    for row in done.itertuples(index=False):
        try:  # runs record the config as given: resolved, it compares with the study's resolved configs
            key = _combination(resolve_config(row.config or {}))
        except (TinySigLIPError, KeyError, TypeError):
            continue
        out.setdefault(key, []).append(float(row.wall_time_s) / float(row.steps))
    return out


def _earlier_pruning(storage_url: str, pruner: dict) -> tuple[float | None, str]:
    """Share of search trial-epochs the study's pruner saves on the earlier studies of this database."""
    from tinysiglip.results.replay import replay_study
    from tinysiglip.results.store import StoreError, open_existing

    try:
        store = open_existing(storage_url)
    except StoreError:
        return None, "no study database yet: pruning savings unknown (no earlier study to replay)"
    try:
        recorded = saved = 0
        names = []
        for record in store.studies():
            replay = replay_study(store, record.name, {"study": pruner}).pruner("study")
            if replay.epochs_recorded:
                recorded += replay.epochs_recorded
                saved += replay.epochs_saved
                names.append(record.name)
    finally:
        store.close()
    if not recorded:
        return None, "no complete trials in the database to replay: pruning savings unknown"
    return saved / recorded, (
        f"replay of {', '.join(names)} ({recorded} trial-epochs) through this study's pruner: {saved} saved"
    )


# ---------------------------------------------------------------------------------------- forecast


def forecast_study(
    study,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    measure_steps: int = 5,
    echo=print,
) -> StudyForecast:
    """The cost forecast of a loaded study (after the small-budget overrides)."""
    from tinysiglip.cache import CacheError, open_cache
    from tinysiglip.sweep.caches import planned_cache_path
    from tinysiglip.sweep.preflight import gpu_count
    from tinysiglip.train import measure_step_seconds

    res = study.resources
    gpus_per_trial = 0.0 if study.local else float(res.gpus_per_trial or 0)
    cpus = int(num_cpus or os.cpu_count() or 1)
    gpus = gpu_count() if num_gpus is None else int(num_gpus)
    slots = int(cpus // max(res.cpus_per_trial, 1e-9))
    if gpus_per_trial:
        slots = min(slots, int(gpus // gpus_per_trial))
    if study.max_concurrent:
        slots = min(slots, int(study.max_concurrent))
    caches = {
        (s.teacher, s.dataset, s.split): planned_cache_path(s, local=study.local)
        for s in study.caches_needed()
    }
    recorded = _recorded_step_times(study.storage_url)
    timed: dict[str, StepTime] = {}
    cells, problems, device = [], [], "cpu"
    for cell in study.cells:
        paths = {split: caches[(cell.teacher, cell.dataset, split)] for split in ("train", "val")}
        search_cfg, final_cfg = _cell_configs(study, cell, paths)
        try:
            train_cache = open_cache(paths["train"])
        except CacheError as error:
            problems.append(
                f"cell {cell.name}: {error}\n  build the caches first (`tinysiglip local-world` for --local, "
                "`tinysiglip cache build` otherwise): the forecast needs the training cache's size and shapes"
            )
            continue
        key = _combination(search_cfg)
        if key not in timed:
            if recorded.get(key):
                times = recorded[key]
                timed[key] = StepTime(statistics.median(times), f"database: median of {len(times)} run(s)")
            else:
                seconds, device = measure_step_seconds(search_cfg, steps=measure_steps)
                timed[key] = StepTime(seconds, f"measured here ({measure_steps} steps)")
            echo(f"  [{cell.name}] {timed[key].seconds:.4f} s/step ({timed[key].source})", flush=True)
        batch = int(search_cfg["optim"]["batch_size"])
        per_epoch = train_cache.num_images // batch

        search_epochs, search_steps = _epochs_and_steps(search_cfg, per_epoch)
        final_epochs, final_steps = _epochs_and_steps(final_cfg, per_epoch)
        cells.append(
            CellForecast(
                cell=cell.name,
                student=str(search_cfg["student"]["name"]),
                batch_size=batch,
                image_size=int(train_cache.image_size),
                steps_per_epoch=per_epoch,
                search_trials=int(cell.trials),
                search_epochs=search_epochs,
                final_runs=len(study.final_seeds),
                final_epochs=final_epochs,
                step_seconds=timed[key].seconds,
                step_source=timed[key].source,
                run_seconds_search=search_steps * timed[key].seconds,
                run_seconds_final=final_steps * timed[key].seconds,
            )
        )
        train_cache.close()
    if problems:
        raise TinySigLIPError("cannot forecast the cost of this study:\n" + "\n".join(problems))
    saved, source = _earlier_pruning(study.storage_url, dict(study.pruner))
    notes = [f"resources: {cpus} CPU(s), {gpus} GPU(s) -> {slots} run(s) at once"]
    if gpus_per_trial and device == "cpu" and any(c.step_source.startswith("measured") for c in cells):
        notes.append(
            "WARNING: this study trains on GPUs but its steps were timed on this machine's CPU: run the "
            "forecast on a GPU machine (or with --storage holding earlier GPU runs)"
        )
    return StudyForecast(
        study=study.name,
        device=device if not gpus_per_trial else f"{device} (GPU fraction {gpus_per_trial:g})",
        hours_kind="gpu" if gpus_per_trial else "cpu",
        hours_per_second=(gpus_per_trial or float(res.cpus_per_trial)) / 3600.0,
        concurrency=slots,
        cells=cells,
        saved_fraction=saved,
        pruning_source=source,
        notes=notes,
    )


def _epochs_and_steps(config: dict, steps_per_epoch: int) -> tuple[int, int]:
    """A run's epochs and optimiser steps (capped by ``train.max_steps``, as training caps them)."""
    epochs = int(config["train"]["epochs"])
    steps = steps_per_epoch * epochs
    if config["train"].get("max_steps"):
        steps = min(steps, int(config["train"]["max_steps"]))
    return epochs, steps


def _hours(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if math.isinf(seconds):
        return "never (no run fits the resources given)"
    return f"{seconds / 3600:.2f} h ({seconds:.0f} s)"


def forecast_text(fc: StudyForecast) -> str:
    kind = "GPU-h" if fc.hours_kind == "gpu" else "CPU-h"
    lines = [
        "",
        f"forecast for {fc.study} (step times: training steps; hours are {kind}):",
        f"  {'cell':<10} {'student':<14} {'batch':>5} {'px':>4} {'steps/ep':>8} {'s/step':>8}  "
        f"{'search':>9} {'final':>7} {'trial-ep':>8} {kind:>8} {kind + ' pruned':>12}",
    ]
    f = fc.saved_fraction
    for c in fc.cells:
        pruned = None if f is None else c.seconds(f) * fc.hours_per_second
        lines.append(
            f"  {c.cell:<10} {c.student:<14} {c.batch_size:>5} {c.image_size or '?':>4} {c.steps_per_epoch:>8} "
            f"{c.step_seconds:>8.4f}  {f'{c.search_trials}x{c.search_epochs}':>9} "
            f"{f'{c.final_runs}x{c.final_epochs}':>7} {c.trial_epochs:>8} "
            f"{c.seconds() * fc.hours_per_second:>8.3f} {_hours(pruned):>12}"
        )
    lines += [
        f"  total: {fc.trial_epochs} trial-epochs, {_hours(fc.device_hours())} {kind} without pruning, "
        f"{_hours(fc.device_hours(pruned=True))} with the expected pruning",
        "  expected pruning: "
        + (f"{100 * f:.1f}% of search trial-epochs saved; " if f is not None else "")
        + fc.pruning_source,
        f"  wall time: {_duration(fc.wall_seconds())} without pruning, "
        f"{_duration(fc.wall_seconds(pruned=True))} with it; {'; '.join(fc.notes)}",
        "  step time sources: " + "; ".join(sorted({f"{c.cell}: {c.step_source}" for c in fc.cells})),
    ]
    return "\n".join(lines)


def store_forecast(storage_url: str, fc: StudyForecast):
    """Record the forecast in the study database's ``tsl_forecasts`` (the report compares it later)."""
    from tinysiglip.results.store import open_store

    with open_store(storage_url) as store:
        return store.record_forecast(
            fc.study,
            device=fc.device,
            hours_kind=fc.hours_kind,
            trial_epochs=fc.trial_epochs,
            device_hours=fc.device_hours(),
            device_hours_pruned=fc.device_hours(pruned=True),
            wall_time_s=_finite(fc.wall_seconds()),
            wall_time_pruned_s=_finite(fc.wall_seconds(pruned=True)),
            concurrency=fc.concurrency,
            pruning={"saved_fraction": fc.saved_fraction, "source": fc.pruning_source},
            cells={
                c.cell: {
                    **asdict(c),
                    "trial_epochs": c.trial_epochs,
                    "device_hours": c.seconds() * fc.hours_per_second,
                    "device_hours_pruned": None
                    if fc.saved_fraction is None
                    else c.seconds(fc.saved_fraction) * fc.hours_per_second,
                }
                for c in fc.cells
            },
        )


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def run_forecast(study, *, num_cpus: int | None = None, num_gpus: int | None = None) -> StudyForecast:
    """Forecast, print and store (what ``--dry-run --forecast`` and ``tinysiglip forecast`` do)."""
    from tinysiglip.results.store import redact_url

    print(f"forecast: timing the steps of {study.name} ...", flush=True)
    fc = forecast_study(study, num_cpus=num_cpus, num_gpus=num_gpus)
    print(forecast_text(fc))
    store_forecast(study.storage_url, fc)
    print(
        f"  stored in {redact_url(study.storage_url)} (tsl_forecasts); the report compares it with the sweep"
    )
    return fc


# ---------------------------------------------------------------------------------------------- CLI


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "forecast",
        help="forecast a study's trial-epochs, device-hours and wall time before it runs",
        description=(
            "Seconds per optimiser step per distinct student/batch/training cache (from earlier runs in the "
            "study database, else timed here on random batches of the cache's shapes) x the steps the study "
            "will run: trial-epochs, device-hours with and without the pruning its pruner achieved on the "
            "database's earlier studies (pruner replay), and wall time for the resources given. Same as "
            "`python -m tinysiglip.sweep STUDY --dry-run --forecast`; the forecast is stored in the study "
            "database and the report's cost table compares it with the sweep."
        ),
    )
    parser.add_argument("study", help="study file (studies/*.yaml)")
    parser.add_argument("--local", action="store_true", help="the study's local-world version")
    parser.add_argument(
        "--storage", metavar="URL", help="study database (step times, earlier studies; stored there)"
    )
    parser.add_argument("--run-dir", metavar="DIR", help="run folder (overrides the file)")
    parser.add_argument(
        "--num-cpus", type=_at_least_one, metavar="N", help="CPUs the sweep may use (default: all here)"
    )
    parser.add_argument(
        "--num-gpus", type=int, metavar="N", help="GPUs the sweep may use (default: all here)"
    )
    parser.add_argument("--trials-per-cell", type=_at_least_one, metavar="N")
    parser.add_argument("--epochs", type=_at_least_one, metavar="N")
    parser.add_argument("--seeds", type=_seed_list, metavar="S,S")
    parser.set_defaults(func=_run_forecast)


def _run_forecast(args: argparse.Namespace) -> int:
    from tinysiglip.sweep.options import SweepOptions
    from tinysiglip.sweep.preflight import apply_overrides
    from tinysiglip.sweep.study import load_study

    study = load_study(args.study, local=args.local, storage=args.storage, run_dir=args.run_dir)
    apply_overrides(
        study, SweepOptions(trials_per_cell=args.trials_per_cell, epochs=args.epochs, seeds=args.seeds)
    )
    run_forecast(study, num_cpus=args.num_cpus, num_gpus=args.num_gpus)
    return 0


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seed_list(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
