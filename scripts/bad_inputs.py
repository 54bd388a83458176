"""Issue 11's bad-input battery: 90+ inputs a real user might get wrong, each through the real command line.

    PYTHONPATH=$PWD python scripts/bad_inputs.py [--keep DIR] [--only CATEGORY]

Every case calls ``python -m tinysiglip.sweep`` or the ``tinysiglip`` command in-process (stdout/stderr
captured) and is a *clean error* only when: the exit status is the expected one (2, or 1 where the command
rightly reports a partial failure: the case says why), no traceback escaped or was printed, the message names
what is wrong (the case's needles, case-insensitive), no password from a URL is printed, and nothing was
written or changed where it should not be (paths that must not exist afterwards, files that must be
byte-identical). Prints category | input | outcome | verdict and
``N bad inputs tried: C clean errors, F not clean``; exits 1 when any case is not clean.
Fixtures (a tiny teacher, a shapes dataset, its caches, a COCO-like folder) are built once per run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "tests"), str(ROOT)]


SECRET = "hunter2-Sup3rSecret"  # the password in every URL a case gives; it must never be printed


@dataclass
class Case:
    category: str
    name: str
    argv: list[str]  # ["sweep", ...] -> python -m tinysiglip.sweep; ["tinysiglip", ...] -> the CLI
    needles: tuple[str, ...]  # each must appear in the output (case-insensitive): the file/field/flag
    codes: tuple[int, ...] = (2,)
    absent: tuple[Path, ...] = ()  # must not exist afterwards
    unchanged: tuple[Path, ...] = ()  # must be byte-identical afterwards
    why_code: str = ""  # why an exit status other than 2 is right


@dataclass
class Result:
    case: Case
    code: int | None
    stderr: str
    problems: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems


def _digest(path: Path) -> str | None:
    if path.is_dir():
        return "dir:" + ",".join(sorted(str(p.relative_to(path)) for p in path.rglob("*")))
    if not path.exists():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def invoke(argv: list[str]) -> tuple[int | None, str, str, str | None]:
    """(exit status, stdout, stderr, traceback of an exception that escaped main() or None)."""
    out, err = io.StringIO(), io.StringIO()
    escaped = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            if argv[0] == "sweep":
                from tinysiglip.sweep.__main__ import main as sweep_main

                code = sweep_main(argv[1:])
            else:
                from tinysiglip.cli import main as cli_main

                code = cli_main(argv[1:])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if exc.code is not None and not isinstance(exc.code, int):
                print(exc.code, file=sys.stderr)
        except BaseException:  # noqa: BLE001 - an escaped exception is exactly what the battery reports
            code, escaped = None, traceback.format_exc()
    return code, out.getvalue(), err.getvalue(), escaped


def check(case: Case) -> Result:
    before = {p: _digest(p) for p in case.unchanged}
    code, stdout, stderr, escaped = invoke(case.argv)
    text = stdout + stderr
    problems = []
    if escaped:
        problems.append(f"exception escaped: {escaped.strip().splitlines()[-1][:120]}")
    elif code not in case.codes:
        problems.append(f"exit {code}, expected {'/'.join(map(str, case.codes))}")
    if "Traceback" in text:
        problems.append("a traceback was printed")
    missing = [n for n in case.needles if n.lower() not in text.lower()]
    if missing:
        problems.append(f"message does not name {missing}")
    if SECRET in text:
        problems.append("the password was printed")
    problems += [f"{p} was written" for p in case.absent if p.exists()]
    problems += [f"{p} was changed" for p in case.unchanged if _digest(p) != before[p]]
    return Result(case, code, escaped or stderr, problems)


def run_battery(root: Path, only: str | None = None, *, echo: bool = False) -> list[Result]:
    """Build the fixtures under ``root`` and run every case (of category ``only``); returns the results."""
    from bad_input_cases import CATEGORIES, Fixtures

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        fx = Fixtures(Path(root))  # (the tiny teacher's and the cache builder's chatter)
    results = []
    cwd = os.getcwd()
    os.chdir(fx.root)  # a case that writes a default path writes it here, where it is seen and removed
    try:
        for category, make in CATEGORIES.items():
            if only and category != only:
                continue
            for case in make(fx):
                result = check(case)
                results.append(result)
                if echo:
                    print(_row(result), flush=True)
    finally:
        os.chdir(cwd)
    return results


def _row(r: Result) -> str:
    first = next((line for line in r.stderr.strip().splitlines() if line.strip()), "(no message)")
    outcome = f"exit {r.code}: {first[:90]}"
    verdict = "clean" if r.clean else "NOT CLEAN: " + "; ".join(r.problems)
    if r.clean and r.case.why_code and r.code != 2:
        verdict += f" (exit {r.code}: {r.case.why_code})"
    return f"{r.case.category:<15} | {r.case.name[:48]:<48} | {outcome} | {verdict}"


def summary(results: list[Result]) -> str:
    bad = sum(not r.clean for r in results)
    return f"{len(results)} bad inputs tried: {len(results) - bad} clean errors, {bad} not clean"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--keep", metavar="DIR", help="build the fixtures here and keep them (default: a temp folder)"
    )
    from bad_input_cases import CATEGORIES

    parser.add_argument("--only", choices=list(CATEGORIES), help="run one category")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        root = (
            Path(args.keep)
            if args.keep
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tsl-bad-")))
        )
        if args.keep and root.exists() and any(root.iterdir()):
            parser.error(f"--keep {root}: give an empty or new folder")
        print("category        | input                                            | outcome | verdict")
        results = run_battery(root, args.only, echo=True)
    print(summary(results) + f" ({time.perf_counter() - started:.0f}s)")
    return 1 if any(not r.clean for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
