"""What the report and the dashboards know about a study, built from the study's DataFrames.

Everything here starts from :func:`~tinysiglip.results.frames.load_runs`,
:func:`~tinysiglip.results.frames.load_curves` and :func:`~tinysiglip.results.frames.load_teachers`
(plus the study's settings row), and every number carries the ``tsl_runs`` ids it was computed from.

* :func:`study_report_data` -> :class:`StudyData`: one :class:`CellData` per grid cell (its final runs
  summarised as mean ± std over seeds, its best trial, its cost) plus the roles the tables need, decided
  from each cell's *config* (which losses are on, which teacher, which student), not from its name:

  - ``full``: a cell with all three losses on (feat, affinity, contrast > 0);
  - ``no_kd``: a cell with feat = affinity = 0 and contrast > 0 (student without distillation);
  - ``ablation``: the cells sharing teacher + student with a full cell, when their loss switches differ;
  - ``best_distilled``: the distilled cell (feat or affinity on) with the best mean objective over its
    final runs;
  - ``scaling``: full-method cells when they use more than one teacher;
  - ``architecture``: full-method cells of the main teacher when they use more than one student.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from tinysiglip.results.frames import (
    StorageLike,
    cost_summary,
    load_curves,
    load_runs,
    load_teachers,
    reading,
)
from tinysiglip.results.ranks import load_ranks

__all__ = [
    "LOSS_TERMS",
    "METRIC_KEYS",
    "CellData",
    "Stat",
    "StudyData",
    "TeacherRow",
    "loss_weights",
    "plain",
    "search_param_names",
    "study_report_data",
]

METRIC_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")
LOSS_TERMS = ("feat", "affinity", "contrast")
PARAMS_PREFIX = "params_"


@dataclass(frozen=True)
class Stat:
    """Mean ± sample std over n values (std 0 for n = 1, None mean for n = 0)."""

    values: tuple[float, ...]
    run_ids: tuple[int, ...] = ()

    @classmethod
    def of(cls, runs: pd.DataFrame, values: pd.Series | str) -> Stat:
        """The finite values of a column (or of a Series aligned with ``runs``) and their run ids."""
        column = runs[values] if isinstance(values, str) else values
        column = pd.to_numeric(column, errors="coerce").astype("float64")
        keep = column.notna() & column.map(math.isfinite)
        return cls(tuple(float(v) for v in column[keep]), tuple(int(i) for i in runs.loc[keep, "run_id"]))

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        if not self.values:
            return None
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    def fmt(self, digits: int = 1, *, with_n: bool = True) -> str:
        if self.mean is None:
            return "—"
        text = f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"
        return f"{text} (n={self.n})" if with_n else text


def finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def plain(value: Any) -> Any:
    """A DataFrame cell as a plain Python value (pandas NA / NaN -> None, numpy scalars -> Python)."""
    if isinstance(value, (dict, list, tuple, str)) or value is None:
        return value
    if value is pd.NA or value is pd.NaT:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def row_dict(row: pd.Series) -> dict[str, Any]:
    return {k: plain(v) for k, v in row.items()}


def loss_weights(config: dict | None) -> dict[str, float]:
    """{feat, affinity, contrast} as floats (``off`` / False / missing-as-off -> 0)."""
    loss = (config or {}).get("loss") or {}
    out = {}
    for term in LOSS_TERMS:
        v = loss.get(term, 1.0)
        if v is False or v is None or (isinstance(v, str) and v.strip().lower() == "off"):
            v = 0.0
        out[term] = finite(v) or 0.0
    return out


@dataclass(frozen=True)
class TeacherRow:
    source: str
    split: str
    cells: tuple[str, ...]
    metrics: dict[str, float]
    params_total: float | None
    teacher_metrics_ids: tuple[int, ...]

    def value(self, metric: str) -> float | None:
        """The teacher's value of a student metric (``mean_r1`` = mean of I2T and T2I R@1)."""
        if metric in self.metrics:
            return finite(self.metrics[metric])
        if metric == "mean_r1":
            i2t, t2i = finite(self.metrics.get("i2t_r1")), finite(self.metrics.get("t2i_r1"))
            return None if i2t is None or t2i is None else (i2t + t2i) / 2
        return None


