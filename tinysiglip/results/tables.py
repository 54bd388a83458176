"""The report's tables: Markdown, CSV and LaTeX renderings of :class:`~.report_data.StudyData`.

Which cells play which role is decided from their configs (see :mod:`tinysiglip.results.report_data`):

* ``table1_main``: teacher (its cached test embeddings), student without KD, best distilled student;
* ``table2_ablation``: each ablation cell's I2T / T2I R@1 and the delta vs the full method;
* ``table_scaling`` (teacher × student), ``table_architecture`` (students under one teacher);
* ``table_cells`` (every cell; the fallback when the tables above do not apply), ``table_best_params``
  (the best trial's λ per cell) and ``table_cost`` (trials, pruning, epochs saved, GPU/CPU-hours).

Every figure is a mean over the final runs' seeds with its spread, "62.4 ± 0.8 (n=3)"; the CSV has
``_mean``, ``_std`` and ``_n`` columns. Where the final runs stored per-query test ranks, each row also
has its R@1 95% interval and every difference is "Δ [low, high]" with * when the interval excludes 0
(paired bootstrap over test images, :mod:`.intervals`); the CSV has ``k``, ``k_low``, ``k_high``. A cell with fewer complete final runs than the study's seeds, or
with failed final runs, is marked † with a footnote. Each table lists the ``tsl_runs.id`` it used.
"""

from __future__ import annotations

from typing import Any

from tinysiglip.results.differences import delta as _delta
from tinysiglip.results.differences import reference_differences, table1_differences
from tinysiglip.results.intervals import (
    CI_CSV_KEYS,
    CI_HEADER,
    DELTA_CSV_KEYS,
    difference_cells,
    interval_cells,
    intervals_for,
    teacher_group,
)
from tinysiglip.results.report_data import METRIC_KEYS, CellData, Stat, StudyData, search_param_names
from tinysiglip.results.table_format import DAGGER, Table

__all__ = ["METRIC_HEADERS", "Table", "build_tables"]

METRIC_HEADERS = {
    "i2t_r1": "I2T R@1",
    "i2t_r5": "I2T R@5",
    "i2t_r10": "I2T R@10",
    "t2i_r1": "T2I R@1",
    "t2i_r5": "T2I R@5",
    "t2i_r10": "T2I R@10",
}


# ------------------------------------------------------------------------------------------- tables


def _flag_name(c: CellData) -> str:
    return f"{c.name}{DAGGER}" if c.flagged else c.name


def _flag_notes(cells: list[CellData]) -> list[str]:
    return [f"{DAGGER} {c.name}: " + "; ".join(c.flags) + "." for c in cells if c.flagged]


def _params_m(stat: Stat) -> str | None:
    if stat.mean is None:
        return None
    v = stat.mean
    if v >= 1e6:
        return f"{v / 1e6:.1f}M"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k"
    return f"{v:.0f}"


def _spread_note(data: StudyData) -> str:
    seeds = ", ".join(map(str, data.final_seeds)) or "—"
    return (
        f"Test-split Recall@K in %: mean ± sample std over the final runs' seeds ({seeds}); "
        "n = complete final runs."
    )


def _ids(cells: list[CellData]) -> list[int]:
    return [i for c in cells for i in c.final_ids]


