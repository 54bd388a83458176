"""Pruner replay: what other Optuna pruners would have done with a study's recorded learning curves.

    tinysiglip prune-replay --storage URL [--study NAME] [--pruner median:n_startup_trials=2 ...]

The complete search trials of each cell are fed, evaluation by evaluation, to a fresh in-memory Optuna
study per (pruner, cell) holding that pruner: each trial reports its recorded objective at each
recorded epoch (``trial.report(value, step=epoch)``, as the sweep's scheduler does) and stops when
``should_prune()`` says so. Evaluations are replayed in the order they were recorded
(``tsl_evaluations.created_at``), so trials that ran side by side are interleaved the way the study's
pruner saw them; a cell with an evaluation lacking a timestamp is replayed trial by trial in start
order. The in-memory study carries the cell's Optuna study name, so Hyperband assigns the same
brackets as it would have in the sweep.

Per pruner: trial-epochs used and saved (against running every trial to its last recorded epoch), and
per cell whether the recorded best trial survives, else the regret (how much worse the best surviving
trial's objective is). What a replay cannot know: pruned and failed trials' curves stop early, so by
default they are left out (and counted); with ``--with-pruned`` pruned trials are replayed as far as
they were recorded, and a pruner that would have let one run on is charged its whole epoch budget while
its outcome stays unknown (it never counts as a cell's best). Nor can it know that pruning changes which
parameters the sampler proposes next.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tinysiglip.errors import TinySigLIPError

__all__ = [
    "REPLAY_PRUNERS",
    "CellReplay",
    "PrunerReplay",
    "RecordedTrial",
    "ReplayResult",
    "default_pruner_settings",
    "parse_pruner_spec",
    "recorded_trials",
    "replay_frames",
    "register",
    "replay_pruner",
    "replay_study",
    "replay_text",
    "wilcoxon_available",
]

# The pruners replayed by default, in this order (none first: the reference).
REPLAY_PRUNERS = ("none", "median", "percentile", "successive_halving", "hyperband", "wilcoxon")
_WILCOXON_DEFAULTS = {"p_threshold": 0.1, "n_startup_steps": 2}  # Optuna's own defaults


class ReplayError(TinySigLIPError):
    """A pruner spec or study cannot be replayed."""


@dataclass(frozen=True)
class RecordedTrial:
    """One search trial's learning curve, as the study database recorded it."""

    cell: str
    trial: int  # the cell's Optuna trial number
    run_id: int  # tsl_runs.id
    objective: float  # the value told to Optuna when it completed
    epochs: tuple[int, ...]  # evaluation epochs, ascending
    values: tuple[float, ...]  # the objective at each of those epochs
    times: tuple[float | None, ...] = ()  # when each evaluation was recorded (POSIX seconds)
    started: float | None = None  # when the trial started (POSIX seconds)
    complete: bool = True  # False: pruned in the study, its curve stops early
    budget: int | None = None  # the trial's epoch budget

    @property
    def epochs_recorded(self) -> int:
        """Trial-epochs it takes with no pruning: a pruned trial would have run its whole budget."""
        last = int(self.epochs[-1]) if self.epochs else 0
        return last if self.complete else max(last, int(self.budget or 0))


@dataclass(frozen=True)
class CellReplay:
    cell: str
    trials: int
    epochs_recorded: int  # Σ last recorded epoch of every replayed trial
    epochs_used: int  # Σ epochs each trial ran before this pruner stopped it (or all of them)
    pruned: tuple[int, ...]  # trial numbers this pruner stopped
    best_trial: int | None  # the recorded best complete trial
    best_value: float | None
    survivor_trial: int | None  # the best trial this pruner let finish
    survivor_value: float | None
    ran_on: tuple[int, ...] = ()  # pruned-in-the-study trials this pruner would not have stopped

    @property
    def epochs_saved(self) -> int:
        return self.epochs_recorded - self.epochs_used

    @property
    def best_survives(self) -> bool:
        return self.best_trial is not None and self.best_trial not in self.pruned

    def regret(self, direction: str) -> float | None:
        """How much worse the best surviving trial is than the recorded best (0 when it survives)."""
        if self.best_value is None or self.survivor_value is None:
            return None
        gap = self.best_value - self.survivor_value
        return gap if direction == "maximize" else -gap


