"""Run every benchmark with --quick (each about 2 minutes on a 2-core CPU, pruning a few minutes),
one after the other in subprocesses; extra arguments (e.g. --device cuda) are passed to each.

``python -m bench.run_all [--only data_stall,eval_scale] [--skip pruning] [--no-append] [--device cuda]``
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

SCRIPTS = (
    "data_stall",
    "loader",
    "cache_vs_online",
    "cache_build",
    "decode",
    "eval_scale",
    "sweep_overhead",
    "pruning",
)
CPU_ONLY = {"loader", "sweep_overhead", "pruning"}  # no --device flag effect / CPU by design


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", help="comma-separated subset of " + ",".join(SCRIPTS))
    p.add_argument("--skip", default="", help="comma-separated scripts to skip")
    args, extra = p.parse_known_args(argv)
    chosen = [s for s in (args.only.split(",") if args.only else SCRIPTS) if s not in args.skip.split(",")]
    failed = []
    for name in chosen:
        passed = [a for a in extra if not (name in CPU_ONLY and a in ("--device", "cuda", "cpu"))]
        cmd = [sys.executable, "-m", f"bench.{name}", "--quick", *passed]
        print(f"\n=== {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        print(f"=== {name}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
