"""Study results as pandas DataFrames: the one reading path of notebooks, the report and the dashboards.

``load_runs(storage, study=None)`` has one row per ``tsl_runs`` row (search trials and final runs),
``load_curves(storage, study=None)`` one row per ``tsl_evaluations`` row (every validation the pruner
saw), ``load_teachers(storage, study=None)`` one row per ``tsl_teacher_metrics`` row. ``storage`` is a
SQLAlchemy URL, a SQLite path or an open :class:`~tinysiglip.results.store.StudyStore`; ``study`` is a
study name, a list of names, or None for every study in the database.

The frames are built from the tables' columns, not from a list kept here: a column added to a table
appears in its frame without code changes. Naming follows ``optuna.Study.trials_dataframe()``:

* ``id`` -> ``run_id`` (``evaluation_id``, ``teacher_metrics_id``), ``study_name`` -> ``study``,
  ``status`` -> ``state``, ``optuna_trial_number`` -> ``trial`` (the cell's Optuna trial number; NULL
  for final runs), ``source_trial_number`` -> ``source_trial`` (final runs: the trial they re-run);
* JSON fields of flat values become one column per key: ``params_<name>`` (``params_loss.feat``),
  ``val_<metric>`` (last validation), ``test_<metric>`` (final runs), ``param_counts_<part>``;
  ``teacher_params_<part>`` and the teacher's metrics under their own names in ``load_teachers``;
  other JSON fields (``config``, ``cache_fingerprints``) stay one column of dicts;
* integer columns use pandas' nullable ``Int64``, timestamps are UTC ``datetime64``;
* ``node`` is always there (NULL until runs record the node they ran on).

Every row carries its ``run_id``: a number in a table or plot traces back to ``tsl_runs.id``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import JSON, Boolean, DateTime, Float, Integer, Table, select

from tinysiglip.results.schema import EvaluationRow, RunRow, TeacherMetricsRow
from tinysiglip.results.store import StudyStore, open_existing

__all__ = [
    "CURVE_KEYS",
    "RUN_KEYS",
    "cost_summary",
    "epochs_saved",
    "load_curves",
    "load_runs",
    "load_teachers",
    "reading",
]

StorageLike = str | Path | StudyStore
StudySelection = str | Sequence[str] | None

_RENAMES = {
    "id": "run_id",
    "study_name": "study",
    "status": "state",
    "optuna_trial_number": "trial",
    "source_trial_number": "source_trial",
}
# JSON fields spread into one column per key, and the prefix of those columns.
_RUN_SPREAD = {
    "params": "params_",
    "val_metrics": "val_",
    "test_metrics": "test_",
    "param_counts": "param_counts_",
}
# What identifies a run, first in both frames (then everything else in table order).
RUN_KEYS = ("run_id", "study", "cell", "kind", "trial", "seed", "state")
CURVE_KEYS = (*RUN_KEYS, "epoch", "step", "objective")
_RUNS_LEADING = (*RUN_KEYS, "objective")
_FUTURE_COLUMNS = ("node",)  # promised to notebooks before the table has them
# The tables the frames are built from: every column they have becomes a column of the frame.
RUNS: Table = RunRow.__table__
EVALUATIONS: Table = EvaluationRow.__table__
TEACHERS: Table = TeacherMetricsRow.__table__


@contextmanager
def reading(storage: StorageLike):
    """The store itself when given one (left open), else the database opened for reading and closed."""
    if isinstance(storage, StudyStore):
        yield storage
        return
    store = open_existing(storage)
    try:
        yield store
    finally:
        store.close()


def _studies(study: StudySelection) -> list[str] | None:
    if study is None:
        return None
    return [study] if isinstance(study, str) else list(study)


def _read(storage: StorageLike, query, study_column, study: StudySelection) -> list[dict[str, Any]]:
    """The rows of ``query`` (restricted to the selected studies) as dicts."""
    names = _studies(study)
    if names is not None:
        query = query.where(study_column.in_(names))
    with reading(storage) as store, store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def _frame(
    records: list[dict[str, Any]],
    table: Table,
    *,
    renames: Mapping[str, str],
    spread: Mapping[str, str],
    leading: Iterable[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Records of ``table`` -> DataFrame: typed by the table's column types, JSON fields spread."""
    columns: dict[str, pd.Series | list] = {}
    for col in table.columns:
        values = [r.get(col.name) for r in records]
        if col.name in spread:
            for key, series in _spread(values, spread[col.name]).items():
                columns[key] = series
            continue
        columns[renames.get(col.name, col.name)] = _typed(values, col.type)
    for name, value in (extra or {}).items():
        columns.setdefault(name, [value] * len(records))
    frame = pd.DataFrame(columns, index=pd.RangeIndex(len(records)))
    first = [c for c in leading if c in frame.columns]
    return frame[first + [c for c in frame.columns if c not in first]]