@dataclass
class CellData:
    name: str
    description: str
    config: dict[str, Any]  # of the best final run, else of the best trial, else of any run
    teacher_source: str | None
    student: str | None
    losses: dict[str, float]
    expected_seeds: list[int]
    runs: pd.DataFrame  # every run of the cell: rows of load_runs
    metrics: dict[str, Stat]  # test metrics over complete final runs
    objective: Stat  # last val objective over complete final runs
    params: dict[str, Stat]  # param_counts over complete final runs: total, image_tower, text_tower, heads
    best_trial: dict[str, Any] | None  # a load_runs row as plain values
    best_final: dict[str, Any] | None
    cost: dict[str, Any]
    flags: list[str] = field(default_factory=list)

    @property
    def trials(self) -> pd.DataFrame:
        return self.runs[self.runs["kind"] == "trial"]

    @property
    def finals(self) -> pd.DataFrame:
        """Every final run of the cell (any state), by seed."""
        finals = self.runs[self.runs["kind"] == "final"]
        return finals.sort_values(["seed", "run_id"], na_position="first")

    @property
    def complete_finals(self) -> pd.DataFrame:
        finals = self.finals
        return finals[finals["state"] == "complete"]

    @property
    def flagged(self) -> bool:
        return bool(self.flags)

    @property
    def final_ids(self) -> list[int]:
        return [int(i) for i in self.complete_finals["run_id"]]

    @property
    def run_ids(self) -> list[int]:
        return [int(i) for i in self.runs["run_id"]]

    @property
    def losses_on(self) -> tuple[str, ...]:
        return tuple(t for t in LOSS_TERMS if self.losses[t] > 0)

    @property
    def is_full(self) -> bool:
        return len(self.losses_on) == 3

    @property
    def is_no_kd(self) -> bool:
        return self.losses_on == ("contrast",)

    @property
    def is_distilled(self) -> bool:
        return self.losses["feat"] > 0 or self.losses["affinity"] > 0

    @property
    def strategy(self) -> str:
        """A short name from the config ("Full method", "No KD", "w/o affinity"); the losses that are
        on and the cell's own description are said elsewhere, once."""
        names = {"feat": "feature", "affinity": "affinity", "contrast": "contrastive"}
        if self.is_full:
            return "Full method"
        if self.is_no_kd:
            return "No KD"
        if not self.losses_on:
            return "no loss on"
        return "w/o " + " & ".join(names[t] for t in LOSS_TERMS if t not in self.losses_on)


@dataclass
class StudyData:
    name: str
    storage_url: str
    settings: dict[str, Any]
    local: bool
    direction: str
    metric: str
    final_seeds: list[int]
    runs: pd.DataFrame  # load_runs of this study
    curves: pd.DataFrame  # load_curves of this study
    cells: list[CellData]
    teachers: list[TeacherRow]  # test split (the tables' reference)
    val_teachers: list[TeacherRow]  # val split, when the sweep recorded one
    cost_total: dict[str, Any]
    use_gpu_hours: bool
    full: CellData | None = None
    no_kd: CellData | None = None
    ablation: list[CellData] = field(default_factory=list)
    best_distilled: CellData | None = None
    scaling: list[CellData] = field(default_factory=list)
    architecture: list[CellData] = field(default_factory=list)
    forecast: Any = None  # the latest tsl_forecasts record (ForecastRecord), if one was made
    ranks: Any = None  # StudyRanks: stored per-query test ranks (tinysiglip.results.ranks)
    intervals: Any = None  # StudyIntervals, computed on first use (tinysiglip.results.intervals)

    def cell(self, name: str) -> CellData:
        for c in self.cells:
            if c.name == name:
                return c
        raise KeyError(name)

    def teacher_for(self, cell: CellData, *, split: str = "test") -> TeacherRow | None:
        rows = self.teachers if split == "test" else self.val_teachers
        for t in rows:
            if cell.name in t.cells:
                return t
        for t in rows:
            if t.source == cell.teacher_source:
                return t
        return None

    def teachers_of(self, cells: list[CellData], *, split: str = "test") -> list[TeacherRow]:
        """The distinct teachers of these cells, in order."""
        out: list[TeacherRow] = []
        for c in cells:
            t = self.teacher_for(c, split=split)
            if t is not None and t not in out:
                out.append(t)
        return out

    @property
    def has_ablation(self) -> bool:
        return self.full is not None and len(self.ablation) > 1


