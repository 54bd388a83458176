"""Issue 11's bad-input battery (scripts/bad_inputs.py): every input is a clean error, and its checks can fail."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import bad_input_cases  # noqa: E402
import bad_inputs  # noqa: E402


def test_every_bad_input_is_a_clean_error(tmp_path):
    results = bad_inputs.run_battery(tmp_path)
    not_clean = [bad_inputs._row(r) for r in results if not r.clean]
    assert not not_clean, "\n".join(not_clean)
    assert len(results) >= 90
    assert {r.case.category for r in results} == set(bad_input_cases.CATEGORIES)


@pytest.mark.parametrize(
    "behaviour, problem",
    [
        ("raise", "exception escaped"),
        ("exit0", "exit 0, expected 2"),
        ("traceback", "a traceback was printed"),
        ("vague", "message does not name"),
        ("password", "the password was printed"),
        ("write", "was written"),
        ("change", "was changed"),
    ],
)
def test_each_check_can_fail(tmp_path, monkeypatch, behaviour, problem):
    written, kept = tmp_path / "run", tmp_path / "kept.txt"
    kept.write_text("original")

    def fake_main(argv):
        print("error: --flag is wrong" if behaviour != "vague" else "error: something", file=sys.stderr)
        if behaviour == "raise":
            raise ValueError("boom")
        if behaviour == "traceback":
            print("Traceback (most recent call last):", file=sys.stderr)
        if behaviour == "password":
            print(f"postgresql://u:{bad_inputs.SECRET}@h/db", file=sys.stderr)
        if behaviour == "write":
            written.mkdir()
        if behaviour == "change":
            kept.write_text("changed")
        return 0 if behaviour == "exit0" else 2

    monkeypatch.setattr("tinysiglip.cli.main", fake_main)
    case = bad_inputs.Case(
        "t", behaviour, ["tinysiglip", "x"], ("--flag",), absent=(written,), unchanged=(kept,)
    )
    result = bad_inputs.check(case)
    assert not result.clean and any(problem in p for p in result.problems), result.problems
    monkeypatch.setattr("tinysiglip.cli.main", lambda argv: print("error: --flag", file=sys.stderr) or 2)
    kept.write_text("original")
    if written.exists():
        written.rmdir()
    assert bad_inputs.check(case).clean
