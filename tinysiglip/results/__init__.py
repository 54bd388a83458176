"""Everything that reads the study database, and the store that writes it.

    store -> frames (load_runs / load_curves / load_teachers: pandas DataFrames)
          -> report_data (cells, roles, mean ± std over seeds) -> tables + report (Markdown/CSV/LaTeX)
                                                               -> dashboard_data -> plots + dashboards

The report, the dashboards and a notebook read the same DataFrames, so a number means the same thing
everywhere and traces back to ``tsl_runs.id``. The readers are imported on first use: the sweep driver
and its Ray workers import the store without loading pandas or the report.
"""

from __future__ import annotations

import importlib
from typing import Any

from tinysiglip.results.schema import (
    RUN_STATUSES,
    TABLE_NAMES,
    EvaluationRecord,
    RunRecord,
    StudyRecord,
    TeacherMetricsRecord,
    run_key,
)
from tinysiglip.results.store import (
    StoreError,
    StudyStore,
    default_sqlite_url,
    open_existing,
    open_store,
    optuna_storage,
    redact_url,
)

_LAZY = {
    "QueryRanks": "ranks",
    "bootstrap_recall": "bootstrap",
    "load_ranks": "ranks",
    "cost_summary": "frames",
    "load_curves": "frames",
    "load_runs": "frames",
    "load_teachers": "frames",
    "StudyData": "report_data",
    "study_report_data": "report_data",
    "write_report": "report",
    "write_dashboards": "dashboards",
}

__all__ = [
    "RUN_STATUSES",
    "TABLE_NAMES",
    "EvaluationRecord",
    "QueryRanks",
    "RunRecord",
    "StoreError",
    "StudyData",
    "StudyRecord",
    "StudyStore",
    "TeacherMetricsRecord",
    "bootstrap_recall",
    "cost_summary",
    "default_sqlite_url",
    "load_curves",
    "load_ranks",
    "load_runs",
    "load_teachers",
    "open_existing",
    "open_store",
    "optuna_storage",
    "redact_url",
    "run_key",
    "study_report_data",
    "write_dashboards",
    "write_report",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