def table1(data: StudyData) -> Table | None:
    if data.no_kd is None or data.best_distilled is None:
        return None
    cols = [("model", "Model"), ("cell", "Cell")]
    cols += [(m, METRIC_HEADERS[m]) for m in METRIC_KEYS] + [("r1_ci", CI_HEADER), ("params", "Params")]
    rows = []
    notes = []
    intervals = intervals_for(data)
    teacher = data.teacher_for(data.best_distilled)
    if teacher is not None:
        rows.append(
            {
                "model": f"Teacher ({teacher.source})",
                "cell": "—",
                **{m: _teacher_value(teacher.metrics.get(m)) for m in METRIC_KEYS},
                **interval_cells(intervals.of(teacher_group(data.best_distilled))),
                "params": _params_m(Stat((teacher.params_total,))) if teacher.params_total else None,
                "params_total": teacher.params_total,
                "runs": "tsl_teacher_metrics.id " + " ".join(map(str, teacher.teacher_metrics_ids)),
            }
        )
        notes.append(
            "Teacher: retrieval on its own cached test embeddings (tsl_teacher_metrics.id "
            + ", ".join(map(str, teacher.teacher_metrics_ids))
            + "); one deterministic value, no seeds."
        )
    for label, c in (
        ("Student, no KD", data.no_kd),
        (f"Student, distilled (best): {data.best_distilled.strategy}", data.best_distilled),
    ):
        rows.append(
            {
                "model": label,
                "cell": _flag_name(c),
                **{m: c.metrics[m] for m in METRIC_KEYS},
                **interval_cells(intervals.of(c.name)),
                "params": _params_m(c.params["total"]),
                "params_total": c.params["total"].mean,
                "params_image": c.params["image_tower"].mean,
                "params_text": c.params["text_tower"].mean,
                "params_heads": c.params["heads"].mean,
                "runs": c.final_ids,
            }
        )
    rows += table1_differences(data, with_teacher=teacher is not None)
    split = [
        f"{c.name}: image {_params_m(c.params['image_tower'])}, text {_params_m(c.params['text_tower'])}, "
        f"heads {_params_m(c.params['heads'])}"
        for c in (data.no_kd, data.best_distilled)
    ]
    notes.append("Params split (image / text tower): " + "; ".join(split) + ".")
    notes.append(
        f"Best distilled = distilled cell with the best mean val {data.metric} over its final runs "
        f"({data.best_distilled.name}: {data.best_distilled.objective.fmt(2)}). "
        f"No KD = cell whose config has loss.feat = loss.affinity = 0 ({data.no_kd.name})."
    )
    notes.append(_spread_note(data))
    notes.append(intervals.note())
    notes += _flag_notes([data.no_kd, data.best_distilled])
    return Table(
        "table1_main",
        "Table 1: Main results - distillation vs teacher and no-KD student",
        cols,
        rows,
        notes,
        _ids([data.no_kd, data.best_distilled]),
        csv_extra=[
            *CI_CSV_KEYS,
            *DELTA_CSV_KEYS,
            "params_total",
            "params_image",
            "params_text",
            "params_heads",
            "runs",
        ],
    )


def _teacher_value(v: Any) -> str | None:
    return None if v is None else f"{float(v):.1f}"


def table2(data: StudyData) -> Table | None:
    if not data.has_ablation:
        return None
    full = data.full
    cols = [
        ("strategy", "Strategy"),
        ("cell", "Cell"),
        ("losses", "Losses on"),
        ("i2t_r1", "I2T R@1"),
        ("t2i_r1", "T2I R@1"),
        ("delta", "Δ mean R@1 vs full"),
        ("delta_i2t_r1", "Δ I2T R@1"),
        ("delta_t2i_r1", "Δ T2I R@1"),
        ("r1_ci", CI_HEADER),
    ]
    rows = []
    intervals = intervals_for(data)
    cells = sorted(data.ablation, key=lambda c: (not c.is_full, c.name))
    for c in cells:
        diff = None if c is full else intervals.diff(c.name, full.name)
        rows.append(
            {
                "strategy": c.strategy,
                "description": c.description,
                "cell": _flag_name(c),
                "losses": "+".join(c.losses_on) or "none",
                "i2t_r1": c.metrics["i2t_r1"],
                "t2i_r1": c.metrics["t2i_r1"],
                "delta": "-" if c is full else _delta(c.metrics["mean_r1"], full.metrics["mean_r1"]),
                "delta_i2t_r1": None if c is full else _delta(c.metrics["i2t_r1"], full.metrics["i2t_r1"]),
                "delta_t2i_r1": None if c is full else _delta(c.metrics["t2i_r1"], full.metrics["t2i_r1"]),
                **difference_cells(diff),
                **interval_cells(intervals.of(c.name)),
                "runs": c.final_ids,
            }
        )
        if c is full:
            rows[-1].update(delta_i2t_r1="-", delta_t2i_r1="-")
    notes = [
        f"Full method = {full.name}, the cell whose config has loss.feat, loss.affinity and loss.contrast "
        f"all > 0 (teacher {full.teacher_source}, student {full.student}); the ablation cells share its "
        "teacher and student and differ in which losses are on.",
        "Δ = a cell's R@1 minus the full method's (mean R@1 = (I2T + T2I)/2), with its 95% interval "
        "where the runs stored ranks; otherwise ± is the standard error of the difference of seed means, "
        "sqrt(s_a²/n_a + s_b²/n_b).",
        _spread_note(data),
        intervals.note(),
        *_flag_notes(cells),
    ]
    return Table(
        "table2_ablation",
        "Table 2: Ablation - loss components",
        cols,
        rows,
        notes,
        _ids(cells),
        csv_extra=["description", *CI_CSV_KEYS, "runs"],
    )