def best_run(runs: pd.DataFrame, direction: str) -> dict[str, Any] | None:
    """The complete run with the best finite objective (ties: the lowest run id)."""
    ok = runs[(runs["state"] == "complete") & runs["objective"].map(lambda v: finite(v) is not None)]
    if not len(ok):
        return None
    ranked = ok.sort_values(["objective", "run_id"], ascending=[direction != "maximize", True])
    return row_dict(ranked.iloc[0])


def test_mean_r1(runs: pd.DataFrame) -> pd.Series:
    """(test I2T R@1 + test T2I R@1) / 2 per run (NaN where one is missing)."""
    cols = [c for c in ("test_i2t_r1", "test_t2i_r1") if c in runs.columns]
    if len(cols) < 2:
        return pd.Series(math.nan, index=runs.index, dtype="float64")
    return (runs["test_i2t_r1"].astype("float64") + runs["test_t2i_r1"].astype("float64")) / 2


def _stat(runs: pd.DataFrame, column: str) -> Stat:
    return Stat.of(runs, column) if column in runs.columns else Stat(())


def study_report_data(storage: StorageLike, study_name: str) -> StudyData:
    """Everything the tables and plots of one study need, from the study's DataFrames."""
    with reading(storage) as store:
        record = store.get_study(study_name)
        runs = load_runs(store, study_name)
        curves = load_curves(store, study_name)
        teachers = load_teachers(store, study_name)
        forecast = store.latest_forecast(study_name)
        ranks = load_ranks(store, study_name)
        url = store.url
    settings = dict(record.settings or {}) if record else {}
    objective = settings.get("objective") or {}
    direction = objective.get("direction", "maximize")
    final_seeds = list(settings.get("final_seeds") or [])
    cell_settings = settings.get("cells") or {}
    costs = cost_summary(runs)
    names = list(cell_settings) + sorted(set(runs["cell"]) - set(cell_settings))
    cells = [
        _cell_data(name, runs[runs["cell"] == name], cell_settings.get(name) or {}, final_seeds, direction)
        for name in names
    ]
    for c in cells:
        c.cost = costs.get(c.name, {})
    total = costs.get("__total__", {})
    data = StudyData(
        name=study_name,
        storage_url=url,
        settings=settings,
        local=bool(record.local) if record else False,
        direction=direction,
        metric=objective.get("metric", "mean_r1"),
        final_seeds=final_seeds,
        runs=runs,
        curves=curves,
        cells=cells,
        teachers=_teacher_rows(teachers, "test"),
        val_teachers=_teacher_rows(teachers, "val"),
        cost_total=total,
        use_gpu_hours=float(total.get("gpu_hours") or 0.0) > 0.0,
        forecast=forecast,
        ranks=ranks,
    )
    _assign_roles(data)
    return data


