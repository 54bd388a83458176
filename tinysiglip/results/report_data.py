"""What the report and the dashboards know about a study, read from the study database only.

Every number here comes from rows of ``tsl_runs`` / ``tsl_evaluations`` / ``tsl_teacher_metrics`` /
``tsl_studies`` (see :mod:`tinysiglip.results.store`), and carries the ids of the runs it was computed from.

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

from tinysiglip.results.store import RunRecord, StudyStore

__all__ = [
    "LOSS_TERMS",
    "METRIC_KEYS",
    "CellData",
    "Stat",
    "StudyData",
    "TeacherRow",
    "loss_weights",
    "study_report_data",
]

METRIC_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")
LOSS_TERMS = ("feat", "affinity", "contrast")


@dataclass(frozen=True)
class Stat:
    """Mean ± sample std over n values (std 0 for n = 1, None mean for n = 0)."""

    values: tuple[float, ...]
    run_ids: tuple[int, ...] = ()

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


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def stat_of(runs: list[RunRecord], get) -> Stat:
    vals, ids = [], []
    for r in runs:
        v = _finite(get(r))
        if v is not None:
            vals.append(v)
            ids.append(r.id)
    return Stat(tuple(vals), tuple(ids))


def loss_weights(config: dict | None) -> dict[str, float]:
    """{feat, affinity, contrast} as floats (``off`` / False / missing-as-off -> 0)."""
    loss = (config or {}).get("loss") or {}
    out = {}
    for term in LOSS_TERMS:
        v = loss.get(term, 1.0)
        if v is False or v is None or (isinstance(v, str) and v.strip().lower() == "off"):
            v = 0.0
        out[term] = _finite(v) or 0.0
    return out


@dataclass(frozen=True)
class TeacherRow:
    source: str
    cells: tuple[str, ...]
    metrics: dict[str, float]
    params_total: float | None
    teacher_metrics_ids: tuple[int, ...]


@dataclass
class CellData:
    name: str
    description: str
    config: dict[str, Any]  # of the best final run, else of the best trial, else of any run
    teacher_source: str | None
    student: str | None
    losses: dict[str, float]
    expected_seeds: list[int]
    trials: list[RunRecord]
    finals: list[RunRecord]  # every final run of the cell (any status)
    complete_finals: list[RunRecord]
    metrics: dict[str, Stat]  # test metrics over complete final runs
    objective: Stat  # last val objective over complete final runs
    params: dict[str, Stat]  # param_counts over complete final runs: total, image_tower, text_tower, heads
    best_trial: RunRecord | None
    best_final: RunRecord | None
    cost: dict[str, Any]
    flags: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> bool:
        return bool(self.flags)

    @property
    def final_ids(self) -> list[int]:
        return [r.id for r in self.complete_finals]

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
        names = {"feat": "feature", "affinity": "affinity", "contrast": "contrastive"}
        if self.is_full:
            return "Full method (feature + affinity + contrastive)"
        if self.is_no_kd:
            return "No KD (contrastive only)"
        off = [names[t] for t in LOSS_TERMS if t not in self.losses_on]
        if not self.losses_on:
            return "no loss on"
        return "w/o " + " & ".join(off)


@dataclass
class StudyData:
    name: str
    settings: dict[str, Any]
    local: bool
    direction: str
    metric: str
    final_seeds: list[int]
    cells: list[CellData]
    teachers: list[TeacherRow]
    cost_total: dict[str, Any]
    use_gpu_hours: bool
    full: CellData | None = None
    no_kd: CellData | None = None
    ablation: list[CellData] = field(default_factory=list)
    best_distilled: CellData | None = None
    scaling: list[CellData] = field(default_factory=list)
    architecture: list[CellData] = field(default_factory=list)

    def cell(self, name: str) -> CellData:
        for c in self.cells:
            if c.name == name:
                return c
        raise KeyError(name)

    def teacher_for(self, cell: CellData) -> TeacherRow | None:
        for t in self.teachers:
            if cell.name in t.cells:
                return t
        for t in self.teachers:
            if t.source == cell.teacher_source:
                return t
        return None

    @property
    def has_ablation(self) -> bool:
        return self.full is not None and len(self.ablation) > 1


def _better(direction: str):
    sign = 1.0 if direction == "maximize" else -1.0
    return lambda r: sign * (_finite(r.objective) if _finite(r.objective) is not None else -math.inf * sign)


def _best(runs: list[RunRecord], direction: str) -> RunRecord | None:
    ok = [r for r in runs if r.status == "complete" and _finite(r.objective) is not None]
    if not ok:
        return None
    sign = 1.0 if direction == "maximize" else -1.0
    return max(ok, key=lambda r: (sign * float(r.objective), -r.id))


def _teacher_source(config: dict) -> str | None:
    return ((config or {}).get("teacher") or {}).get("source")


def _student(config: dict) -> str | None:
    return ((config or {}).get("student") or {}).get("name")


def study_report_data(store: StudyStore, study_name: str) -> StudyData:
    """Everything the tables and plots of one study need, from the database."""
    record = store.get_study(study_name)
    settings = dict(record.settings or {}) if record else {}
    objective = settings.get("objective") or {}
    direction = objective.get("direction", "maximize")
    metric = objective.get("metric", "mean_r1")
    final_seeds = list(settings.get("final_seeds") or [])
    cell_settings = settings.get("cells") or {}
    runs = store.runs(study_name)
    costs = store.cost_summary(study_name)
    names = list(cell_settings) + sorted({r.cell for r in runs} - set(cell_settings))

    cells: list[CellData] = []
    for name in names:
        cruns = [r for r in runs if r.cell == name]
        trials = [r for r in cruns if r.kind == "trial"]
        finals = sorted((r for r in cruns if r.kind == "final"), key=lambda r: (r.seed or 0, r.id))
        complete = [r for r in finals if r.status == "complete"]
        best_trial = _best(trials, direction)
        best_final = _best(complete, direction)
        config = (best_final or best_trial or (cruns[0] if cruns else None) or _Empty).config or {}
        metrics = {m: stat_of(complete, lambda r, m=m: (r.test_metrics or {}).get(m)) for m in METRIC_KEYS}
        metrics["mean_r1"] = stat_of(
            complete,
            lambda r: (
                (
                    (r.test_metrics or {}).get("i2t_r1", math.nan)
                    + (r.test_metrics or {}).get("t2i_r1", math.nan)
                )
                / 2
                if r.test_metrics
                else None
            ),
        )
        params = {
            k: stat_of(complete, lambda r, k=k: (r.param_counts or {}).get(k))
            for k in ("total", "image_tower", "text_tower", "heads")
        }
        cs = cell_settings.get(name) or {}
        c = CellData(
            name=name,
            description=str(cs.get("description") or ""),
            config=config,
            teacher_source=_teacher_source(config),
            student=_student(config),
            losses=loss_weights(config),
            expected_seeds=final_seeds,
            trials=trials,
            finals=finals,
            complete_finals=complete,
            metrics=metrics,
            objective=stat_of(complete, lambda r: r.objective),
            params=params,
            best_trial=best_trial,
            best_final=best_final,
            cost=costs.get(name, {}),
        )
        failed = [r for r in finals if r.status == "failed"]
        if final_seeds and len(complete) < len(final_seeds):
            done = sorted(r.seed for r in complete if r.seed is not None)
            missing = [s for s in final_seeds if s not in done]
            c.flags.append(
                f"{len(complete)} of {len(final_seeds)} final seeds complete (missing seeds: "
                f"{', '.join(map(str, missing)) or '—'})"
            )
        elif not final_seeds and not complete:
            c.flags.append("no complete final run")
        if failed:
            c.flags.append(
                f"{len(failed)} failed final run(s) (tsl_runs.id {', '.join(str(r.id) for r in failed)})"
            )
        cells.append(c)

    teachers: dict[str, dict] = {}
    for t in store.teacher_metrics(study_name):
        if t.split != "test":
            continue
        d = teachers.setdefault(
            t.teacher_source, {"cells": [], "metrics": t.metrics, "params": None, "ids": []}
        )
        d["cells"].append(t.cell)
        d["ids"].append(t.id)
        total = (t.teacher_params or {}).get("total")
        if total is not None:
            d["params"] = _finite(total)
    teacher_rows = [
        TeacherRow(src, tuple(d["cells"]), dict(d["metrics"] or {}), d["params"], tuple(d["ids"]))
        for src, d in teachers.items()
    ]
    total = costs.get("__total__", {})
    data = StudyData(
        name=study_name,
        settings=settings,
        local=bool(record.local) if record else False,
        direction=direction,
        metric=metric,
        final_seeds=final_seeds,
        cells=cells,
        teachers=teacher_rows,
        cost_total=total,
        use_gpu_hours=float(total.get("gpu_hours") or 0.0) > 0.0,
    )
    _assign_roles(data)
    return data


class _Empty:
    config: dict = {}


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
    names: list[str] = []
    for r in cell.trials:
        for k in r.params or {}:
            if k not in names:
                names.append(k)
    return names
