"""The study database: what every sweep trial and final run did, in SQL.

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
    dotted names), seed, status (``running`` | ``complete`` | ``pruned`` | ``failed``), error (text of the
    last failure), attempts (how many times it was started), retries (= attempts - 1), objective_metric,
    objective_direction, objective (last reported objective value; for a complete trial the value told to
    Optuna), epochs_budget, epochs_done, steps, val_metrics (JSON, last evaluation), test_metrics (JSON,
    final runs: metrics on the test split), param_counts (JSON: image_tower, text_tower, heads, total),
    wall_time_s (summed over attempts), cpus, gpu_fraction, gpu_hours (= wall_time_s * gpu_fraction /
    3600), cpu_hours (= wall_time_s * cpus / 3600), device, cache_fingerprints (JSON: {"train": {...},
    "val": {...}, "test": {...}} as given to the run), package_version, run_dir, started_at (first start),
    finished_at, updated_at.

``tsl_evaluations``  every evaluation a run reported (what the pruner saw)
    id, run_id (-> tsl_runs.id), epoch, step, metrics (JSON: val Recall@K and mean_r1), objective,
    attempt (which attempt reported it), created_at. Unique (run_id, epoch, step): an evaluation repeated
    after a resume from checkpoint replaces the earlier one instead of duplicating it.

``tsl_teacher_metrics``  the teacher reference per cell, from cached test embeddings
    id, study_name, cell, teacher_source, split, cache_path, cache_fingerprint, metrics (JSON: i2t_r1 ...
    t2i_r10), teacher_params (JSON, may be empty), created_at. Unique (study_name, cell, teacher_source,
    split).

Read methods return plain frozen dataclasses (:class:`StudyRecord`, :class:`RunRecord`,
:class:`EvaluationRecord`, :class:`TeacherMetricsRecord`); ``dataclasses.asdict`` turns them into dicts.
Passwords in URLs are never shown: use :func:`redact_url` wherever a URL is printed.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    inspect,
    select,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from tinysiglip.errors import TinySigLIPError

__all__ = [
    "RUN_STATUSES",
    "TABLE_NAMES",
    "EvaluationRecord",
    "RunRecord",
    "StoreError",
    "StudyRecord",
    "StudyStore",
    "TeacherMetricsRecord",
    "default_sqlite_url",
    "open_store",
    "optuna_storage",
    "redact_url",
]

RUN_STATUSES = ("running", "complete", "pruned", "failed")
FINISHED_STATUSES = ("complete", "pruned")
SQLITE_BUSY_TIMEOUT_MS = 60_000


class StoreError(TinySigLIPError):
    """The study database cannot be opened or is inconsistent."""


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def redact_url(url: str | Any) -> str:
    """The URL with its password replaced by ``***`` (safe to print or log)."""
    try:
        u = make_url(str(url))
    except Exception:  # not a SQLAlchemy URL: hide anything between ':' and '@' after the scheme
        text = str(url)
        if "@" in text and "://" in text:
            scheme, rest = text.split("://", 1)
            cred, host = rest.rsplit("@", 1)
            user = cred.split(":", 1)[0]
            return f"{scheme}://{user}:***@{host}" if ":" in cred else text
        return text
    if u.password is None:
        return u.render_as_string(hide_password=False)
    return u.render_as_string(hide_password=True)


def default_sqlite_url(run_dir: str | Path, name: str = "study.db") -> str:
    return f"sqlite:///{(Path(run_dir) / name).resolve()}"


def _package_version() -> str:
    from tinysiglip import __version__

    return __version__


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


def _make_engine(url: str) -> Engine:
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # WAL: readers never block the single writer
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


class StudyStore:
    """Read/write access to the project's ``tsl_*`` tables in one study database."""

    def __init__(self, url: str, *, create: bool = True):
        self.url = str(url)
        try:
            self.engine = _make_engine(self.url)
            if create:
                Base.metadata.create_all(self.engine)
        except ModuleNotFoundError as exc:  # e.g. psycopg for a PostgreSQL URL
            raise StoreError(
                f"cannot open study database {redact_url(self.url)}: {exc}. "
                "For PostgreSQL install `pip install 'tinysiglip[postgres]'`."
            ) from exc
        except Exception as exc:
            raise StoreError(f"cannot open study database {redact_url(self.url)}: {exc}") from exc
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    # ------------------------------------------------------------------------------------ misc
    @property
    def redacted_url(self) -> str:
        return redact_url(self.url)

    def __repr__(self) -> str:
        return f"StudyStore({self.redacted_url!r})"

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def table_names(self) -> list[str]:
        return sorted(inspect(self.engine).get_table_names())

    def session(self) -> Session:
        return self._session()

    # ---------------------------------------------------------------------------------- studies
    def upsert_study(
        self,
        name: str,
        *,
        study_file: str | Path | None = None,
        study_text: str | None = None,
        local: bool = False,
        settings: Mapping[str, Any] | None = None,
    ) -> StudyRecord:
        with self.session() as s, s.begin():
            row = s.scalar(select(StudyRow).where(StudyRow.name == name))
            if row is None:
                row = StudyRow(name=name, created_at=_now())
                s.add(row)
            row.study_file = None if study_file is None else str(study_file)
            row.study_text = study_text
            row.local = bool(local)
            row.settings = _jsonable(dict(settings or {}))
            row.package_version = _package_version()
            row.updated_at = _now()
            s.flush()
            return _to_record(StudyRecord, row)

    def get_study(self, name: str) -> StudyRecord | None:
        with self.session() as s:
            row = s.scalar(select(StudyRow).where(StudyRow.name == name))
            return None if row is None else _to_record(StudyRecord, row)

    def studies(self) -> list[StudyRecord]:
        with self.session() as s:
            return [_to_record(StudyRecord, r) for r in s.scalars(select(StudyRow).order_by(StudyRow.id))]

    # ------------------------------------------------------------------------------------- runs
    def start_run(
        self,
        *,
        study_name: str,
        cell: str,
        kind: str,
        optuna_study_name: str,
        optuna_trial_number: int | None = None,
        optuna_trial_id: int | None = None,
        source_trial_number: int | None = None,
        config: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        seed: int | None = None,
        objective_metric: str | None = None,
        objective_direction: str | None = None,
        epochs_budget: int | None = None,
        cpus: float | None = None,
        gpu_fraction: float = 0.0,
        cache_fingerprints: Mapping[str, Any] | None = None,
        run_dir: str | Path | None = None,
    ) -> RunRecord:
        """Create the run's row, or continue the existing one (same run key): status -> running,
        attempts + 1. A run is never duplicated: a retried or resumed run keeps its id."""
        if kind not in ("trial", "final"):
            raise ValueError(f"unknown run kind {kind!r}")
        key = run_key(kind, optuna_study_name, trial_number=optuna_trial_number, seed=seed)
        now = _now()
        with self.session() as s, s.begin():
            row = s.scalar(select(RunRow).where(RunRow.run_key == key))
            if row is None:
                row = RunRow(
                    run_key=key,
                    study_name=study_name,
                    cell=cell,
                    kind=kind,
                    optuna_study_name=optuna_study_name,
                    optuna_trial_number=optuna_trial_number,
                    attempts=0,
                    retries=0,
                    wall_time_s=0.0,
                    gpu_hours=0.0,
                    cpu_hours=0.0,
                    started_at=now,
                )
                s.add(row)
            if optuna_trial_id is not None:
                row.optuna_trial_id = optuna_trial_id
            if source_trial_number is not None:
                row.source_trial_number = source_trial_number
            if config is not None:
                row.config = _jsonable(dict(config))
            if params is not None:
                row.params = _jsonable(dict(params))
            row.seed = seed
            row.objective_metric = objective_metric
            row.objective_direction = objective_direction
            row.epochs_budget = epochs_budget
            row.cpus = cpus
            row.gpu_fraction = float(gpu_fraction or 0.0)
            if cache_fingerprints is not None:
                row.cache_fingerprints = _jsonable(dict(cache_fingerprints))
            row.package_version = _package_version()
            if run_dir is not None:
                row.run_dir = str(run_dir)
            row.status = "running"
            row.attempts = int(row.attempts or 0) + 1
            row.retries = max(0, row.attempts - 1)
            row.finished_at = None
            row.updated_at = now
            s.flush()
            return _to_record(RunRecord, row)

    def record_evaluation(
        self,
        run_id: int,
        *,
        epoch: int,
        step: int,
        metrics: Mapping[str, Any],
        objective: float | None,
    ) -> EvaluationRecord:
        """Store one evaluation (replacing an earlier one of the same run, epoch and step)."""
        with self.session() as s, s.begin():
            run = s.get(RunRow, run_id)
            if run is None:
                raise StoreError(f"no run with id {run_id}")
            row = s.scalar(
                select(EvaluationRow).where(
                    EvaluationRow.run_id == run_id, EvaluationRow.epoch == epoch, EvaluationRow.step == step
                )
            )
            if row is None:
                row = EvaluationRow(run_id=run_id, epoch=int(epoch), step=int(step))
                s.add(row)
            row.metrics = _jsonable(dict(metrics))
            row.objective = None if objective is None else float(objective)
            row.attempt = int(run.attempts or 1)
            row.created_at = _now()
            run.objective = row.objective
            run.val_metrics = row.metrics
            run.epochs_done = max(int(run.epochs_done or 0), int(epoch))
            run.steps = max(int(run.steps or 0), int(step))
            run.updated_at = _now()
            s.flush()
            return _to_record(EvaluationRecord, row)

    def add_wall_time(self, run_id: int, seconds: float) -> None:
        """Add an attempt's wall time to the run and recompute its GPU- and CPU-hours."""
        with self.session() as s, s.begin():
            run = s.get(RunRow, run_id)
            if run is None:
                raise StoreError(f"no run with id {run_id}")
            run.wall_time_s = float(run.wall_time_s or 0.0) + max(0.0, float(seconds))
            _recompute_cost(run)
            run.updated_at = _now()

    def finish_run(
        self,
        run_id: int,
        status: str,
        *,
        error: str | None = None,
        objective: float | None = None,
        epochs_done: int | None = None,
        steps: int | None = None,
        val_metrics: Mapping[str, Any] | None = None,
        test_metrics: Mapping[str, Any] | None = None,
        param_counts: Mapping[str, Any] | None = None,
        wall_time_s: float | None = None,
        device: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> RunRecord:
        """Set a run's final (or failed) state. ``wall_time_s`` is added to the run's total."""
        if status not in RUN_STATUSES:
            raise ValueError(f"unknown run status {status!r}; expected one of {RUN_STATUSES}")
        now = _now()
        with self.session() as s, s.begin():
            run = s.get(RunRow, run_id)
            if run is None:
                raise StoreError(f"no run with id {run_id}")
            run.status = status
            if error is not None:  # a later success keeps the text of the last failure
                run.error = error
            if objective is not None:
                run.objective = float(objective)
            if epochs_done is not None:
                run.epochs_done = int(epochs_done)
            if steps is not None:
                run.steps = int(steps)
            if val_metrics is not None:
                run.val_metrics = _jsonable(dict(val_metrics))
            if test_metrics is not None:
                run.test_metrics = _jsonable(dict(test_metrics))
            if param_counts is not None:
                run.param_counts = _jsonable(dict(param_counts))
            if device is not None:
                run.device = device
            if config is not None:
                run.config = _jsonable(dict(config))
            if wall_time_s is not None:
                run.wall_time_s = float(run.wall_time_s or 0.0) + max(0.0, float(wall_time_s))
            _recompute_cost(run)
            if status != "running":
                run.finished_at = now
            run.updated_at = now
            s.flush()
            return _to_record(RunRecord, run)

    def get_run(self, run_id: int) -> RunRecord | None:
        with self.session() as s:
            row = s.get(RunRow, run_id)
            return None if row is None else _to_record(RunRecord, row)

    def get_run_by_key(self, key: str) -> RunRecord | None:
        with self.session() as s:
            row = s.scalar(select(RunRow).where(RunRow.run_key == key))
            return None if row is None else _to_record(RunRecord, row)

    def find_trial_run(self, optuna_study_name: str, trial_number: int) -> RunRecord | None:
        return self.get_run_by_key(run_key("trial", optuna_study_name, trial_number=trial_number))

    def find_final_run(self, optuna_study_name: str, seed: int) -> RunRecord | None:
        return self.get_run_by_key(run_key("final", optuna_study_name, seed=seed))

    def runs(
        self,
        study_name: str | None = None,
        *,
        cell: str | None = None,
        kind: str | None = None,
        status: str | Iterable[str] | None = None,
    ) -> list[RunRecord]:
        """Runs filtered by study, cell, kind and status (one status or several), ordered by id."""
        q = select(RunRow)
        if study_name is not None:
            q = q.where(RunRow.study_name == study_name)
        if cell is not None:
            q = q.where(RunRow.cell == cell)
        if kind is not None:
            q = q.where(RunRow.kind == kind)
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            q = q.where(RunRow.status.in_(statuses))
        with self.session() as s:
            return [_to_record(RunRecord, r) for r in s.scalars(q.order_by(RunRow.id))]

    def cells(self, study_name: str) -> list[str]:
        with self.session() as s:
            rows = s.execute(
                select(RunRow.cell).where(RunRow.study_name == study_name).distinct().order_by(RunRow.cell)
            )
            return [r[0] for r in rows]

    def evaluations(self, run_id: int) -> list[EvaluationRecord]:
        with self.session() as s:
            q = (
                select(EvaluationRow)
                .where(EvaluationRow.run_id == run_id)
                .order_by(EvaluationRow.epoch, EvaluationRow.step)
            )
            return [_to_record(EvaluationRecord, r) for r in s.scalars(q)]

    def evaluations_for_study(
        self, study_name: str, *, cell: str | None = None, kind: str | None = None
    ) -> dict[int, list[EvaluationRecord]]:
        """{run id: its evaluations in order} for every run of a study (learning curves)."""
        q = select(EvaluationRow).join(RunRow, RunRow.id == EvaluationRow.run_id)
        q = q.where(RunRow.study_name == study_name)
        if cell is not None:
            q = q.where(RunRow.cell == cell)
        if kind is not None:
            q = q.where(RunRow.kind == kind)
        out: dict[int, list[EvaluationRecord]] = {}
        with self.session() as s:
            for r in s.scalars(q.order_by(EvaluationRow.run_id, EvaluationRow.epoch, EvaluationRow.step)):
                out.setdefault(r.run_id, []).append(_to_record(EvaluationRecord, r))
        return out

    def cost_summary(self, study_name: str) -> dict[str, dict[str, Any]]:
        """Per cell (and ``"__total__"``): runs by kind and status, trial-epochs saved by pruning,
        wall time, GPU-hours and CPU-hours."""
        out: dict[str, dict[str, Any]] = {}

        def blank():
            return {
                "trials": 0,
                "trials_complete": 0,
                "trials_pruned": 0,
                "trials_failed": 0,
                "trials_running": 0,
                "final_runs": 0,
                "final_complete": 0,
                "final_failed": 0,
                "epochs_saved_by_pruning": 0,
                "wall_time_s": 0.0,
                "gpu_hours": 0.0,
                "cpu_hours": 0.0,
            }

        for r in self.runs(study_name):
            for key in (r.cell, "__total__"):
                c = out.setdefault(key, blank())
                if r.kind == "trial":
                    c["trials"] += 1
                    c[f"trials_{r.status}"] = c.get(f"trials_{r.status}", 0) + 1
                    c["epochs_saved_by_pruning"] += r.epochs_saved
                else:
                    c["final_runs"] += 1
                    if r.status in ("complete", "failed"):
                        c[f"final_{r.status}"] += 1
                c["wall_time_s"] += r.wall_time_s or 0.0
                c["gpu_hours"] += r.gpu_hours or 0.0
                c["cpu_hours"] += r.cpu_hours or 0.0
        return out

    # ------------------------------------------------------------------------- teacher metrics
    def record_teacher_metrics(
        self,
        *,
        study_name: str,
        cell: str,
        teacher_source: str,
        split: str,
        metrics: Mapping[str, Any],
        teacher_params: Mapping[str, Any] | None = None,
        cache_path: str | Path | None = None,
        cache_fingerprint: str | None = None,
    ) -> TeacherMetricsRecord:
        with self.session() as s, s.begin():
            row = s.scalar(
                select(TeacherMetricsRow).where(
                    TeacherMetricsRow.study_name == study_name,
                    TeacherMetricsRow.cell == cell,
                    TeacherMetricsRow.teacher_source == str(teacher_source),
                    TeacherMetricsRow.split == split,
                )
            )
            if row is None:
                row = TeacherMetricsRow(
                    study_name=study_name, cell=cell, teacher_source=str(teacher_source), split=split
                )
                s.add(row)
            row.metrics = _jsonable(dict(metrics))
            row.teacher_params = _jsonable(dict(teacher_params or {}))
            row.cache_path = None if cache_path is None else str(cache_path)
            row.cache_fingerprint = cache_fingerprint
            row.created_at = _now()
            s.flush()
            return _to_record(TeacherMetricsRecord, row)

    def teacher_metrics(self, study_name: str | None = None, *, cell: str | None = None):
        q = select(TeacherMetricsRow)
        if study_name is not None:
            q = q.where(TeacherMetricsRow.study_name == study_name)
        if cell is not None:
            q = q.where(TeacherMetricsRow.cell == cell)
        with self.session() as s:
            return [_to_record(TeacherMetricsRecord, r) for r in s.scalars(q.order_by(TeacherMetricsRow.id))]

    # ------------------------------------------------------------------------------ maintenance
    def delete_study_runs(self, study_name: str) -> int:
        """Remove a study's runs and evaluations (tests and explicit resets only)."""
        with self.session() as s, s.begin():
            ids = [r for (r,) in s.execute(select(RunRow.id).where(RunRow.study_name == study_name))]
            if ids:
                s.execute(delete(EvaluationRow).where(EvaluationRow.run_id.in_(ids)))
                s.execute(delete(RunRow).where(RunRow.id.in_(ids)))
            return len(ids)


def _recompute_cost(run: RunRow) -> None:
    hours = float(run.wall_time_s or 0.0) / 3600.0
    run.gpu_hours = hours * float(run.gpu_fraction or 0.0)
    run.cpu_hours = hours * float(run.cpus or 0.0)


def _jsonable(obj: Any) -> Any:
    """Plain JSON types only (Paths -> str, numpy scalars -> Python, NaN kept as None)."""
    import math

    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if hasattr(obj, "item"):  # numpy / torch scalars
        try:
            return _jsonable(obj.item())
        except Exception:
            pass
    return str(obj)


def open_store(url: str | Path, *, create: bool = True) -> StudyStore:
    """Open (and by default create the tables of) the study database at ``url``.

    ``url`` is a SQLAlchemy URL; a plain filesystem path is taken as a SQLite file."""
    text = str(url)
    if "://" not in text:
        text = f"sqlite:///{Path(text).resolve()}"
    return StudyStore(text, create=create)


def optuna_storage(url: str):
    """Optuna's ``RDBStorage`` on the same database (WAL + busy timeout for SQLite)."""
    import optuna

    text = str(url)
    if "://" not in text:
        text = f"sqlite:///{Path(text).resolve()}"
    kwargs: dict[str, Any] = {}
    u = make_url(text)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}}
    else:
        kwargs = {"pool_pre_ping": True}
    storage = optuna.storages.RDBStorage(text, engine_kwargs=kwargs)
    if make_url(text).get_backend_name() == "sqlite":

        @event.listens_for(storage.engine, "connect")
        def _pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.close()

    return storage