def _cell_row(data: StudyData, c: CellData) -> dict[str, Any]:
    t = data.teacher_for(c)
    return {
        "cell": _flag_name(c),
        "description": c.description or c.strategy,
        "teacher": c.teacher_source,
        "student": c.student,
        "losses": "+".join(c.losses_on) or "none",
        "objective": c.objective,
        **{m: c.metrics[m] for m in METRIC_KEYS},
        "params": _params_m(c.params["total"]),
        "params_total": c.params["total"].mean,
        "params_image": c.params["image_tower"].mean,
        "params_text": c.params["text_tower"].mean,
        "teacher_params": t.params_total if t else None,
        "teacher_i2t_r1": _teacher_value(t.metrics.get("i2t_r1")) if t else None,
        "teacher_t2i_r1": _teacher_value(t.metrics.get("t2i_r1")) if t else None,
        **interval_cells(intervals_for(data).of(c.name)),
        "runs": c.final_ids,
    }


_EXTRA = ["params_total", "params_image", "params_text", *CI_CSV_KEYS, *DELTA_CSV_KEYS, "runs"]
_REFERENCE_COLUMNS = [("r1_ci", CI_HEADER), ("reference", "Compared with"), ("delta", "Δ mean R@1")]


def _compared_rows(data: StudyData, table: list[CellData]) -> list[dict[str, Any]]:
    """Rows of a scaling/architecture table, each with its own intervals and Δ from its reference."""
    return [_cell_row(data, c) | reference_differences(data, c, table) for c in table]


def _compared_note(data: StudyData, reference: str) -> str:
    return f"Δ mean R@1: a cell minus {reference}. " + intervals_for(data).note()


def table_scaling(data: StudyData) -> Table | None:
    if not data.scaling:
        return None
    cols = [
        ("teacher", "Teacher"),
        ("teacher_i2t_r1", "Teacher I2T R@1"),
        ("student", "Student"),
        ("cell", "Cell"),
        ("i2t_r1", "I2T R@1"),
        ("t2i_r1", "T2I R@1"),
        *_REFERENCE_COLUMNS,
        ("params", "Student params"),
    ]
    rows = _compared_rows(data, data.scaling)
    notes = [
        "Scaling: full-method cells (all three losses on), teacher × student.",
        _compared_note(data, "the cell of the same student with the smallest teacher"),
        _spread_note(data),
        *_flag_notes(data.scaling),
    ]
    return Table(
        "table_scaling",
        "Scaling: teacher × student (full method)",
        cols,
        rows,
        notes,
        _ids(data.scaling),
        csv_extra=["teacher_params", "teacher_t2i_r1", *_EXTRA],
    )


def table_architecture(data: StudyData) -> Table | None:
    if not data.architecture:
        return None
    cols = [("student", "Student"), ("cell", "Cell")]
    cols += [(m, METRIC_HEADERS[m]) for m in METRIC_KEYS] + [*_REFERENCE_COLUMNS, ("params", "Params")]
    rows = _compared_rows(data, data.architecture)
    notes = [
        f"Architectures: full-method cells of teacher {data.architecture[0].teacher_source}.",
        _compared_note(data, f"the first cell ({data.architecture[0].name})"),
        _spread_note(data),
        *_flag_notes(data.architecture),
    ]
    return Table(
        "table_architecture",
        "Architectures: students under one teacher (full method)",
        cols,
        rows,
        notes,
        _ids(data.architecture),
        csv_extra=_EXTRA,
    )


