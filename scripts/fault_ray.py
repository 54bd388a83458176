"""Fault-suite section on the private Ray of a stub sweep (issue 11 §8 and a killed trial worker).

While the sweep runs, every TCP socket its Ray processes listen on must be on loopback (a private,
single-machine sweep serves nobody else); then the Ray worker process running a trial is killed
mid-epoch (SIGKILL, the driver lives on): the trial is retried and the study finishes with nothing
lost or duplicated.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from fault_kit import Row, World, _verdict


def _tree(pid: int) -> list[int]:
    kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [k for c in map(int, kids) for k in (c, *_tree(c))]


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _listeners(pids: set[int]) -> list[str]:
    """Local addresses of the listening TCP sockets owned by ``pids``."""
    out = []
    for line in subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout.splitlines():
        if {int(p) for p in re.findall(r"pid=(\d+)", line)} & pids:
            out.append(line.split()[3])
    return out


def _loopback(address: str) -> bool:
    return address.startswith(("127.", "[::ffff:127.", "[::1]:"))


def ray_workers(root: Path) -> list[Row]:
    w = World(root / "ray", trials=3, conc=2)
    driver = w.start(TSL_STUB_SLEEP="1.5")
    listening: list[str] = []
    killed = None
    deadline = time.time() + 300
    try:
        while time.time() < deadline and driver.poll() is None and killed is None:
            time.sleep(0.3)
            running = [r for r in w.runs(kind="trial", status="running") if (r.epochs_done or 0) >= 1]
            if not running:
                continue
            tree = _tree(driver.pid)
            listening = _listeners({driver.pid, *tree})
            actors = [p for p in tree if _title(p).startswith("ray::ImplicitFunc.train")]
            if actors:
                os.kill(actors[0], signal.SIGKILL)  # a trial's worker dies mid-epoch; the driver lives on
                killed = actors[0]
        out, err = driver.communicate(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
    rows = []
    if shutil.which("ss") is not None:
        off = [a for a in listening if not _loopback(a)]
        rows.append(
            Row(
                "private Ray listening sockets",
                f"{len(listening)} listening, not on loopback: {off[:3]}",
                "all on 127.0.0.1",
                _verdict(len(listening) >= 2 and not off, "survived"),
            )
        )
    problems = w.problems(finished=True) if driver.returncode == 0 else [err.strip()[-80:]]
    trials = w.runs(kind="trial")
    retried = [r for r in trials if r.attempts > 1]
    epochs_twice = []
    if retried:
        from tinysiglip.results.store import open_store

        with open_store(w.url, create=False) as store:
            epochs = [e.epoch for e in store.evaluations(retried[0].id)]
        epochs_twice = sorted({e for e in epochs if epochs.count(e) > 1})
    ok = killed is not None and not problems and len(trials) == 2 * w.trials and len(retried) == 1
    rows.append(
        Row(
            "SIGKILL a trial's Ray worker mid-epoch",
            f"exit {driver.returncode}, {len(retried)} retried, epochs twice {epochs_twice};"
            f" {'; '.join(problems) or 'db consistent'}" + ("" if killed else "; no worker found to kill"),
            "retried, all finished once, finals from best",
            _verdict(ok and not epochs_twice, "survived"),
        )
    )
    return rows
