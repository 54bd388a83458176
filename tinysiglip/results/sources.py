"""Where the study database is, for the report's and the dashboards' command lines."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tinysiglip.errors import TinySigLIPError
from tinysiglip.results.store import StudyStore, open_existing, redact_url

__all__ = ["add_source_arguments", "default_out_dir", "open_studies", "resolve_source"]


def default_out_dir(url: str, what: str, study: str, *, multi: bool) -> Path:
    """Where ``what`` ("report" or "dashboards") goes by default: beside a SQLite database
    (``<run_dir>/report[/<study>]``, ``<run_dir>/dashboards``), else under ``reports/``."""
    from sqlalchemy.engine import make_url

    try:
        u = make_url(url)
        if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
            base = Path(u.database).resolve().parent / what
            return base / study if multi and what == "report" else base
    except Exception:  # noqa: BLE001 - not a URL: fall back to reports/
        pass
    if what == "report":
        return Path("reports") / study
    return Path("reports") / "dashboards" if multi else Path("reports") / study / "dashboards"


def add_source_arguments(p: argparse.ArgumentParser) -> None:
    """Where the study database is: a URL, or a study file (its storage, as `--local` would use it)."""
    p.add_argument("--storage", metavar="URL", help="study database (SQLAlchemy URL or SQLite path)")
    p.add_argument(
        "--study-file",
        metavar="STUDY.yaml",
        help="take the study name and (unless --storage names another) the storage URL from it",
    )
    p.add_argument("--local", action="store_true", help="with --study-file: the --local world's database")
    p.add_argument("--run-dir", metavar="DIR", help="with --study-file: the run folder it was run with")
    p.add_argument("--study", default=None, metavar="NAME|all", help="study name, or all (default: all)")


def resolve_source(args) -> tuple[str, list[str] | None]:
    """(storage URL, study names or None for all). With both ``--study-file`` and ``--storage`` (a
    study run with ``--storage`` on a cluster) the study comes from the file, the database from the URL."""
    if not args.study_file and not args.storage:
        raise TinySigLIPError("name the study database: --storage URL, --study-file STUDY.yaml, or both")
    if args.study_file:
        from tinysiglip.sweep.study import load_study

        study = load_study(args.study_file, local=args.local, storage=args.storage, run_dir=args.run_dir)
        names = None if args.study == "all" else [args.study or study.name]
        return study.storage_url, names
    names = None if args.study in (None, "all") else [args.study]
    return args.storage, names


def open_studies(args) -> tuple[str, StudyStore, list[str]] | None:
    """(url, store, study names) from the source options; None after printing a clear error."""
    try:
        url, names = resolve_source(args)
        store = open_existing(url)
        known = [s.name for s in store.studies()]
    except TinySigLIPError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    except Exception as exc:  # noqa: BLE001 - a clear message instead of a traceback
        print(f"error: cannot read the study database: {exc}", file=sys.stderr)
        return None
    names = names or known
    missing = [n for n in names if n not in known]
    if missing or not names:
        print(
            f"error: no study {', '.join(missing) or '(none recorded)'} in {redact_url(url)}; "
            f"studies there: {', '.join(known) or 'none'}",
            file=sys.stderr,
        )
        return None
    return url, store, names