def table_cells(data: StudyData) -> Table:
    cols = [
        ("cell", "Cell"),
        ("description", "Description"),
        ("student", "Student"),
        ("losses", "Losses on"),
        ("objective", f"val {data.metric}"),
        ("i2t_r1", "I2T R@1"),
        ("t2i_r1", "T2I R@1"),
        ("params", "Params"),
    ]
    rows = [_cell_row(data, c) for c in data.cells]
    notes = [
        f"val {data.metric}: the final runs' last validation objective ({data.direction}).",
        _spread_note(data),
        *_flag_notes(data.cells),
    ]
    return Table(
        "table_cells",
        f"Per-cell results: {data.name}",
        cols,
        rows,
        notes,
        _ids(data.cells),
        csv_extra=["teacher", "i2t_r5", "i2t_r10", "t2i_r5", "t2i_r10", *_EXTRA],
    )


def table_best_params(data: StudyData) -> Table:
    names: list[str] = []
    for c in data.cells:
        for n in search_param_names(c):
            if n not in names:
                names.append(n)
    cols = [
        ("cell", "Cell"),
        ("trial", "Best trial"),
        ("run_id", "Run id"),
        ("objective", f"val {data.metric}"),
    ]
    cols += [(n, n) for n in names]
    rows, ids = [], []
    for c in data.cells:
        b = c.best_trial
        row: dict[str, Any] = {"cell": c.name}
        if b is not None:
            ids.append(b["run_id"])
            row.update(trial=b["trial"], run_id=b["run_id"], objective=b["objective"])
            for n in names:
                v = b.get(f"params_{n}")
                row[n] = f"{v:.4g}" if isinstance(v, float) else v
        rows.append(row)
    notes = [
        "The best complete search trial per cell (the λ the final runs re-ran); — = not searched in that "
        "cell (a loss that is off has no λ).",
    ]
    return Table("table_best_params", "Best λ per cell (search trials)", cols, rows, notes, ids)


def table_cost(data: StudyData) -> Table:
    hours = "gpu_hours" if data.use_gpu_hours else "cpu_hours"
    cols = [
        ("cell", "Cell"),
        ("trials", "Trials run"),
        ("trials_complete", "Complete"),
        ("trials_pruned", "Pruned"),
        ("trials_failed", "Failed"),
        ("epochs_saved_by_pruning", "Trial-epochs saved"),
        ("final", "Final runs (complete/failed)"),
        ("wall_h", "Wall h"),
        (hours, "GPU-h" if data.use_gpu_hours else "CPU-h (no GPU used)"),
    ]
    rows, ids = [], []
    for c in data.cells:
        cost = c.cost or {}
        rows.append({"cell": c.name, **_cost_row(cost)})
        ids += c.run_ids
    rows.append({"cell": "Total (study)", **_cost_row(data.cost_total or {})})
    notes = [
        "Trial-epochs saved = Σ over pruned trials of (epoch budget − epochs done). "
        + (
            "GPU-h = wall time × GPU fraction."
            if data.use_gpu_hours
            else "CPU-h = wall time × CPUs per trial."
        )
    ]
    return Table(
        "table_cost",
        "Cost: trials, pruning and compute",
        cols,
        rows,
        notes,
        ids,
        csv_extra=[
            "trials_running",
            "final_runs",
            "final_complete",
            "final_failed",
            "wall_time_s",
            "gpu_hours",
            "cpu_hours",
        ],
    )


def _cost_row(cost: dict) -> dict[str, Any]:
    out = dict(cost)
    out["final"] = f"{cost.get('final_complete', 0)}/{cost.get('final_failed', 0)}"
    out["wall_h"] = round(float(cost.get("wall_time_s") or 0.0) / 3600.0, 4)
    for k in ("gpu_hours", "cpu_hours"):
        out[k] = round(float(cost.get(k) or 0.0), 4)
    for k in ("trials", "trials_complete", "trials_pruned", "trials_failed", "epochs_saved_by_pruning"):
        out.setdefault(k, 0)
    return out