@dataclass(frozen=True)
class PrunerReplay:
    label: str  # "median", or "median (study)" for the study's own settings
    settings: dict[str, Any]
    cells: tuple[CellReplay, ...]

    @property
    def epochs_recorded(self) -> int:
        return sum(c.epochs_recorded for c in self.cells)

    @property
    def epochs_used(self) -> int:
        return sum(c.epochs_used for c in self.cells)

    @property
    def epochs_saved(self) -> int:
        return self.epochs_recorded - self.epochs_used

    @property
    def saved_fraction(self) -> float:
        return self.epochs_saved / self.epochs_recorded if self.epochs_recorded else 0.0

    @property
    def trials_pruned(self) -> int:
        return sum(len(c.pruned) for c in self.cells)

    @property
    def best_survived(self) -> int:
        return sum(c.best_survives for c in self.cells)

    @property
    def trials_ran_on(self) -> int:
        return sum(len(c.ran_on) for c in self.cells)


@dataclass
class ReplayResult:
    study: str
    direction: str
    metric: str
    study_pruner: dict[str, Any]
    pruners: list[PrunerReplay]
    left_out: dict[str, int] = field(default_factory=dict)  # trial state -> how many were not replayed
    order: dict[str, str] = field(default_factory=dict)  # cell -> "recorded" | "trial start"
    include_pruned: bool = False

    def pruner(self, label: str) -> PrunerReplay:
        for p in self.pruners:
            if p.label == label:
                return p
        raise KeyError(label)


# ------------------------------------------------------------------------------------- recorded data


def _seconds(value: Any) -> float | None:
    try:
        if value is None or value != value:  # None / NaT / NaN
            return None
        return float(value.timestamp())
    except (AttributeError, TypeError, ValueError):
        return None


def recorded_trials(
    runs, curves, *, include_pruned: bool = False
) -> tuple[list[RecordedTrial], dict[str, int]]:
    """Complete (and with ``include_pruned`` pruned) search trials with their learning curves, from
    :func:`~.frames.load_runs` and :func:`~.frames.load_curves` frames of one study; and how many trials
    were left out, by state."""
    trials = runs[runs["kind"] == "trial"]
    replayed = ("complete", "pruned") if include_pruned else ("complete",)
    left_out = {
        str(k): int(v) for k, v in trials[~trials["state"].isin(replayed)]["state"].value_counts().items()
    }
    complete = trials[trials["state"].isin(replayed)]
    by_run = {int(rid): group for rid, group in curves.groupby("run_id")} if len(curves) else {}
    out: list[RecordedTrial] = []
    for row in complete.itertuples(index=False):
        group = by_run.get(int(row.run_id))
        values = None if group is None else group.dropna(subset=["objective"]).sort_values(["epoch", "step"])
        objective = row.objective
        if values is None or not len(values) or objective is None or not math.isfinite(float(objective)):
            key = f"{row.state} without curve"
            left_out[key] = left_out.get(key, 0) + 1
            continue
        out.append(
            RecordedTrial(
                cell=str(row.cell),
                trial=int(row.trial),
                run_id=int(row.run_id),
                objective=float(objective),
                epochs=tuple(int(e) for e in values["epoch"]),
                values=tuple(float(v) for v in values["objective"]),
                times=tuple(_seconds(t) for t in values["created_at"]) if "created_at" in values else (),
                started=_seconds(row.started_at),
                complete=row.state == "complete",
                budget=_whole(row.epochs_budget),
            )
        )
    return out, left_out


def _whole(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):  # None, pd.NA
        return None


# ------------------------------------------------------------------------------------------ pruners


def wilcoxon_available() -> bool:
    """Optuna's WilcoxonPruner runs scipy's signed-rank test (scipy is a dependency; an install without it skips)."""
    import importlib.util

    return importlib.util.find_spec("scipy") is not None


