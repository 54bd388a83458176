"""Bad input gets one clean line and exit 2, never a traceback, and loses nothing (issue 11 §9)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_sweep_driver import ROOT, env, write_study


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300
    )


def test_train_into_an_impossible_run_dir(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("student: {name: test_tiny}\n")
    p = run("tinysiglip", "train", "--config", str(config), "--run-dir", "/proc/nope")
    assert p.returncode == 2 and "--run-dir /proc/nope: cannot create or write" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("kind", ["memory", "dev_null", "empty_file", "foreign_sqlite"])
def test_report_on_what_is_not_a_study_database(tmp_path, kind):
    import sqlite3

    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    foreign = tmp_path / "other.db"
    sqlite3.connect(foreign).execute("CREATE TABLE t (x)").connection.commit()
    url = {
        "memory": "sqlite:///:memory:",
        "dev_null": "/dev/null",
        "empty_file": str(empty),
        "foreign_sqlite": str(foreign),
    }[kind]
    for tool in ("report", "dashboards"):
        p = run("tinysiglip", tool, "--storage", url, "--out", str(tmp_path / tool))
        assert p.returncode == 2, p.stderr
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "SELECT" not in p.stderr
    assert empty.stat().st_size == 0  # not rewritten


def test_sweep_refuses_an_in_memory_database(tmp_path):
    p = run("tinysiglip.sweep", str(write_study(tmp_path)), "--storage", "sqlite:///:memory:", "--dry-run")
    assert p.returncode == 2 and "in-memory database" in p.stderr and "Traceback" not in p.stderr


def test_trial_errors_are_stored_without_colour_codes(tmp_path):
    from tinysiglip.sweep.state import trial_error

    class Trial:
        error_file = str(tmp_path / "error.txt")

    Path(Trial.error_file).write_text(
        "Failure # 1\n\x1b[36mray::train\x1b[0m \x1b[1;31mRuntimeError\x1b[39m: boom"
    )
    assert trial_error(Trial()) == "Failure # 1\nray::train RuntimeError: boom"