def _typed(values: list, sql_type) -> pd.Series | list:
    if isinstance(sql_type, JSON):
        return pd.Series(values, dtype=object)
    if isinstance(sql_type, Boolean):
        return pd.Series(values, dtype="boolean")
    if isinstance(sql_type, Integer):
        return pd.Series(values, dtype="Int64")
    if isinstance(sql_type, Float):
        return pd.Series([_number(v) for v in values], dtype="float64")
    if isinstance(sql_type, DateTime):
        return pd.to_datetime(pd.Series(values, dtype=object), utc=True)
    return pd.Series(values, dtype=object)


def _number(value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.nan
    return v


def _spread(values: list[Any], prefix: str) -> dict[str, pd.Series]:
    """[{key: value}] -> {prefix + key: column}; keys in order of first appearance."""
    keys: list[str] = []
    for v in values:
        for k in v or {}:
            if k not in keys:
                keys.append(k)
    out = {}
    for k in keys:
        col = [(v or {}).get(k) for v in values]
        present = [x for x in col if x is not None]
        if present and all(isinstance(x, int) and not isinstance(x, bool) for x in present):
            dtype = "Int64"
        elif present and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in present):
            dtype = "float64"
        else:
            dtype = object
        out[prefix + k] = pd.Series(col, dtype=dtype)
    return out


def load_runs(storage: StorageLike, study: StudySelection = None) -> pd.DataFrame:
    """One row per run (search trial or final run) of the selected studies, ordered by run id."""
    records = _read(storage, select(RUNS).order_by(RUNS.c.id), RUNS.c.study_name, study)
    return _frame(
        records,
        RUNS,
        renames=_RENAMES,
        spread=_RUN_SPREAD,
        leading=_RUNS_LEADING,
        extra=dict.fromkeys(_FUTURE_COLUMNS),
    )


def load_curves(storage: StorageLike, study: StudySelection = None) -> pd.DataFrame:
    """One row per validation evaluation of every run of the selected studies (learning curves),
    with the run's identity (``run_id``, study, cell, kind, trial, seed, state) on every row."""
    identity = [
        RUNS.c[name] for name in ("study_name", "cell", "kind", "optuna_trial_number", "seed", "status")
    ]
    query = (
        select(EVALUATIONS, *identity)
        .join(RUNS, RUNS.c.id == EVALUATIONS.c.run_id)
        .order_by(EVALUATIONS.c.run_id, EVALUATIONS.c.epoch, EVALUATIONS.c.step)
    )
    records = _read(storage, query, RUNS.c.study_name, study)
    frame = _frame(records, EVALUATIONS, renames={"id": "evaluation_id"}, spread={"metrics": "val_"})
    for col in identity:  # the run's identity, under the names load_runs uses
        frame[_RENAMES.get(col.name, col.name)] = _typed([r[col.name] for r in records], col.type)
    first = [c for c in CURVE_KEYS if c in frame.columns]
    return frame[first + [c for c in frame.columns if c not in first]]


def load_teachers(storage: StorageLike, study: StudySelection = None) -> pd.DataFrame:
    """One row per teacher reference (study, cell, teacher, split): its Recall@K on cached embeddings."""
    records = _read(storage, select(TEACHERS).order_by(TEACHERS.c.id), TEACHERS.c.study_name, study)
    return _frame(
        records,
        TEACHERS,
        renames={"id": "teacher_metrics_id", "study_name": "study"},
        spread={"metrics": "", "teacher_params": "teacher_params_"},
        leading=("teacher_metrics_id", "study", "cell", "teacher_source", "split"),
    )


# ---------------------------------------------------------------------------------------------- cost


def epochs_saved(runs: pd.DataFrame) -> pd.Series:
    """Trial-epochs saved by pruning per run: budget minus epochs done for a pruned run, else 0."""
    saved = (runs["epochs_budget"] - runs["epochs_done"].fillna(0)).clip(lower=0)
    return saved.where((runs["state"] == "pruned") & runs["epochs_budget"].notna(), 0).fillna(0).astype(int)


def cost_summary(runs: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per cell (and ``"__total__"``), from :func:`load_runs` rows: trials by state, final runs
    (complete / failed), trial-epochs saved by pruning, wall time, GPU-hours and CPU-hours."""
    if not len(runs):
        return {}
    runs = runs.assign(epochs_saved=epochs_saved(runs))
    groups = [*runs.groupby("cell", sort=False), ("__total__", runs)]
    return {str(key): _cost(group) for key, group in groups}


def _cost(runs: pd.DataFrame) -> dict[str, Any]:
    trials = runs[runs["kind"] == "trial"]
    finals = runs[runs["kind"] == "final"]
    states = trials["state"].value_counts()
    return {
        "trials": len(trials),
        **{f"trials_{s}": int(states.get(s, 0)) for s in ("complete", "pruned", "failed", "running")},
        **{f"trials_{s}": int(n) for s, n in states.items()},
        "final_runs": len(finals),
        "final_complete": int((finals["state"] == "complete").sum()),
        "final_failed": int((finals["state"] == "failed").sum()),
        "epochs_saved_by_pruning": int(trials["epochs_saved"].sum()),
        "wall_time_s": float(runs["wall_time_s"].fillna(0).sum()),
        "gpu_hours": float(runs["gpu_hours"].fillna(0).sum()),
        "cpu_hours": float(runs["cpu_hours"].fillna(0).sum()),
    }