def _model_settings(kind: str, given: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    """Validated settings of pruner ``kind`` (the study files' defaults, or Optuna's for wilcoxon)."""
    if kind == "wilcoxon":
        if not wilcoxon_available():
            raise ReplayError(f"{where}: the wilcoxon pruner needs scipy (pip install scipy)")
        unknown = set(given) - set(_WILCOXON_DEFAULTS)
        if unknown:
            raise ReplayError(
                f"{where}: wilcoxon has no setting {', '.join(sorted(unknown))}; "
                f"settings: {', '.join(_WILCOXON_DEFAULTS)}"
            )
        return {"type": "wilcoxon", **_WILCOXON_DEFAULTS, **given}
    from pydantic import ValidationError

    from tinysiglip.sweep.study.models import PRUNERS

    if kind not in PRUNERS:
        raise ReplayError(f"{where}: unknown pruner {kind!r}; use one of {', '.join(REPLAY_PRUNERS)}")
    try:
        return PRUNERS[kind].model_validate({**given, "type": kind}).model_dump()
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise ReplayError(f"{where}: {problems}") from None


def default_pruner_settings(study_pruner: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """label -> settings for every replayed pruner: each type's study-file defaults, with the study's
    own start-up/warm-up settings carried over where that type has them (so the comparison is about
    the rule, not the warm-up); the study's own pruner appears once more, exactly as it ran."""
    from tinysiglip.sweep.study.models import PRUNERS

    recorded = dict(study_pruner or {})
    out: dict[str, dict[str, Any]] = {}
    for kind in REPLAY_PRUNERS:
        if kind == "wilcoxon" and not wilcoxon_available():
            continue  # replay_text says it was skipped
        fields = set(PRUNERS[kind].model_fields) if kind in PRUNERS else set(_WILCOXON_DEFAULTS)
        shared = {k: v for k, v in recorded.items() if k in fields and k != "type"}
        out[kind] = _model_settings(kind, shared, where=f"pruner {kind}")
    kind = recorded.get("type")
    if kind and kind in out and out[kind] != {**recorded}:
        out[f"{kind} (study)"] = _model_settings(
            kind, {k: v for k, v in recorded.items() if k != "type"}, where="study"
        )
    return out


def parse_pruner_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"median:n_startup_trials=2,n_warmup_steps=1"`` -> (label, validated settings)."""
    import yaml

    kind, _, rest = spec.partition(":")
    given: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ReplayError(f"--pruner {spec}: expected KEY=VALUE after the type, got {item!r}")
        given[key.strip()] = yaml.safe_load(value)
    return spec, _model_settings(kind.strip(), given, where=f"--pruner {spec}")


# ------------------------------------------------------------------------------------------- replay


def _event_order(trials: Sequence[RecordedTrial]) -> tuple[list[tuple[RecordedTrial, int]], str]:
    """Every (trial, evaluation index) of one cell in the order the pruner would have seen them."""
    events = [(t, i) for t in trials for i in range(len(t.epochs))]
    if all(len(t.times) == len(t.epochs) and all(x is not None for x in t.times) for t in trials):
        events.sort(key=lambda e: (e[0].times[e[1]], e[0].trial, e[1]))
        return events, "recorded"
    start = {t.trial: (t.started if t.started is not None else math.inf, t.trial) for t in trials}
    events.sort(key=lambda e: (start[e[0].trial], e[1]))
    return events, "trial start"


def _best(trials: Sequence[RecordedTrial], direction: str) -> RecordedTrial | None:
    if not trials:
        return None
    sign = -1.0 if direction == "maximize" else 1.0
    return min(trials, key=lambda t: (sign * t.objective, t.trial))


def _replay_cell(
    trials: Sequence[RecordedTrial],
    settings: Mapping[str, Any],
    *,
    direction: str,
    study_name: str,
    max_epochs: int,
) -> tuple[CellReplay, str]:
    import optuna

    from tinysiglip.sweep.study.plan import make_pruner

    study = optuna.create_study(
        study_name=study_name,
        direction=direction,
        pruner=make_pruner(dict(settings), max_epochs=max_epochs),
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    events, order = _event_order(trials)
    live: dict[int, optuna.trial.Trial] = {}
    used: dict[int, int] = {}
    pruned: list[int] = []
    ran_on: list[int] = []
    for recorded, index in events:
        if recorded.trial in pruned:
            continue
        if recorded.trial not in live:
            live[recorded.trial] = study.ask()
        trial = live[recorded.trial]
        epoch = recorded.epochs[index]
        trial.report(recorded.values[index], step=epoch)
        used[recorded.trial] = epoch
        if trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            pruned.append(recorded.trial)
        elif index == len(recorded.epochs) - 1 and recorded.complete:
            study.tell(trial, recorded.objective)
        elif index == len(recorded.epochs) - 1:  # would have run on: its later values are unknown
            used[recorded.trial] = recorded.epochs_recorded  # charged its whole budget; left RUNNING
            ran_on.append(recorded.trial)
    complete = [t for t in trials if t.complete]
    best = _best(complete, direction)
    survivor = _best([t for t in complete if t.trial not in pruned], direction)
    replay = CellReplay(
        cell=trials[0].cell if trials else "",
        trials=len(trials),
        epochs_recorded=sum(t.epochs_recorded for t in trials),
        epochs_used=sum(used.values()),
        pruned=tuple(sorted(pruned)),
        best_trial=best.trial if best else None,
        best_value=best.objective if best else None,
        survivor_trial=survivor.trial if survivor else None,
        survivor_value=survivor.objective if survivor else None,
        ran_on=tuple(sorted(ran_on)),
    )
    return replay, order


def replay_pruner(
    trials: Sequence[RecordedTrial],
    settings: Mapping[str, Any],
    *,
    direction: str,
    study: str = "study",
    label: str | None = None,
    max_epochs: int | None = None,
) -> tuple[PrunerReplay, dict[str, str]]:
    """Replay every cell's trials through a fresh pruner of these settings; (result, cell -> order)."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    max_epochs = max_epochs or max((t.epochs_recorded for t in trials), default=1)
    cells: dict[str, list[RecordedTrial]] = {}
    for t in trials:
        cells.setdefault(t.cell, []).append(t)
    if settings.get("type") == "hyperband" and settings.get("max_resource") is None:
        settings = {**settings, "max_resource": max_epochs}  # what the sweep gives it: the epoch budget
    results, orders = [], {}
    for cell, group in cells.items():
        replay, orders[cell] = _replay_cell(
            group, settings, direction=direction, study_name=f"{study}/{cell}", max_epochs=max_epochs
        )
        results.append(replay)
    return PrunerReplay(label or str(settings["type"]), dict(settings), tuple(results)), orders


def replay_frames(
    runs,
    curves,
    *,
    study: str,
    direction: str,
    metric: str = "",
    study_pruner: Mapping[str, Any] | None = None,
    pruners: Mapping[str, Mapping[str, Any]] | None = None,
    include_pruned: bool = False,
) -> ReplayResult:
    """Replay one study's frames (:func:`~.frames.load_runs`, :func:`~.frames.load_curves`) through
    ``pruners`` (label -> settings; default :func:`default_pruner_settings`)."""
    trials, left_out = recorded_trials(runs, curves, include_pruned=include_pruned)
    budgets = runs.loc[runs["kind"] == "trial", "epochs_budget"].dropna()
    max_epochs = int(budgets.max()) if len(budgets) else None
    pruners = pruners if pruners is not None else default_pruner_settings(study_pruner)
    result = ReplayResult(
        study, direction, metric, dict(study_pruner or {}), [], left_out, include_pruned=include_pruned
    )
    for label, settings in pruners.items():
        replay, result.order = replay_pruner(
            trials, settings, direction=direction, study=study, label=label, max_epochs=max_epochs
        )
        result.pruners.append(replay)
    return result


def replay_study(
    storage,
    study: str,
    pruners: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    include_pruned: bool = False,
) -> ReplayResult:
    """Replay a recorded study from its database (URL, SQLite path or open store)."""
    from tinysiglip.results.frames import load_curves, load_runs, reading

    with reading(storage) as store:
        record = store.get_study(study)
        if record is None:
            known = ", ".join(s.name for s in store.studies()) or "none"
            raise ReplayError(f"no study {study!r} in the database; studies there: {known}")
        runs, curves = load_runs(store, study), load_curves(store, study)
    objective = (record.settings or {}).get("objective") or {}
    return replay_frames(
        runs,
        curves,
        study=study,
        direction=str(objective.get("direction") or "maximize"),
        metric=str(objective.get("metric") or ""),
        study_pruner=(record.settings or {}).get("pruner"),
        pruners=pruners,
        include_pruned=include_pruned,
    )


# ------------------------------------------------------------------------------------------ output


def _settings_text(settings: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items() if k != "type") or "-"


def replay_text(result: ReplayResult) -> str:
    """The replay as plain text: one summary line per pruner, then each cell's outcome."""
    reference = result.pruners[0].epochs_recorded if result.pruners else 0
    n_cells = len(result.pruners[0].cells) if result.pruners else 0
    n_trials = sum(c.trials for c in result.pruners[0].cells) if result.pruners else 0
    lines = [
        f"pruner replay of {result.study}: {n_trials} {'complete and pruned' if result.include_pruned else 'complete'} "
        f"trial(s) in {n_cells} cell(s), {reference} trial-epochs with no pruning; objective "
        f"{result.metric or '?'} ({result.direction})",
        f"study's pruner: {result.study_pruner.get('type', '?')} ({_settings_text(result.study_pruner)})",
    ]
    if result.left_out:
        lines.append(
            "not replayed (their curves stop early, so their later values are unknown): "
            + ", ".join(f"{n} {state}" for state, n in result.left_out.items())
            + ("" if result.include_pruned else "; --with-pruned replays pruned ones as far as recorded")
        )
    if result.include_pruned:
        lines.append(
            "pruned trials are replayed as far as recorded; a pruner that lets one run on is charged its whole "
            "budget ('ran on'), and its outcome is unknown (never a cell's best)"
        )
    if not any(p.settings.get("type") == "wilcoxon" for p in result.pruners) and not wilcoxon_available():
        lines.append("wilcoxon: not replayed (Optuna's WilcoxonPruner needs scipy, which is not installed)")
    orders = sorted(set(result.order.values()))
    width = max([28, *(len(p.label) for p in result.pruners)])
    lines.append(f"evaluation order: {' / '.join(orders) or '-'}")
    lines += [
        "",
        f"{'pruner':<{width}} {'epochs used':>11} {'saved':>6} {'saved %':>7} {'pruned':>6} {'best kept':>9} {'max regret':>10}"
        + (f" {'ran on':>6}" if result.include_pruned else ""),
    ]
    for p in result.pruners:
        regrets = [r for r in (c.regret(result.direction) for c in p.cells) if r is not None]
        worst = max(regrets, default=0.0)
        lines.append(
            f"{p.label:<{width}} {p.epochs_used:>11} {p.epochs_saved:>6} {100 * p.saved_fraction:>6.1f}% "
            f"{p.trials_pruned:>6} {p.best_survived:>4}/{len(p.cells):<4} {worst:>10.4g}"
            + (f" {p.trials_ran_on:>6}" if result.include_pruned else "")
        )
    if result.pruners:
        lines += [
            "",
            "per cell: trial-epochs used/with no pruning, then 'kept' when the cell's best trial survives, "
            "else the regret (recorded best − best surviving)",
            f"{'cell':<12} {'trials':>6}  "
            + " ".join(f"{p.label:>{max(20, len(p.label))}}" for p in result.pruners),
        ]
        for i, cell in enumerate(result.pruners[0].cells):
            entries = []
            for p in result.pruners:
                c = p.cells[i]
                regret = c.regret(result.direction)
                outcome = "kept" if c.best_survives else f"-{regret:.3g}" if regret is not None else "lost"
                entries.append(f"{f'{c.epochs_used}/{c.epochs_recorded} {outcome}':>{max(20, len(p.label))}}")
            lines.append(f"{cell.cell:<12} {cell.trials:>6}  " + " ".join(entries))
        lines.append(
            "settings: " + "; ".join(f"{p.label} [{_settings_text(p.settings)}]" for p in result.pruners)
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- CLI


def register(subparsers: argparse._SubParsersAction) -> None:
    from tinysiglip.results.sources import add_source_arguments

    parser = subparsers.add_parser(
        "prune-replay",
        help="replay a study's recorded learning curves through other Optuna pruners",
        description=(
            "Replay the complete search trials of a study, in the order they ran, through fresh Optuna pruners "
            "(default: " + ", ".join(REPLAY_PRUNERS) + ", with the study's own warm-up settings, and the "
            "study's pruner as it ran) and print, per pruner, the trial-epochs used and saved and whether each "
            "cell's best trial would have survived (else the regret in the objective)."
        ),
    )
    add_source_arguments(parser)
    parser.add_argument(
        "--pruner",
        action="append",
        default=[],
        metavar="TYPE[:KEY=VALUE,...]",
        help="replay this pruner instead of the default set (repeatable), e.g. median:n_warmup_steps=1",
    )
    parser.add_argument(
        "--with-pruned",
        action="store_true",
        help="also replay the study's pruned trials as far as they were recorded (a pruner that lets one run "
        "on is charged its whole epoch budget; its outcome stays unknown)",
    )
    parser.set_defaults(func=_run_replay)


def _run_replay(args: argparse.Namespace) -> int:
    from tinysiglip.results.sources import open_studies

    pruners = dict(parse_pruner_spec(spec) for spec in args.pruner) or None
    opened = open_studies(args)
    if opened is None:
        return 2
    _, store, names = opened
    try:
        for i, name in enumerate(names):
            print(
                ("\n" if i else "")
                + replay_text(replay_study(store, name, pruners, include_pruned=args.with_pruned))
            )
    finally:
        store.close()
    return 0