def table_forecast(data: StudyData) -> Table | None:
    """The cost forecast made before the sweep (``--dry-run --forecast``) next to what the sweep used."""
    fc = data.forecast
    if fc is None:
        return None
    gpu = fc.hours_kind == "gpu"
    unit = "GPU-h" if gpu else "CPU-h"
    pruned_known = fc.device_hours_pruned is not None
    cols = [
        ("cell", "Cell"),
        ("epochs_forecast", "Trial-epochs forecast"),
        ("epochs_actual", "Trial-epochs done"),
        ("hours_forecast", f"{unit} forecast" + (" (with pruning)" if pruned_known else "")),
        ("hours_actual", f"{unit} used"),
        ("ratio", "Used / forecast"),
    ]
    column = "gpu_hours" if gpu else "cpu_hours"
    runs = data.runs
    rows, ids = [], []
    forecast_cells = fc.cells or {}
    for c in data.cells:
        cell_runs = runs[runs["cell"] == c.name]
        planned = forecast_cells.get(c.name) or {}
        rows.append(
            _forecast_row(
                c.name,
                planned.get("trial_epochs"),
                int(cell_runs["epochs_done"].fillna(0).sum()),
                planned.get("device_hours_pruned" if pruned_known else "device_hours"),
                float(cell_runs[column].fillna(0).sum()),
            )
        )
        ids += c.run_ids
    rows.append(
        _forecast_row(
            "Total (study)",
            fc.trial_epochs,
            int(runs["epochs_done"].fillna(0).sum()),
            fc.device_hours_pruned if pruned_known else fc.device_hours,
            float(runs[column].fillna(0).sum()),
        )
    )
    wall = (runs["finished_at"].max() - runs["started_at"].min()).total_seconds() if len(runs) else None
    planned_wall = fc.wall_time_pruned_s if pruned_known else fc.wall_time_s
    rows.append(
        {
            "cell": "Wall time (h)",
            "hours_forecast": None if planned_wall is None else round(planned_wall / 3600, 4),
            "hours_actual": None if wall is None or wall != wall else round(wall / 3600, 4),
            "ratio": None
            if not planned_wall or wall is None or wall != wall
            else round(wall / planned_wall, 2),
        }
    )
    made = fc.created_at.strftime("%Y-%m-%d %H:%M UTC") if fc.created_at else "?"
    notes = [
        f"Forecast made {made} on {fc.device} for {fc.concurrency} run(s) at once. Forecast trial-epochs "
        "count every trial to its budget; done counts the epochs run (pruned trials stop early).",
        "Expected pruning: " + str((fc.pruning or {}).get("source") or "none") + ".",
        "Step times: "
        + "; ".join(sorted({f"{k}: {v.get('step_source')}" for k, v in forecast_cells.items()}))
        + ". Wall time used = first start to last finish of the study's runs.",
    ]
    return Table("table_forecast", "Cost: forecast before the sweep vs used", cols, rows, notes, ids)


def _forecast_row(
    cell: str, epochs_forecast, epochs_actual: int, hours_forecast, hours_actual: float
) -> dict:
    return {
        "cell": cell,
        "epochs_forecast": epochs_forecast,
        "epochs_actual": epochs_actual,
        "hours_forecast": None if hours_forecast is None else round(float(hours_forecast), 4),
        "hours_actual": round(hours_actual, 4),
        "ratio": round(hours_actual / hours_forecast, 2) if hours_forecast else None,
    }


def build_tables(data: StudyData) -> list[Table]:
    """The tables that apply to this study, in report order (per-cell + cost always)."""
    tables = [t for t in (table1(data), table2(data), table_scaling(data), table_architecture(data)) if t]
    tables += [table_cells(data), table_best_params(data), table_cost(data)]
    tables += [t for t in (table_forecast(data),) if t]
    return tables
