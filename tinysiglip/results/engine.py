"""Engines of the study database: SQLite pragmas, table creation under a lock, and the migration an
older database needs (added nullable columns). :mod:`.store` builds on these."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event, inspect
from sqlalchemy import text as sql_text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import NullPool

from tinysiglip.errors import TinySigLIPError
from tinysiglip.results.db_url import redact_url, with_password
from tinysiglip.results.schema import Base

__all__ = ["StoreError", "add_missing_columns", "make_engine", "schema_creation_lock"]

SQLITE_BUSY_TIMEOUT_MS = 60_000
SCHEMA_LOCK_KEY = 0x7451_5349_474C  # "tSIGL": the advisory-lock key of table creation


class StoreError(TinySigLIPError):
    """The study database cannot be opened or is inconsistent."""


def make_engine(url: str) -> Engine:
    url = with_password(url)
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


def add_missing_columns(engine: Engine) -> list[str]:
    """Add the nullable columns this version's tables have and an older database lacks.

    A study database outlives the code that made it; new columns are always nullable, so an
    ``ALTER TABLE ... ADD COLUMN`` is all an old database needs. Returns "table.column" of each added."""
    insp = inspect(engine)
    present_tables = set(insp.get_table_names())
    added = []
    for table in Base.metadata.sorted_tables:
        if table.name not in present_tables:
            continue
        have = {c["name"] for c in insp.get_columns(table.name)}
        for column in table.columns:
            if column.name in have:
                continue
            if not column.nullable:
                raise StoreError(
                    f"{redact_url(engine.url)}: table {table.name} lacks column {column.name}, which cannot be "
                    "added to existing rows (not nullable): rebuild the database"
                )
            kind = column.type.compile(dialect=engine.dialect)
            prep = engine.dialect.identifier_preparer
            with engine.begin() as conn:
                conn.execute(
                    sql_text(
                        f"ALTER TABLE {prep.quote(table.name)} ADD COLUMN {prep.quote(column.name)} {kind}"
                    )
                )
            added.append(f"{table.name}.{column.name}")
    return added


@contextmanager
def schema_creation_lock(url: str | Path) -> Iterator[None]:
    """Serialise table creation between drivers starting at once on an empty PostgreSQL database (a
    session advisory lock; concurrent ``CREATE TABLE`` there fails with ``UniqueViolation``). Other
    databases need none: SQLite serialises writers on its file lock."""
    text = str(url)
    if "://" not in text or make_url(text).get_backend_name() != "postgresql":
        yield
        return
    engine = create_engine(with_password(text), poolclass=NullPool)
    try:
        try:
            conn = engine.connect()
        except Exception as exc:  # unreachable server, wrong password, no database: one line, no password
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            password = make_url(with_password(text)).password
            reason = reason.replace(str(password), "***") if password else reason
            raise StoreError(
                f"cannot open study database {redact_url(text)}: {reason}; check the server, the database "
                "name and the credentials"
            ) from None
        with conn:
            conn.execute(sql_text("SELECT pg_advisory_lock(:k)"), {"k": SCHEMA_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(sql_text("SELECT pg_advisory_unlock(:k)"), {"k": SCHEMA_LOCK_KEY})
    finally:
        engine.dispose()
