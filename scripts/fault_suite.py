"""Inject the faults of issue 11 into small sweeps and print what happened: fault -> outcome -> expected.

    PYTHONPATH=$PWD python scripts/fault_suite.py [--quick] [--keep DIR] [--only SECTION ...]

The sweeps run the real driver (Ray Tune + Optuna on SQLite) with the stub trainer of
tests/sweep_stubs.py, so a fault costs seconds. After each fault the study database is checked: no
trial or parameter set twice, no run left ``running`` in the database while Optuna says it finished,
finals re-run from each cell's true best. Every fault ends in one of: "survived" (nothing lost or
duplicated), "refused" (a clean error, exit 2, nothing written), or FAIL. ``--quick`` is the subset
the slow test runs in CI: signals and drivers, the bad-input battery (scripts/bad_inputs.py, in a process
of its own), a damaged checkpoint (scripts/fault_caches.py),
and the private Ray's sockets and a killed trial worker (scripts/fault_ray.py). The full suite adds
damaged and wrong caches on real tiny caches, trial failures, divergence and --retry-failed, and (with
TINYSIGLIP_TEST_POSTGRES_URL) drivers creating tables on an empty PostgreSQL database. The summary
counts injected faults apart from bad inputs. The exit status is 1 when any row FAILs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fault_caches import cache_faults, checkpoint_fault  # noqa: E402
from fault_kit import ROOT, Row, World, _env, _one_line_error, _verdict  # noqa: E402
from fault_ray import ray_workers  # noqa: E402

# ----------------------------------------------------------------------------------------- faults


def _group_members(pgid: int) -> list[int]:
    """The processes of process group ``pgid`` (from /proc)."""
    members = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
            members.append(int(pid))
    return members


def signals_drivers_and_resume(root: Path) -> list[Row]:
    """Ctrl-C, SIGTERM, a killed driver, second drivers, stale finals, a changed budget: one study."""
    w = World(root / "signals", trials=6)
    rows = []
    # Once a trial has finished, the hold file keeps the others before their last epoch, so the search
    # is still running when the checks below (each a new driver process) are done, however slow they
    # are (a fresh clone compiles every module on first import).
    hold = root / "signals" / "hold"
    first = w.start(session=True, TSL_STUB_SLEEP="0.8", TSL_STUB_HOLD=str(hold))
    w.wait_for_progress(first)
    hold.touch()
    for args, what in (
        ((), "second fresh driver on a running study"),
        (("--resume",), "second --resume while one runs"),
    ):
        p = w.run(*args)
        ok = _one_line_error(p) and f"pid {first.pid}" in p.stderr
        rows.append(
            Row(
                what,
                f"exit {p.returncode}: {p.stderr.strip()[:70]}",
                "exit 2 naming the holder",
                _verdict(ok, "refused"),
            )
        )
    group = _group_members(first.pid)
    os.killpg(first.pid, signal.SIGINT)  # a terminal's Ctrl-C: the driver and the Ray processes it started
    out, err = first.communicate(timeout=300)
    finals = w.runs(kind="final")
    ok = first.returncode == 130 and not finals and "--resume" in err and not w.problems(finished=False)
    rows.append(
        Row(
            f"Ctrl-C to the driver's process group ({len(group)} processes) mid-search",
            f"exit {first.returncode}, {len(finals)} final(s)",
            "exit 130, no finals, resume line",
            _verdict(ok, "survived"),
        )
    )

    hold.unlink()
    second = w.start("--resume", TSL_STUB_SLEEP="0.8", TSL_STUB_HOLD=str(hold))
    w.wait_for_progress(second)
    hold.touch()
    second.send_signal(signal.SIGTERM)
    out, err = second.communicate(timeout=300)
    ok = (
        second.returncode == 143
        and not w.runs(kind="final")
        and "Traceback" not in err
        and not w.problems(finished=False)
    )
    rows.append(
        Row(
            "SIGTERM mid-search",
            f"exit {second.returncode}",
            "exit 143, no finals, no stack dump",
            _verdict(ok, "survived"),
        )
    )

    hold.unlink()
    third = w.start("--resume", TSL_STUB_SLEEP="0.8")
    w.wait_for_lease(third)
    time.sleep(5)
    third.kill()
    third.communicate(timeout=120)
    p = w.run("--resume")
    problems = w.problems(finished=True)
    ok = p.returncode == 0 and "took over the study's lease" in p.stdout and not problems
    rows.append(
        Row(
            "SIGKILL driver, then --resume",
            f"exit {p.returncode}; {'; '.join(problems) or 'db consistent'}",
            "lease taken over, all finished, finals from best",
            _verdict(ok, "survived"),
        )
    )
    trials = [r for r in w.runs(kind="trial")]
    ok = len(trials) == 2 * w.trials and not problems
    rows.append(
        Row(
            "3 resumes re-drawing parameters",
            f"{len(trials)} trials, duplicates: {'yes' if problems else 'no'}",
            f"{2 * w.trials} trials, none repeated",
            _verdict(ok, "survived"),
        )
    )

    # finals that a driver of an older version ran from a stale best: marked superseded and redone
    con = sqlite3.connect(w.run_dir / "study.db")
    con.execute(
        "UPDATE tsl_runs SET source_trial_number = source_trial_number + 1 WHERE kind = 'final' AND cell = 'strong'"
    )
    con.commit()
    con.close()
    p = w.run("--resume")
    superseded = [r for r in w.runs(kind="final") if r.status == "superseded"]
    ok = p.returncode == 0 and len(superseded) == 2 and not w.problems(finished=True)
    rows.append(
        Row(
            "finals ran from a superseded best",
            f"{len(superseded)} marked superseded, redone",
            "kept as superseded, redone from the best",
            _verdict(ok, "survived"),
        )
    )

    p = w.run("--resume", "--epochs", "2")
    ok = p.returncode == 2 and "epochs per trial 4 -> 2" in p.stderr and "Traceback" not in p.stderr
    rows.append(
        Row(
            "--resume with another --epochs",
            f"exit {p.returncode}",
            "exit 2 listing the difference",
            _verdict(ok, "refused"),
        )
    )
    rows += _hostile_text(w, root)
    return rows


def _hostile_text(w: World, root: Path) -> list[Row]:
    import yaml

    from tinysiglip.results.report import main as report

    con = sqlite3.connect(w.run_dir / "study.db")
    settings = json.loads(con.execute("SELECT settings FROM tsl_studies").fetchone()[0])
    settings["cells"]["strong"]["description"] = (
        "x\ndata: {train_cache: /etc/passwd}\u2028<script>alert(1)</script> [a](javascript:alert(2))"
    )
    con.execute("UPDATE tsl_studies SET settings = ?", (json.dumps(settings),))
    con.commit()
    con.close()
    out = root / "report"
    with contextlib.redirect_stdout(io.StringIO()):
        rc = report(["--storage", w.url, "--out", str(out)])
    text = (out / "best_configs" / "strong.yaml").read_text() if rc == 0 else ""
    live_yaml = "/etc/passwd" in json.dumps(yaml.safe_load(text) if text else {})
    md = "\n".join(p.read_text() for p in out.glob("*.md")) if rc == 0 else ""
    live_md = "<script" in md or "](javascript" in md.replace("\\](javascript", "")
    return [
        Row(
            "multi-line description -> best_configs",
            "live YAML line" if live_yaml else "stays a comment",
            "no live YAML",
            _verdict(rc == 0 and not live_yaml, "survived"),
        ),
        Row(
            "<script>, javascript: link -> Markdown",
            "raw markup" if live_md else "escaped",
            "escaped",
            _verdict(rc == 0 and not live_md and "alert(1)" in md, "survived"),
        ),
    ]


def bad_inputs(root: Path) -> list[Row]:
    """The bad-input battery (scripts/bad_inputs.py, 150 inputs through the real command lines), run in a
    process of its own; one row per input (the table shows only the ones that are not clean)."""
    p = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bad_inputs.py"), "--keep", str(root / "bad_inputs")],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    rows = []
    for line in p.stdout.splitlines()[1:]:
        parts = [part.strip() for part in line.split(" | ")]
        if len(parts) < 4:
            continue
        category, name, outcome, verdict = parts[0], parts[1], " | ".join(parts[2:-1]), parts[-1]
        clean = verdict.startswith("clean")
        rows.append(
            Row(
                f"{category}: {name}",
                outcome,
                "clean error",
                "refused" if clean else "FAIL",
                detail="" if clean else verdict,
            )
        )
    if p.returncode not in (0, 1) or not rows:
        rows.append(
            Row("bad-input battery", f"exit {p.returncode}", "it runs", "FAIL", detail=p.stderr[-2000:])
        )
    return rows


def trial_failures(root: Path) -> list[Row]:
    w = World(root / "failures", trials=4, conc=2)
    p = w.run(TSL_STUB_FAULTS="raise_once:0,diverge_once:1,always:2")
    runs = {(r.cell, r.optuna_trial_number): r for r in w.runs(kind="trial")}
    once, diverged, always = runs[("strong", 0)], runs[("strong", 1)], runs[("strong", 2)]
    rows = [
        Row(
            "trial raises once",
            f"{once.status}, {once.attempts} attempts",
            "complete after 1 retry",
            _verdict(once.status == "complete" and once.attempts == 2, "survived"),
        ),
        Row(
            "NaN loss (divergence)",
            f"{diverged.status}, {diverged.attempts} attempt(s)",
            "failed, not retried",
            _verdict(diverged.status == "failed" and diverged.attempts == 1, "survived"),
        ),
        Row(
            "trial always raises",
            f"{always.status}, {always.attempts} attempts",
            "failed after max_failures",
            _verdict(always.status == "failed" and always.attempts == 3, "survived"),
        ),
    ]
    p = w.run("--resume", "--retry-failed")
    import optuna

    ostudy = optuna.load_study(study_name="stubstudy/strong", storage=w.url)
    retried = [t for t in ostudy.trials if "tsl_retry_of" in t.user_attrs]
    ok = (
        p.returncode == 0
        and len(retried) == 2
        and all(t.state.is_finished() and t.state.name != "FAIL" for t in retried)
    )
    rows.append(
        Row(
            "--retry-failed",
            f"{len(retried)} failed trial(s) rerun",
            "failed trials rerun, not counted",
            _verdict(ok and not w.problems(finished=True), "survived"),
        )
    )
    return rows


def postgres_table_race(root: Path) -> list[Row]:
    url = os.environ.get("TINYSIGLIP_TEST_POSTGRES_URL")
    if not url:
        return []
    import uuid

    import sqlalchemy
    from test_sweep_faults import create_tables_at_once

    admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    name = f"tsl_fault_{uuid.uuid4().hex[:8]}"
    with admin.connect() as c:
        c.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    try:
        db = sqlalchemy.engine.make_url(url).set(database=name).render_as_string(hide_password=False)
        codes = [p.returncode for p, _, _ in create_tables_at_once(db, 4, locked=True)]
    finally:
        with admin.connect() as c:
            c.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    return [
        Row(
            "4 drivers create tables on empty PostgreSQL",
            f"exit codes {codes}",
            "all 0",
            _verdict(codes == [0] * 4, "survived"),
        )
    ]


QUICK: list[Callable[[Path], list[Row]]] = [
    signals_drivers_and_resume,
    bad_inputs,
    checkpoint_fault,
    ray_workers,
]
FULL: list[Callable[[Path], list[Row]]] = [*QUICK, cache_faults, trial_failures, postgres_table_race]
INPUT_SECTIONS = {"bad_inputs"}  # rows of these are bad inputs, not injected faults


def run_suite(root: Path, quick: bool, only: list[str] | None = None) -> list[Row]:
    rows: list[Row] = []
    sections = [f for f in FULL if f.__name__ in only] if only else QUICK if quick else FULL
    for fault in sections:
        try:
            got = fault(root)
        except Exception as exc:  # noqa: BLE001 - a fault that breaks the suite is a FAIL row, not a crash
            error = f"suite error: {type(exc).__name__}: {exc}"
            got = [Row(fault.__name__, error[:120], "-", "FAIL", detail=error)]
        for row in got:
            row.section = fault.__name__
        rows += got
    return rows


def _counts(rows: list[Row]) -> tuple[int, int, int, int]:
    survived = sum(r.verdict == "survived" for r in rows)
    refused = sum(r.verdict == "refused" for r in rows)
    return len(rows), survived, refused, len(rows) - survived - refused


def table(rows: list[Row]) -> str:
    widths = [
        max(len(getattr(r, f)) for r in rows + [Row("fault", "outcome", "expected", "verdict")])
        for f in ("fault", "outcome", "expected", "verdict")
    ]
    widths = [min(w, 70) for w in widths]

    def line(r: Row) -> str:
        return " | ".join(
            str(v)[:w].ljust(w) for v, w in zip((r.fault, r.outcome, r.expected, r.verdict), widths)
        )

    out = [line(Row("fault", "outcome", "expected", "verdict")), "-+-".join("-" * w for w in widths)]
    out += [line(r) for r in rows if r.section not in INPUT_SECTIONS or r.verdict == "FAIL"]
    faults = [r for r in rows if r.section not in INPUT_SECTIONS]
    n, survived, refused, failed = _counts(faults)
    out.append(
        f"{n} faults injected: {survived} survived with nothing lost, {refused} refused cleanly, {failed} FAIL"
    )
    inputs = [r for r in rows if r.section in INPUT_SECTIONS]
    if inputs:
        n, _, refused, failed = _counts(inputs)
        out.append(
            f"{n} bad inputs tried: {refused} clean errors, {n - refused} FAIL "
            "(scripts/bad_inputs.py prints each of them)"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the CI subset")
    ap.add_argument("--keep", type=Path, help="work here and keep it (default: a temporary folder)")
    ap.add_argument(
        "--only",
        action="append",
        choices=[f.__name__ for f in FULL],
        help="run only this section (repeatable)",
    )
    args = ap.parse_args(argv)
    started = time.time()
    if args.keep:
        rows = run_suite(args.keep, args.quick, args.only)
    else:
        with tempfile.TemporaryDirectory(prefix="tsl-faults-") as tmp:
            rows = run_suite(Path(tmp), args.quick, args.only)
    print(table(rows))
    for r in rows:
        if r.detail:
            print(f"\n{r.fault}: {r.detail}")
    print(f"({time.time() - started:.0f}s)")
    return 1 if any(r.verdict == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
