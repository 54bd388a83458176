"""The study database's tables: what every sweep trial and final run did, in SQL.

One database holds a whole study programme. The sweep driver (`tinysiglip.sweep`) is its only writer;
reports, dashboards and ``optuna-dashboard`` read it. Any SQLAlchemy URL works: the default is a SQLite
file under the study's run folder (opened in WAL mode with a busy timeout, so a reader such as
optuna-dashboard never breaks the writer), PostgreSQL by URL (``postgresql+psycopg://user:pw@host/db``).

Optuna's own tables (``studies``, ``trials``, ``trial_values``, ``trial_params``,
``trial_intermediate_values``, ``version_info``, ``alembic_version``, ...) live in the same database:
the driver opens Optuna's ``RDBStorage`` on the same URL (see :func:`optuna_storage`) with one Optuna
study per grid cell, named ``"<study>/<cell>"``. The project's own tables are all prefixed ``tsl_`` so
they never collide with Optuna's:

``tsl_studies``  one row per study (``name`` unique)
    name, study_file (path), study_text (the YAML as run), local (bool), settings (JSON: objective
    {metric, direction}, trials_per_cell, final_seeds, resources, pruner, sampler, max_failures, cells,
    epochs), package_version, created_at, updated_at.

``tsl_runs``  one row per trial or final run; a retried or resumed run keeps its row
    id, run_key (unique: ``trial:<study>/<cell>#<optuna trial number>`` or
    ``final:<study>/<cell>@seed<seed>``), study_name, cell, kind (``"trial"`` | ``"final"``),
    optuna_study_name, optuna_trial_number, optuna_trial_id (trials only; NULL for final runs),
    source_trial_number (final runs: the search trial whose params they re-run),
    config (JSON, the resolved training config), params (JSON, the sampled search-space values,
    dotted names), seed, status (``running`` | ``complete`` | ``pruned`` | ``failed`` | ``superseded``: a
    final run of a trial that is no longer the cell's best, kept under run key ``...@seed<s>~trial<n>``), error (text of the
    last failure), attempts (how many times it was started), retries (= attempts - 1), objective_metric,
    objective_direction, objective (last reported objective value; for a complete trial the value told to
    Optuna), epochs_budget, epochs_done, steps, val_metrics (JSON, last evaluation), test_metrics (JSON,
    final runs: metrics on the test split), param_counts (JSON: image_tower, text_tower, heads, total),
    wall_time_s (summed over attempts), cpus, gpu_fraction, gpu_hours (= wall_time_s * gpu_fraction /
    3600), cpu_hours (= wall_time_s * cpus / 3600), device, cache_fingerprints (JSON: {"train": {...},
    "val": {...}, "test": {...}} as given to the run), package_version, run_dir, started_at (first start),
    finished_at, updated_at, node_id / node_host / node_ip (the Ray node of its last attempt), student_path
    (the exported student, under the sweep's artifacts location), checkpoint_path (the Tune trial folder
    holding its checkpoints). Columns added after a database was made are nullable; the store adds them
    when it opens an older database.

``tsl_evaluations``  every evaluation a run reported (what the pruner saw)
    id, run_id (-> tsl_runs.id), epoch, step, metrics (JSON: val Recall@K and mean_r1), objective,
    attempt (which attempt reported it), created_at. Unique (run_id, epoch, step): an evaluation repeated
    after a resume from checkpoint replaces the earlier one instead of duplicating it.

``tsl_teacher_metrics``  the teacher reference per cell, from cached test embeddings
    id, study_name, cell, teacher_source, split, cache_path, cache_fingerprint, metrics (JSON: i2t_r1 ...
    t2i_r10), teacher_params (JSON, may be empty), created_at. Unique (study_name, cell, teacher_source,
    split).

``tsl_forecasts``  what a study was forecast to cost before it ran (``--dry-run --forecast``)
    id, study_name, created_at, device (where the steps were timed), hours_kind (``gpu`` | ``cpu``),
    trial_epochs (search + final), device_hours, device_hours_pruned (NULL when no earlier study could be
    replayed), wall_time_s, wall_time_pruned_s, concurrency, pruning (JSON: saved fraction and its
    source), cells (JSON: per cell forecast). The latest row per study is the one the report compares.

``tsl_leases``  one row per study while a sweep driver runs it (:mod:`.leases`)
    study_name (primary key), holder (``host:pid:token``), host, pid, acquired_at, heartbeat_at (Unix
    seconds), ttl_s (a lease without heartbeat for longer is stale).
``tsl_query_ranks``  per-query retrieval ranks of a final run (or of a teacher reference) on a split
    id, run_id (-> tsl_runs.id) or teacher_metrics_id (-> tsl_teacher_metrics.id), split, num_images,
    num_texts, image_ranks, text_ranks, caption_image (``.npy`` bytes of int32 arrays: the rank of each
    image's first correct caption, of each caption's image, and each caption's image), created_at.
    Added after the first release: a database made before it gets the table on its next open for
    writing; readers treat a missing table as "no ranks" (:mod:`.ranks`).

The store's read methods (:mod:`.store`) return plain frozen dataclasses (:class:`StudyRecord`,
:class:`RunRecord`, :class:`EvaluationRecord`, :class:`TeacherMetricsRecord`); ``dataclasses.asdict``
turns them into dicts. The DataFrames of :mod:`.frames` read the tables column by column, so a column
added here shows up there too.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "FINISHED_STATUSES",
    "RUN_STATUSES",
    "TABLE_NAMES",
    "EvaluationRecord",
    "EvaluationRow",
    "ForecastRecord",
    "ForecastRow",
    "LeaseRow",
    "QueryRanksRow",
    "RunRecord",
    "RunRow",
    "StudyRecord",
    "StudyRow",
    "TeacherMetricsRecord",
    "TeacherMetricsRow",
    "run_key",
]

RUN_STATUSES = ("running", "complete", "pruned", "failed", "superseded")
FINISHED_STATUSES = ("complete", "pruned")


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


# --------------------------------------------------------------------------------------------- schema


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class StudyRow(Base):
    __tablename__ = "tsl_studies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)
    study_file: Mapped[str | None] = mapped_column(Text)
    study_text: Mapped[str | None] = mapped_column(Text)
    local: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    package_version: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class RunRow(Base):
    __tablename__ = "tsl_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_key: Mapped[str] = mapped_column(String(512), unique=True, nullable=False)
    study_name: Mapped[str] = mapped_column(String(255), index=True, nullable=False)
    cell: Mapped[str] = mapped_column(String(255), index=True, nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    optuna_study_name: Mapped[str | None] = mapped_column(String(512))
    optuna_trial_number: Mapped[int | None] = mapped_column(Integer)
    optuna_trial_id: Mapped[int | None] = mapped_column(Integer)
    source_trial_number: Mapped[int | None] = mapped_column(Integer)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    seed: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="running")
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    retries: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    objective_metric: Mapped[str | None] = mapped_column(String(128))
    objective_direction: Mapped[str | None] = mapped_column(String(16))
    objective: Mapped[float | None] = mapped_column(Float)
    epochs_budget: Mapped[int | None] = mapped_column(Integer)
    epochs_done: Mapped[int | None] = mapped_column(Integer)
    steps: Mapped[int | None] = mapped_column(Integer)
    val_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    test_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    param_counts: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    wall_time_s: Mapped[float] = mapped_column(Float, default=0.0, nullable=False)
    cpus: Mapped[float | None] = mapped_column(Float)
    gpu_fraction: Mapped[float] = mapped_column(Float, default=0.0, nullable=False)
    gpu_hours: Mapped[float] = mapped_column(Float, default=0.0, nullable=False)
    cpu_hours: Mapped[float] = mapped_column(Float, default=0.0, nullable=False)
    device: Mapped[str | None] = mapped_column(String(64))
    cache_fingerprints: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    package_version: Mapped[str | None] = mapped_column(String(64))
    run_dir: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[_dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[_dt.datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[_dt.datetime | None] = mapped_column(DateTime(timezone=True))
    node_id: Mapped[str | None] = mapped_column(String(128))
    node_host: Mapped[str | None] = mapped_column(String(255))
    node_ip: Mapped[str | None] = mapped_column(String(64))
    student_path: Mapped[str | None] = mapped_column(Text)
    checkpoint_path: Mapped[str | None] = mapped_column(Text)


class EvaluationRow(Base):
    __tablename__ = "tsl_evaluations"
    __table_args__ = (UniqueConstraint("run_id", "epoch", "step", name="uq_tsl_eval_run_epoch_step"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("tsl_runs.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer, nullable=False)
    step: Mapped[int] = mapped_column(Integer, nullable=False)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    objective: Mapped[float | None] = mapped_column(Float)
    attempt: Mapped[int] = mapped_column(Integer, default=1, nullable=False)
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class TeacherMetricsRow(Base):
    __tablename__ = "tsl_teacher_metrics"
    __table_args__ = (
        UniqueConstraint("study_name", "cell", "teacher_source", "split", name="uq_tsl_teacher_metrics"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_name: Mapped[str] = mapped_column(String(255), index=True, nullable=False)
    cell: Mapped[str] = mapped_column(String(255), nullable=False)
    teacher_source: Mapped[str] = mapped_column(Text, nullable=False)
    split: Mapped[str] = mapped_column(String(64), nullable=False)
    cache_path: Mapped[str | None] = mapped_column(Text)
    cache_fingerprint: Mapped[str | None] = mapped_column(Text)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    teacher_params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class ForecastRow(Base):
    __tablename__ = "tsl_forecasts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_name: Mapped[str] = mapped_column(String(255), index=True, nullable=False)
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    device: Mapped[str | None] = mapped_column(String(128))
    hours_kind: Mapped[str | None] = mapped_column(String(8))
    trial_epochs: Mapped[int | None] = mapped_column(Integer)
    device_hours: Mapped[float | None] = mapped_column(Float)
    device_hours_pruned: Mapped[float | None] = mapped_column(Float)
    wall_time_s: Mapped[float | None] = mapped_column(Float)
    wall_time_pruned_s: Mapped[float | None] = mapped_column(Float)
    concurrency: Mapped[int | None] = mapped_column(Integer)
    pruning: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    cells: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class LeaseRow(Base):
    __tablename__ = "tsl_leases"
    study_name: Mapped[str] = mapped_column(String(255), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255), nullable=False)
    host: Mapped[str] = mapped_column(String(255), nullable=False)
    pid: Mapped[int] = mapped_column(Integer, nullable=False)
    acquired_at: Mapped[float] = mapped_column(Float, nullable=False)
    heartbeat_at: Mapped[float] = mapped_column(Float, nullable=False)
    ttl_s: Mapped[float] = mapped_column(Float, nullable=False)


class QueryRanksRow(Base):
    """Per-query ranks for the paired bootstrap (:mod:`.bootstrap`): a difference between runs can be
    recomputed from the database without the models. One row per (run, split) or (teacher, split)."""

    __tablename__ = "tsl_query_ranks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("tsl_runs.id", ondelete="CASCADE"), index=True)
    teacher_metrics_id: Mapped[int | None] = mapped_column(
        ForeignKey("tsl_teacher_metrics.id", ondelete="CASCADE"), index=True
    )
    split: Mapped[str] = mapped_column(String(64), nullable=False)
    num_images: Mapped[int] = mapped_column(Integer, nullable=False)
    num_texts: Mapped[int] = mapped_column(Integer, nullable=False)
    image_ranks: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    text_ranks: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    caption_image: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


TABLE_NAMES = tuple(sorted(Base.metadata.tables))


# ------------------------------------------------------------------------------------------- records


@dataclasses.dataclass(frozen=True)
class StudyRecord:
    name: str
    study_file: str | None
    study_text: str | None
    local: bool
    settings: dict[str, Any]
    package_version: str | None
    created_at: _dt.datetime | None
    updated_at: _dt.datetime | None


@dataclasses.dataclass(frozen=True)
class RunRecord:
    id: int
    run_key: str
    study_name: str
    cell: str
    kind: str
    optuna_study_name: str | None
    optuna_trial_number: int | None
    optuna_trial_id: int | None
    source_trial_number: int | None
    config: dict[str, Any]
    params: dict[str, Any]
    seed: int | None
    status: str
    error: str | None
    attempts: int
    retries: int
    objective_metric: str | None
    objective_direction: str | None
    objective: float | None
    epochs_budget: int | None
    epochs_done: int | None
    steps: int | None
    val_metrics: dict[str, Any] | None
    test_metrics: dict[str, Any] | None
    param_counts: dict[str, Any] | None
    wall_time_s: float
    cpus: float | None
    gpu_fraction: float
    gpu_hours: float
    cpu_hours: float
    device: str | None
    cache_fingerprints: dict[str, Any] | None
    package_version: str | None
    run_dir: str | None
    started_at: _dt.datetime | None
    finished_at: _dt.datetime | None
    updated_at: _dt.datetime | None
    node_id: str | None = None
    node_host: str | None = None
    node_ip: str | None = None
    student_path: str | None = None
    checkpoint_path: str | None = None

    @property
    def epochs_saved(self) -> int:
        """Trial-epochs saved by pruning: budget minus epochs done, for a pruned run (else 0)."""
        if self.status != "pruned" or self.epochs_budget is None:
            return 0
        return max(0, int(self.epochs_budget) - int(self.epochs_done or 0))


@dataclasses.dataclass(frozen=True)
class EvaluationRecord:
    id: int
    run_id: int
    epoch: int
    step: int
    metrics: dict[str, Any]
    objective: float | None
    attempt: int
    created_at: _dt.datetime | None


@dataclasses.dataclass(frozen=True)
class TeacherMetricsRecord:
    id: int
    study_name: str
    cell: str
    teacher_source: str
    split: str
    cache_path: str | None
    cache_fingerprint: str | None
    metrics: dict[str, Any]
    teacher_params: dict[str, Any]
    created_at: _dt.datetime | None


@dataclasses.dataclass(frozen=True)
class ForecastRecord:
    id: int
    study_name: str
    created_at: _dt.datetime | None
    device: str | None
    hours_kind: str | None
    trial_epochs: int | None
    device_hours: float | None
    device_hours_pruned: float | None
    wall_time_s: float | None
    wall_time_pruned_s: float | None
    concurrency: int | None
    pruning: dict[str, Any] | None
    cells: dict[str, Any] | None


def _to_record(cls, row):
    return cls(**{f.name: getattr(row, f.name) for f in dataclasses.fields(cls)})


def run_key(kind: str, optuna_study_name: str, *, trial_number: int | None = None, seed: int | None = None):
    """The unique key of a run: one row per Optuna trial, one per (cell, seed) final run."""
    if kind == "trial":
        return f"trial:{optuna_study_name}#{int(trial_number)}"
    if kind == "final":
        return f"final:{optuna_study_name}@seed{int(seed)}"
    raise ValueError(f"unknown run kind {kind!r}")


# --------------------------------------------------------------------------------------------- store
