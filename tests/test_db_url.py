"""Study-database passwords: taken from the URL or the environment, never printed; the printed
``optuna-dashboard`` command works as printed."""

from __future__ import annotations

import os
import shlex
from urllib.parse import quote

import pytest
from sqlalchemy.engine import make_url

from tinysiglip.results.db_url import dashboard_command, redact_url, with_password

SECRET = "s3cr;t$pw"


def test_password_from_the_environment_reaches_the_engine_url_only(monkeypatch):
    monkeypatch.setenv("TINYSIGLIP_DB_PASSWORD", SECRET)
    assert make_url(with_password("postgresql+psycopg://tsl@db.example/studies")).password == SECRET
    # a password in the URL wins; SQLite has none
    assert make_url(with_password("postgresql+psycopg://tsl:other@db/s")).password == "other"
    assert with_password("sqlite:///runs/x/study.db") == "sqlite:///runs/x/study.db"
    command = dashboard_command("postgresql+psycopg://tsl@db.example/studies")
    assert SECRET not in command
    assert (
        command
        == 'PGPASSWORD="$TINYSIGLIP_DB_PASSWORD" optuna-dashboard postgresql+psycopg://tsl@db.example/studies'
    )


def test_dashboard_command_never_shows_the_password(monkeypatch):
    monkeypatch.delenv("TINYSIGLIP_DB_PASSWORD", raising=False)
    url = f"postgresql+psycopg://tsl:{SECRET}@db.example:5433/studies"
    command = dashboard_command(url)
    for shown in (command, redact_url(url)):
        assert SECRET not in shown and quote(SECRET) not in shown and "s3cr" not in shown
    words = shlex.split(command.split("   (")[0])
    assert words == ["optuna-dashboard", "postgresql+psycopg://tsl@db.example:5433/studies"]
    assert "PGPASSWORD" in command
    assert (
        dashboard_command("postgresql+psycopg://tsl@db/s") == "optuna-dashboard postgresql+psycopg://tsl@db/s"
    )
    assert (
        dashboard_command("sqlite:////tmp/my runs/study.db")
        == "optuna-dashboard 'sqlite:////tmp/my runs/study.db'"
    )


@pytest.mark.skipif(
    not os.environ.get("TINYSIGLIP_TEST_POSTGRES_URL"),
    reason="TINYSIGLIP_TEST_POSTGRES_URL is not set (CI's PostgreSQL service sets it)",
)
def test_printed_dashboard_url_opens_the_postgres_database(monkeypatch):
    """What optuna-dashboard does with the printed URL (the password from PGPASSWORD, as printed), and
    our own store with the password in TINYSIGLIP_DB_PASSWORD instead of the URL."""
    import optuna

    from tinysiglip.results.store import open_store

    url = make_url(os.environ["TINYSIGLIP_TEST_POSTGRES_URL"])
    monkeypatch.delenv("TINYSIGLIP_DB_PASSWORD", raising=False)
    printed = shlex.split(dashboard_command(url.render_as_string(hide_password=False)).split("   (")[0])[-1]
    # no password in the printed URL (a substring check would trip on a password equal to the user name)
    assert make_url(printed).password is None
    if url.password is not None:
        monkeypatch.setenv("PGPASSWORD", url.password)
    storage = optuna.storages.RDBStorage(printed)
    optuna.create_study(storage=storage, study_name=f"tsl-dashboard-{os.getpid()}", load_if_exists=True)
    if url.password is not None:
        monkeypatch.delenv("PGPASSWORD")
        monkeypatch.setenv("TINYSIGLIP_DB_PASSWORD", url.password)
    open_store(printed).studies()
