"""Data for the dashboards: plain dicts and lists from the study database (no plotting here).

Each function takes ``(store, data)`` — the :class:`~tinysiglip.results.store.StudyStore` and the study's
:class:`~tinysiglip.results.report_data.StudyData` — and returns JSON-able data; an empty result (no rows) means
the plot does not apply to this study, and ``"note"`` says why. Parameter importances read each cell's
Optuna study from the same database with Optuna's own API.
"""

from __future__ import annotations

import math
from typing import Any

from tinysiglip.results.report_data import StudyData, search_param_names
from tinysiglip.results.store import StudyStore, optuna_storage

__all__ = [
    "DATA_FUNCTIONS",
    "ablation_bars",
    "cost_over_time",
    "learning_curves",
    "optimization_history",
    "parallel_coordinates",
    "param_importances",
    "scaling",
]


def _f(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def ablation_bars(store: StudyStore, data: StudyData) -> dict:
    """Test R@1 (mean, std, n) per cell: the ablation cells if the study has them, else every cell."""
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
    note = "" if rows else "no complete final runs with test metrics yet"
    return {"rows": rows, "note": note, "ablation": data.has_ablation}


def parallel_coordinates(store: StudyStore, data: StudyData) -> dict:
    """Per cell: every complete or pruned trial's searched params and its (last) objective."""
    cells = []
    for c in data.cells:
        names = search_param_names(c)
        trials = [r for r in c.trials if r.status in ("complete", "pruned") and _f(r.objective) is not None]
        if not names or len(trials) < 2:
            continue
        cells.append(
            {
                "cell": c.name,
                "params": names,
                "trials": [
                    {
                        "run_id": r.id,
                        "number": r.optuna_trial_number,
                        "state": r.status,
                        "objective": _f(r.objective),
                        "values": {n: _f((r.params or {}).get(n)) for n in names},
                    }
                    for r in trials
                ],
            }
        )
    return {"cells": cells, "metric": data.metric, "note": "" if cells else "fewer than 2 trials per cell"}


def learning_curves(store: StudyStore, data: StudyData) -> dict:
    """Per cell: each trial's evaluations (epoch, objective) and its status; pruned ones stop early."""
    evals = store.evaluations_for_study(data.name, kind="trial")
    cells = []
    for c in data.cells:
        trials = []
        for r in c.trials:
            pts = [(e.epoch, _f(e.objective)) for e in evals.get(r.id, []) if _f(e.objective) is not None]
            if not pts:
                continue
            trials.append(
                {
                    "run_id": r.id,
                    "number": r.optuna_trial_number,
                    "state": r.status,
                    "epochs": [p[0] for p in pts],
                    "values": [p[1] for p in pts],
                    "epochs_budget": r.epochs_budget,
                }
            )
        if trials:
            cells.append({"cell": c.name, "trials": trials})
    return {"cells": cells, "metric": data.metric, "note": "" if cells else "no evaluations recorded"}


def optimization_history(store: StudyStore, data: StudyData) -> dict:
    """Per cell: trial number, objective, state, and the best-so-far over complete trials."""
    sign = 1.0 if data.direction == "maximize" else -1.0
    cells = []
    for c in data.cells:
        points, best, best_curve = [], None, []
        for r in sorted(c.trials, key=lambda r: (r.optuna_trial_number or 0, r.id)):
            v = _f(r.objective)
            if v is None:
                continue
            points.append({"number": r.optuna_trial_number, "value": v, "state": r.status, "run_id": r.id})
            if r.status == "complete" and (best is None or sign * v > sign * best):
                best = v
            best_curve.append(best)
        if points:
            cells.append({"cell": c.name, "points": points, "best": best_curve})
    return {"cells": cells, "metric": data.metric, "direction": data.direction, "note": ""}


def param_importances(store: StudyStore, data: StudyData) -> dict:
    """Per cell: optuna.importance on the cell's Optuna study (loaded from the same database)."""
    import optuna

    storage = optuna_storage(store.url)
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


def scaling(store: StudyStore, data: StudyData) -> dict:
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
                "teacher_mean_r1": (
                    (_f(t.metrics.get("i2t_r1")) + _f(t.metrics.get("t2i_r1"))) / 2
                    if t
                    and _f(t.metrics.get("i2t_r1")) is not None
                    and _f(t.metrics.get("t2i_r1")) is not None
                    else None
                ),
                "mean": s.mean,
                "std": s.std,
                "n": s.n,
                "run_ids": c.final_ids,
            }
        )
    return {"series": [{"student": k, "points": v} for k, v in series.items()], "note": ""}


def cost_over_time(store: StudyStore, data: StudyData) -> dict:
    """Runs in finishing order: cumulative compute hours, pruned trials and trial-epochs saved."""
    runs = [r for c in data.cells for r in (*c.trials, *c.finals) if r.finished_at is not None]
    runs.sort(key=lambda r: (r.finished_at, r.id))
    key = "gpu_hours" if data.use_gpu_hours else "cpu_hours"
    hours = pruned = saved = 0.0
    points = []
    for r in runs:
        hours += float(getattr(r, key) or 0.0)
        if r.kind == "trial" and r.status == "pruned":
            pruned += 1
            saved += r.epochs_saved
        points.append(
            {
                "time": r.finished_at.isoformat(),
                "run_id": r.id,
                "cell": r.cell,
                "kind": r.kind,
                "status": r.status,
                "hours": hours,
                "pruned": int(pruned),
                "epochs_saved": int(saved),
            }
        )
    return {
        "points": points,
        "hours_label": "GPU-hours" if data.use_gpu_hours else "CPU-hours",
        "note": "" if points else "no finished runs",
    }


DATA_FUNCTIONS = {
    "ablation_bars": ablation_bars,
    "parallel_coordinates": parallel_coordinates,
    "learning_curves": learning_curves,
    "optimization_history": optimization_history,
    "param_importances": param_importances,
    "scaling": scaling,
    "cost_over_time": cost_over_time,
}
