"""Data for the dashboards: plain dicts and lists from a study's DataFrames (no plotting here).

Each function takes the study's :class:`~tinysiglip.results.report_data.StudyData` (built from
:func:`~tinysiglip.results.frames.load_runs` / ``load_curves`` / ``load_teachers``) and returns
JSON-able data; an empty result (no rows) means the plot does not apply to this study, and ``"note"``
says why. Parameter importances read each cell's Optuna study from the same database with Optuna's own
API. Every point carries the ``tsl_runs`` id it comes from.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from tinysiglip.results.frames import epochs_saved
from tinysiglip.results.report_data import StudyData, TeacherRow, plain, search_param_names
from tinysiglip.results.store import optuna_storage

__all__ = [
    "DATA_FUNCTIONS",
    "ablation_bars",
    "cost_over_time",
    "learning_curves",
    "optimization_history",
    "parallel_coordinates",
    "param_importances",
    "pruner_replay",
    "scaling",
]


def _f(x: Any) -> float | None:
    x = plain(x)
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _teacher_refs(teachers: list[TeacherRow], metric: str) -> list[dict]:
    """Reference lines: one per teacher that has a value for ``metric``."""
    refs = []
    for t in teachers:
        value = t.value(metric)
        if value is not None:
            refs.append(
                {"source": t.source, "split": t.split, "value": value, "ids": list(t.teacher_metrics_ids)}
            )
    return refs


def ablation_bars(data: StudyData) -> dict:
    """Test R@1 (mean, std, n) per cell (the ablation cells if the study has them, else every cell),
    and the teacher's test R@1 as reference lines."""
    cells = sorted(data.ablation, key=lambda c: (not c.is_full, c.name)) if data.has_ablation else data.cells
    rows = []
    for c in cells:
        if c.metrics["i2t_r1"].n == 0:
            continue
        rows.append(
            {
                "cell": c.name,
                "label": f"{c.name}: {c.strategy}",
                "flagged": c.flagged,
                "full": c is data.full,
                "run_ids": c.final_ids,
                **{
                    m: {"mean": c.metrics[m].mean, "std": c.metrics[m].std, "n": c.metrics[m].n}
                    for m in ("i2t_r1", "t2i_r1")
                },
            }
        )
    shown = [c for c in cells if c.name in {r["cell"] for r in rows}]
    teachers = data.teachers_of(shown)
    return {
        "rows": rows,
        "note": "" if rows else "no complete final runs with test metrics yet",
        "ablation": data.has_ablation,
        "teachers": {m: _teacher_refs(teachers, m) for m in ("i2t_r1", "t2i_r1")},
    }


def parallel_coordinates(data: StudyData) -> dict:
    """Per cell: every complete or pruned trial's searched params and its (last) objective."""
    cells = []
    for c in data.cells:
        names = search_param_names(c)
        trials = c.trials[c.trials["state"].isin(["complete", "pruned"]) & c.trials["objective"].notna()]
        if not names or len(trials) < 2:
            continue
        cells.append(
            {
                "cell": c.name,
                "params": names,
                "trials": [
                    {
                        "run_id": int(r["run_id"]),
                        "number": plain(r["trial"]),
                        "state": r["state"],
                        "objective": _f(r["objective"]),
                        "values": {n: _f(r[f"params_{n}"]) for n in names},
                    }
                    for _, r in trials.iterrows()
                ],
            }
        )
    return {"cells": cells, "metric": data.metric, "note": "" if cells else "fewer than 2 trials per cell"}


