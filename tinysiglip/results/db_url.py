"""Study-database URLs: shown without their password, and given one from the environment.

A password belongs outside the URL on a cluster: ``PGPASSWORD`` / ``~/.pgpass`` (PostgreSQL's libpq reads
them, so ``optuna-dashboard`` does too) or ``$TINYSIGLIP_DB_PASSWORD`` (our engines add it to a URL that
has none). Printed URLs always go through :func:`redact_url`.
"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy.engine import make_url

__all__ = ["DB_PASSWORD_ENV", "dashboard_command", "redact_url", "with_password"]


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


DB_PASSWORD_ENV = "TINYSIGLIP_DB_PASSWORD"


def with_password(url: str) -> str:
    """The URL the engines use: a server URL without a password gets ``$TINYSIGLIP_DB_PASSWORD``.

    (PostgreSQL's libpq also reads ``PGPASSWORD`` and ``~/.pgpass`` by itself.) Never print the result."""
    password = os.environ.get(DB_PASSWORD_ENV)
    try:
        u = make_url(str(url))
    except Exception:  # noqa: BLE001 - a SQLite path: no password
        return str(url)
    if not password or u.get_backend_name() == "sqlite" or u.password is not None:
        return str(url)
    return u.set(password=password).render_as_string(hide_password=False)


def dashboard_command(url: str) -> str:
    """The ``optuna-dashboard`` command for this database that works as printed, without the password:
    the URL without it, and the password through ``PGPASSWORD`` (which libpq reads)."""
    import shlex

    try:
        u = make_url(str(url))
    except Exception:  # noqa: BLE001 - a SQLite path
        return f"optuna-dashboard {shlex.quote(str(url))}"
    if u.get_backend_name() == "sqlite":
        return f"optuna-dashboard {shlex.quote(str(url))}"
    bare = shlex.quote(u._replace(password=None).render_as_string(hide_password=False))
    if u.password is not None:
        return (
            f"optuna-dashboard {bare}   (first `export PGPASSWORD=...` with the database password, or put it "
            "in ~/.pgpass: it is not printed)"
        )
    if os.environ.get(DB_PASSWORD_ENV):
        return f'PGPASSWORD="${DB_PASSWORD_ENV}" optuna-dashboard {bare}'
    return f"optuna-dashboard {bare}"
