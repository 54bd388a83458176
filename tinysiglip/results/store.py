"""Read and write access to the study database (tables: :mod:`.schema`).

One database holds a whole study programme. The sweep driver (`tinysiglip.sweep`) is its only writer;
reports, dashboards and ``optuna-dashboard`` read it. Any SQLAlchemy URL works: the default is a SQLite
file under the study's run folder (opened in WAL mode with a busy timeout, so a reader such as
optuna-dashboard never breaks the writer), PostgreSQL by URL (``postgresql+psycopg://user:pw@host/db``).
Optuna's own tables live in the same database: :func:`optuna_storage` opens Optuna's ``RDBStorage`` on
the same URL, with one Optuna study per grid cell named ``"<study>/<cell>"``.

Passwords in URLs are never shown: use :func:`redact_url` wherever a URL is printed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import delete, event, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from tinysiglip.results.db_url import dashboard_command, redact_url, with_password
from tinysiglip.results.engine import (
    SQLITE_BUSY_TIMEOUT_MS,
    StoreError,
    add_missing_columns,
    make_engine,
    schema_creation_lock,
)
from tinysiglip.results.schema import (
    RUN_STATUSES,
    Base,
    EvaluationRecord,
    EvaluationRow,
    ForecastRecord,
    ForecastRow,
    RunRecord,
    RunRow,
    StudyRecord,
    StudyRow,
    TeacherMetricsRecord,
    TeacherMetricsRow,
    _now,
    _to_record,
    run_key,
)

__all__ = [
    "StoreError",
    "StudyStore",
    "default_sqlite_url",
    "open_existing",
    "open_store",
    "optuna_storage",
    "redact_url",
    "schema_creation_lock",
    "dashboard_command",
    "with_password",
]


def default_sqlite_url(run_dir: str | Path, name: str = "study.db") -> str:
    return f"sqlite:///{(Path(run_dir) / name).resolve()}"


def _package_version() -> str:
    from tinysiglip import __version__

    return __version__


class StudyStore:
    """Read/write access to the project's ``tsl_*`` tables in one study database."""

    def __init__(self, url: str, *, create: bool = True):
        self.url = str(url)
        try:
            self.engine = make_engine(self.url)
            if create:
                Base.metadata.create_all(self.engine)
            add_missing_columns(self.engine)
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

    def set_run_location(
        self,
        run_id: int,
        *,
        node_id: str | None = None,
        node_host: str | None = None,
        node_ip: str | None = None,
        device: str | None = None,
        student_path: str | None = None,
        checkpoint_path: str | None = None,
    ) -> None:
        """Where a run's attempt ran and where its artifacts are; None leaves a field as it is."""
        fields = dict(
            node_id=node_id,
            node_host=node_host,
            node_ip=node_ip,
            device=device,
            student_path=student_path,
            checkpoint_path=checkpoint_path,
        )
        with self.session() as s, s.begin():
            run = s.get(RunRow, run_id)
            if run is None:
                raise StoreError(f"no run with id {run_id}")
            for name, value in fields.items():
                if value is not None:
                    setattr(run, name, str(value))
            run.updated_at = _now()

    def supersede_run(self, run_id: int, note: str) -> RunRecord:
        """Keep a final run whose source trial is no longer the best, out of the way of its redo: status
        ``superseded`` and run key ``<key>~trial<source>`` (the normal key is free for the new run)."""
        with self.session() as s, s.begin():
            run = s.get(RunRow, run_id)
            if run is None:
                raise StoreError(f"no run with id {run_id}")
            run.run_key = f"{run.run_key}~trial{run.source_trial_number}~id{run.id}"
            run.status = "superseded"
            run.error = note
            run.updated_at = _now()
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

    # -------------------------------------------------------------------------------- forecasts
    def record_forecast(self, study_name: str, **fields: Any) -> ForecastRecord:
        """Store a cost forecast of ``study_name`` (the fields of ``tsl_forecasts``)."""
        with self.session() as s, s.begin():
            row = ForecastRow(study_name=study_name, created_at=_now(), **_jsonable(fields))
            s.add(row)
            s.flush()
            return _to_record(ForecastRecord, row)

    def latest_forecast(self, study_name: str) -> ForecastRecord | None:
        """The newest forecast of ``study_name``; None when there is none (or the database predates
        forecasts and was opened read-only)."""
        if not inspect(self.engine).has_table(ForecastRow.__tablename__):
            return None
        with self.session() as s:
            row = s.scalar(
                select(ForecastRow)
                .where(ForecastRow.study_name == study_name)
                .order_by(ForecastRow.id.desc())
                .limit(1)
            )
            return None if row is None else _to_record(ForecastRecord, row)


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


def _refuse_foreign_sqlite(path: Path) -> None:
    """Look for the tsl_* tables read-only first: opening a study database switches it to WAL, which
    rewrites a foreign file's header."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    except sqlite3.DatabaseError as error:
        raise StoreError(
            f"{path} is not a SQLite study database ({error}); give the file the sweep wrote"
        ) from None
    if not any(t.startswith("tsl_") for t in tables):
        raise StoreError(f"{path} holds no TinySigLIP study (no tsl_* tables); has the sweep run?")


def open_existing(url: str | Path) -> StudyStore:
    """Open a study database for reading: a SQLite file that does not exist is an error, not a new file."""
    text = str(url)
    database = text
    if "://" in text:
        u = make_url(text)
        database = u.database if u.get_backend_name() == "sqlite" and u.database != ":memory:" else None
    if "://" in text and make_url(text).get_backend_name() == "sqlite" and database is None:
        raise StoreError(
            f"{text} is an in-memory database: it holds no study; give the study database's file"
        )
    if database and not Path(database).exists():
        raise StoreError(f"no study database at {database} (has the sweep run?)")
    if database and (not Path(database).is_file() or Path(database).stat().st_size == 0):
        raise StoreError(
            f"{database} is not a study database (empty or not a file); give the file the sweep wrote"
        )
    if database:
        _refuse_foreign_sqlite(Path(database))
    store = open_store(text, create=False)
    if not any(t.startswith("tsl_") for t in store.table_names()):
        store.close()
        raise StoreError(
            f"{redact_url(text)} holds no TinySigLIP study (no tsl_* tables); has the sweep run?"
        )
    return store


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
    storage = optuna.storages.RDBStorage(with_password(text), engine_kwargs=kwargs)
    if make_url(text).get_backend_name() == "sqlite":

        @event.listens_for(storage.engine, "connect")
        def _pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.close()

    return storage