def learning_curves(data: StudyData) -> dict:
    """Every run's validation curve (epoch, objective) in one overlay per study: cells, their search
    trials (pruned ones stop early) and their final runs; the teacher's value as reference lines."""
    curves = data.curves[data.curves["objective"].notna()]
    runs = data.runs.set_index("run_id")
    cells = []
    for c in data.cells:
        series = []
        for run_id, points in curves[curves["cell"] == c.name].groupby("run_id", sort=True):
            run = runs.loc[run_id]
            series.append(
                {
                    "run_id": int(run_id),
                    "kind": run["kind"],
                    "number": plain(run["trial"]),
                    "seed": plain(run["seed"]),
                    "state": run["state"],
                    "epochs": [int(e) for e in points["epoch"]],
                    "values": [float(v) for v in points["objective"]],
                    "epochs_budget": plain(run["epochs_budget"]),
                }
            )
        if series:
            cells.append({"cell": c.name, "label": f"{c.name}: {c.strategy}", "runs": series})
    # the teacher on the curves' own split when the sweep recorded it, else on the test split
    with_curves = [c for c in data.cells if c.name in {x["cell"] for x in cells}]
    teachers = data.teachers_of(with_curves, split="val") or data.teachers_of(with_curves)
    max_epoch = int(curves["epoch"].max()) if len(curves) else 0
    return {
        "cells": cells,
        "metric": data.metric,
        "max_epoch": max_epoch,
        "teachers": _teacher_refs(teachers, data.metric),
        "note": "" if cells else "no evaluations recorded",
    }


def optimization_history(data: StudyData) -> dict:
    """Per cell: trial number, objective, state, and the best-so-far over complete trials."""
    sign = 1.0 if data.direction == "maximize" else -1.0
    cells = []
    for c in data.cells:
        points, best, best_curve = [], None, []
        for _, r in c.trials.sort_values(["trial", "run_id"], na_position="first").iterrows():
            v = _f(r["objective"])
            if v is None:
                continue
            number = plain(r["trial"])
            points.append({"number": number, "value": v, "state": r["state"], "run_id": int(r["run_id"])})
            if r["state"] == "complete" and (best is None or sign * v > sign * best):
                best = v
            best_curve.append(best)
        if points:
            cells.append({"cell": c.name, "points": points, "best": best_curve})
    return {"cells": cells, "metric": data.metric, "direction": data.direction, "note": ""}


def param_importances(data: StudyData) -> dict:
    """Per cell: optuna.importance on the cell's Optuna study (loaded from the same database)."""
    import optuna

    storage = optuna_storage(data.storage_url)
    cells, notes = [], []
    for c in data.cells:
        name = f"{data.name}/{c.name}"
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            notes.append(f"{c.name}: no Optuna study {name!r} in the database")
            continue
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        params = {p for t in complete for p in t.params}
        if len(complete) < 2 or not params:
            notes.append(
                f"{c.name}: importances need at least 2 complete trials with searched params "
                f"(has {len(complete)} complete, {len(params)} param(s))"
            )
            continue
        try:
            try:  # Optuna's default evaluator; PED-ANOVA when that one needs a missing package
                imp = optuna.importance.get_param_importances(study)
            except ImportError:
                imp = optuna.importance.get_param_importances(
                    study, evaluator=optuna.importance.PedAnovaImportanceEvaluator()
                )
        except Exception as exc:  # noqa: BLE001 - e.g. a constant objective or a single-valued param
            notes.append(f"{c.name}: importances not computable ({type(exc).__name__}: {exc})")
            continue
        if not imp:
            notes.append(f"{c.name}: no importances (params constant)")
            continue
        cells.append(
            {"cell": c.name, "n_trials": len(complete), "importances": {k: float(v) for k, v in imp.items()}}
        )
    return {"cells": cells, "note": "; ".join(notes)}


def scaling(data: StudyData) -> dict:
    """Teacher × student: one series per student, x = teacher (with its params and R@1)."""
    if not data.scaling:
        return {"series": [], "note": "no full-method cells with more than one teacher in this study"}
    series: dict[str, list[dict]] = {}
    for c in data.scaling:
        t = data.teacher_for(c)
        s = c.metrics["mean_r1"]
        if s.n == 0:
            continue
        series.setdefault(str(c.student), []).append(
            {
                "cell": c.name,
                "teacher": str(c.teacher_source),
                "teacher_params": t.params_total if t else None,
                "teacher_mean_r1": t.value("mean_r1") if t else None,
                "mean": s.mean,
                "std": s.std,
                "n": s.n,
                "run_ids": c.final_ids,
            }
        )
    return {"series": [{"student": k, "points": v} for k, v in series.items()], "note": ""}


