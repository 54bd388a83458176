"""What every section of scripts/fault_suite.py shares: a result row, the stub study ``World`` (its
driver commands, waits and the database checks that say whether anything was lost or duplicated)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [p for p in (str(ROOT / "tests"), str(ROOT)) if p not in sys.path]

from test_sweep_driver import HOOKS, write_study  # noqa: E402  (the stub study and its hooks)

from tinysiglip.results.store import open_store  # noqa: E402


@dataclass
class Row:
    fault: str
    outcome: str
    expected: str
    verdict: str  # survived | refused | FAIL
    section: str = ""  # the suite's section that made the row
    detail: str = ""  # the whole error of a section that broke (the outcome column is cut short)


def _env(**extra: str) -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), str(ROOT), e.get("PYTHONPATH", "")])
    e.update(extra)
    return e


class World:
    """One stub study under ``root``: its file, run folder and database."""

    def __init__(self, root: Path, trials: int, conc: int = 2):
        root.mkdir(parents=True, exist_ok=True)
        self.study = write_study(root, trials=trials, conc=conc)
        self.run_dir = root / "run"
        self.url = f"sqlite:///{self.run_dir / 'study.db'}"
        self.trials = trials

    def cmd(self, *args: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "tinysiglip.sweep",
            str(self.study),
            "--run-dir",
            str(self.run_dir),
            *args,
            *HOOKS,
        ]

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.cmd(*args), cwd=ROOT, env=_env(**env), capture_output=True, text=True, timeout=900
        )

    def start(self, *args: str, session: bool = False, **env: str) -> subprocess.Popen:
        """The driver in the background; ``session``: in a process group of its own (as a terminal runs
        a command), so ``os.killpg`` reaches the driver and every process it started, as Ctrl-C does."""
        return subprocess.Popen(
            self.cmd(*args),
            cwd=ROOT,
            env=_env(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=session,
        )

    def runs(self, **kw):
        if not (self.run_dir / "study.db").exists():
            return []  # (opening it would create an empty file before the sweep does)
        try:
            with open_store(self.url, create=False) as store:
                return store.runs("stubstudy", **kw)
        except Exception as exc:  # noqa: BLE001 - the driver may be creating its tables right now
            self.last_error = repr(exc)
            return []

    def wait_for_progress(self, proc: subprocess.Popen, timeout: float = 300) -> None:
        """Until one more trial finished in this run while the search goes on (no final run yet)."""
        before = len([r for r in self.runs(kind="trial") if r.status in ("complete", "pruned")])
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.3)
            runs = self.runs(kind="trial")
            done = sum(r.status in ("complete", "pruned") for r in runs)
            if done > before and len(runs) > done and not self.runs(kind="final"):
                return
        out, err = proc.communicate() if proc.poll() is not None else ("", "")
        raise RuntimeError(
            f"the sweep never had a finished and a running trial at once: {err.strip()[-300:]}"
            f" (last read error: {getattr(self, 'last_error', None)})"
        )

    def wait_for_lease(self, proc: subprocess.Popen, timeout: float = 300) -> None:
        """Until ``proc`` holds the study's lease (it has started; a kill now leaves work behind)."""
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.3)
            try:
                with sqlite3.connect(self.run_dir / "study.db") as con:
                    if con.execute("SELECT pid FROM tsl_leases").fetchall() == [(proc.pid,)]:
                        return
            except sqlite3.Error:
                continue
        raise RuntimeError("the driver never took the study's lease")

    def problems(self, *, finished: bool) -> list[str]:
        """What is wrong in the database: duplicates, rows out of step with Optuna, finals not from the best."""
        import optuna

        out = []
        runs = open_store(self.url, create=False).runs("stubstudy")
        for cell in ("strong", "flat"):
            ostudy = optuna.load_study(study_name=f"stubstudy/{cell}", storage=self.url)
            trials = ostudy.get_trials(deepcopy=False)
            params = [json.dumps(t.params, sort_keys=True) for t in trials if t.params]
            if len(params) != len(set(params)) and not any("tsl_retry_of" in t.user_attrs for t in trials):
                out.append(f"{cell}: a parameter set drawn twice")
            rows = {r.optuna_trial_number: r for r in runs if r.cell == cell and r.kind == "trial"}
            for t in trials:
                r = rows.get(t.number)
                if t.state.is_finished() and (r is None or r.status == "running"):
                    out.append(f"{cell} trial {t.number}: Optuna {t.state.name}, database {r and r.status}")
            if finished:
                live = [t for t in trials if not t.state.is_finished()]
                if live:
                    out.append(f"{cell}: {len(live)} trial(s) never finished")
                finals = [r for r in runs if r.cell == cell and r.kind == "final" and r.status == "complete"]
                best = ostudy.best_trial.number
                if sorted(r.seed for r in finals) != [0, 1] or any(
                    r.source_trial_number != best for r in finals
                ):
                    out.append(
                        f"{cell}: complete finals {[(r.seed, r.source_trial_number) for r in finals]}, best {best}"
                    )
        return out


def _one_line_error(p: subprocess.CompletedProcess) -> bool:
    return p.returncode == 2 and "Traceback" not in p.stderr and p.stderr.strip().startswith("error:")


def _verdict(ok: bool, kind: str) -> str:
    return kind if ok else "FAIL"