def _cell_data(
    name: str, runs: pd.DataFrame, settings: dict, final_seeds: list[int], direction: str
) -> CellData:
    finals = runs[runs["kind"] == "final"]
    complete = finals[finals["state"] == "complete"]
    best_trial = best_run(runs[runs["kind"] == "trial"], direction)
    best_final = best_run(complete, direction)
    source = best_final or best_trial or (row_dict(runs.iloc[0]) if len(runs) else {})
    config = source.get("config") or {}
    metrics = {m: _stat(complete, f"test_{m}") for m in METRIC_KEYS}
    metrics["mean_r1"] = Stat.of(complete, test_mean_r1(complete))
    cell = CellData(
        name=name,
        description=str(settings.get("description") or ""),
        config=config,
        teacher_source=((config.get("teacher") or {}).get("source")),
        student=((config.get("student") or {}).get("name")),
        losses=loss_weights(config),
        expected_seeds=final_seeds,
        runs=runs,
        metrics=metrics,
        objective=Stat.of(complete, "objective"),
        params={
            k: _stat(complete, f"param_counts_{k}") for k in ("total", "image_tower", "text_tower", "heads")
        },
        best_trial=best_trial,
        best_final=best_final,
        cost={},
    )
    if final_seeds and len(complete) < len(final_seeds):
        done = {plain(s) for s in complete["seed"]}
        missing = [s for s in final_seeds if s not in done]
        cell.flags.append(
            f"{len(complete)} of {len(final_seeds)} final seeds complete (missing seeds: "
            f"{', '.join(map(str, missing)) or '—'})"
        )
    elif not final_seeds and not len(complete):
        cell.flags.append("no complete final run")
    failed = finals[finals["state"] == "failed"]
    if len(failed):
        ids = ", ".join(str(int(i)) for i in failed["run_id"])
        cell.flags.append(f"{len(failed)} failed final run(s) (tsl_runs.id {ids})")
    return cell


def _teacher_rows(teachers: pd.DataFrame, split: str) -> list[TeacherRow]:
    """One row per teacher source: its metrics on ``split`` and the cells that use it."""
    rows = teachers[teachers["split"] == split] if len(teachers) else teachers
    out = []
    for source, group in rows.groupby("teacher_source", sort=False):
        first = row_dict(group.iloc[0])
        metrics = {k: v for k, v in first.items() if k in (*METRIC_KEYS, "mean_r1") and v is not None}
        totals = [plain(v) for v in group.get("teacher_params_total", pd.Series(dtype=object))]
        totals = [finite(v) for v in totals if finite(v) is not None]
        out.append(
            TeacherRow(
                source=str(source),
                split=split,
                cells=tuple(group["cell"]),
                metrics=metrics,
                params_total=totals[-1] if totals else None,
                teacher_metrics_ids=tuple(int(i) for i in group["teacher_metrics_id"]),
            )
        )
    return out


def _assign_roles(data: StudyData) -> None:
    sign = 1.0 if data.direction == "maximize" else -1.0
    fulls = [c for c in data.cells if c.is_full]
    # the ablation group: cells that share teacher and student with a full cell, with differing losses
    best_group: list[CellData] = []
    best_full = None
    for f in fulls:
        group = [c for c in data.cells if (c.teacher_source, c.student) == (f.teacher_source, f.student)]
        if len({c.losses_on for c in group}) > 1 and len(group) > len(best_group):
            best_group, best_full = group, f
    if best_full is not None:
        data.full = best_full
        data.ablation = best_group
        data.no_kd = next((c for c in best_group if c.is_no_kd), None)
    else:
        data.full = fulls[0] if len(fulls) == 1 else None
        data.no_kd = next((c for c in data.cells if c.is_no_kd), None)
    distilled = [c for c in data.cells if c.is_distilled and c.objective.mean is not None]
    if distilled:
        data.best_distilled = max(distilled, key=lambda c: sign * c.objective.mean)
    if len({c.teacher_source for c in fulls}) > 1:
        data.scaling = sorted(fulls, key=lambda c: (str(c.teacher_source), str(c.student), c.name))
    if fulls:
        main_teacher = (data.full or fulls[0]).teacher_source
        same = [c for c in fulls if c.teacher_source == main_teacher]
        if len({c.student for c in same}) > 1:
            data.architecture = sorted(same, key=lambda c: (str(c.student), c.name))


def search_param_names(cell: CellData) -> list[str]:
    """The searched parameters of a cell's trials (dotted names, without the ``params_`` prefix)."""
    trials = cell.trials
    return [
        c.removeprefix(PARAMS_PREFIX)
        for c in trials.columns
        if c.startswith(PARAMS_PREFIX) and trials[c].notna().any()
    ]