def cost_over_time(data: StudyData) -> dict:
    """Runs in finishing order: cumulative compute hours, pruned trials and trial-epochs saved."""
    key = "gpu_hours" if data.use_gpu_hours else "cpu_hours"
    runs = data.runs[data.runs["finished_at"].notna()]
    runs = runs.assign(epochs_saved=epochs_saved(runs)).sort_values(["finished_at", "run_id"])
    pruned = (runs["kind"] == "trial") & (runs["state"] == "pruned")
    frame = pd.DataFrame(
        {
            "time": runs["finished_at"].map(lambda t: t.isoformat()),
            "run_id": runs["run_id"].astype(int),
            "cell": runs["cell"],
            "kind": runs["kind"],
            "status": runs["state"],
            "hours": runs[key].fillna(0.0).cumsum(),
            "pruned": pruned.astype(int).cumsum(),
            "epochs_saved": runs["epochs_saved"].where(pruned, 0).cumsum(),
        }
    )
    points = [{k: plain(v) for k, v in row.items()} for row in frame.to_dict("records")]
    return {
        "points": points,
        "hours_label": "GPU-hours" if data.use_gpu_hours else "CPU-hours",
        "note": "" if points else "no finished runs",
    }


def pruner_replay(data: StudyData) -> dict:
    """The study's complete trials replayed through other pruners (:mod:`.replay`): per pruner the
    trial-epochs used and saved, per cell whether the best trial survives and the regret."""
    from tinysiglip.results.replay import replay_frames, replay_text

    result = replay_frames(
        data.runs,
        data.curves,
        study=data.name,
        direction=data.direction,
        metric=data.metric,
        study_pruner=data.settings.get("pruner"),
    )
    pruners = []
    for p in result.pruners:
        cells = [
            {
                "cell": c.cell,
                "trials": c.trials,
                "epochs_used": c.epochs_used,
                "epochs_recorded": c.epochs_recorded,
                "pruned": list(c.pruned),
                "best_trial": c.best_trial,
                "best_kept": c.best_survives,
                "regret": c.regret(result.direction),
            }
            for c in p.cells
        ]
        pruners.append(
            {
                "label": p.label,
                "settings": p.settings,
                "epochs_used": p.epochs_used,
                "epochs_saved": p.epochs_saved,
                "saved_fraction": p.saved_fraction,
                "trials_pruned": p.trials_pruned,
                "best_kept": p.best_survived,
                "cells": cells,
            }
        )
    has_trials = bool(pruners and pruners[0]["cells"])
    return {
        "pruners": pruners if has_trials else [],
        "text": replay_text(result),
        "note": (
            "Complete search trials replayed in recorded order through fresh Optuna pruners "
            "(`tinysiglip prune-replay` prints the same). "
            + (
                "Not replayed (their curves stop early): "
                + ", ".join(f"{n} {state}" for state, n in result.left_out.items())
                + ". "
                if result.left_out
                else ""
            )
            + "Pruning would also have changed what the sampler proposed next; a replay cannot show that."
        )
        if has_trials
        else "no complete search trial with a learning curve to replay",
    }


DATA_FUNCTIONS = {
    "ablation_bars": ablation_bars,
    "parallel_coordinates": parallel_coordinates,
    "learning_curves": learning_curves,
    "optimization_history": optimization_history,
    "param_importances": param_importances,
    "scaling": scaling,
    "cost_over_time": cost_over_time,
    "pruner_replay": pruner_replay,
}
