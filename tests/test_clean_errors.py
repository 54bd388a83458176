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
    foreign_bytes = foreign.read_bytes()
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
    assert foreign.read_bytes() == foreign_bytes  # looked at read-only (not switched to WAL)


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


# ---------------------------------------------------------------- fixes found by scripts/bad_inputs.py


def test_check_writable_folder_refuses_and_leaves_nothing(tmp_path):
    from tinysiglip.errors import TinySigLIPError, check_writable_folder

    check_writable_folder(tmp_path / "a" / "b", "--out")
    assert not (tmp_path / "a").exists()  # made for the test only, removed again
    with pytest.raises(TinySigLIPError, match="--artifacts /proc/nope/x: cannot create or write"):
        check_writable_folder("/proc/nope/x", "--artifacts")


def test_sweep_flags_refused_before_anything_is_written(tmp_path, capsys):
    from test_sweep_driver import HOOKS

    from tinysiglip.sweep.__main__ import main

    study, run_dir = write_study(tmp_path), tmp_path / "run"
    for flags, expected in (
        (["--dry-run", "--seeds", ","], "--seeds"),
        (["--dry-run", "--forecast", "--num-gpus", "-1"], "--num-gpus must be 0 or more"),
        ([*HOOKS, "--artifacts", "/proc/nope/artifacts"], "--artifacts /proc/nope/artifacts: cannot create"),
    ):
        assert main([str(study), "--run-dir", str(run_dir), *flags]) == 2, flags
        assert expected in capsys.readouterr().err
        assert not run_dir.exists()


def test_unreachable_postgres_is_one_line_without_the_password():
    from tinysiglip.results.engine import StoreError, schema_creation_lock

    with pytest.raises(StoreError) as info:
        with schema_creation_lock("postgresql+psycopg://tsl:s3cret-pw@127.0.0.1:1/studies"):
            pass
    assert "cannot open study database postgresql+psycopg://tsl:***@127.0.0.1:1/studies" in str(info.value)
    assert "s3cret-pw" not in str(info.value)


def test_train_refuses_bad_inputs_before_making_the_run_dir(tmp_path, tiny_caches, capsys):
    import yaml

    from tinysiglip.cli import main

    data = {f"{s}_cache": str(tiny_caches[s]) for s in ("train", "val", "test")}
    run_dir = tmp_path / "run"
    cases = {
        "device": (
            {"data": data, "train": {"device": "banana"}},
            "train.device 'banana' is not a torch device",
        ),
        "cache": ({"data": {**data, "train_cache": str(tmp_path / "nope.h5")}}, "nope.h5 does not exist"),
        "nodata": ({}, "data.train_cache is required"),
    }
    for name, (config, expected) in cases.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"student": {"name": "test_tiny"}, **config}))
        assert main(["train", "--config", str(path), "--run-dir", str(run_dir)]) == 2, name
        assert expected in capsys.readouterr().err
        assert not run_dir.exists(), name
    assert main(["train", "--config", str(tmp_path), "--run-dir", str(run_dir)]) == 2  # a folder as config
    assert f"config file {tmp_path} cannot be read" in capsys.readouterr().err


def test_cache_build_into_an_impossible_folder(tmp_path, capsys):
    from tinysiglip.cli import main

    args = ["cache", "build", "--teacher", "t", "--coco-captions", "c.json", "--images", "i"]
    assert main([*args, "--out", "/proc/nope/x.h5"]) == 2
    assert "--out: the folder /proc/nope: cannot create or write" in capsys.readouterr().err
