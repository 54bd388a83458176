"""bench/run_gpu.sh end to end on the CPU at tiny sizes (TSL_BENCH_SMALL=1), with the packages the
GPU machine lacks made unimportable, so that a lent GPU's minutes are not spent on a typo."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ABSENT_ON_THE_GPU_MACHINE = ("ray", "optuna", "sqlalchemy", "plotly")
STEPS = (
    "preflight",
    "gpu_share",
    "data_stall",
    "eval_scale",
    "cache_vs_online",
    "loader",
    "decode",
    "cache_build",
)


@pytest.mark.slow
def test_run_gpu_script_runs_every_step_on_the_cpu(tmp_path):
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        textwrap.dedent(
            f"""
            import importlib.abc, sys

            class _Absent(importlib.abc.MetaPathFinder):
                def find_spec(self, name, path=None, target=None):
                    if name.split(".")[0] in {ABSENT_ON_THE_GPU_MACHINE!r}:
                        raise ModuleNotFoundError(f"No module named {{name!r}} (absent on the GPU machine)")
                    return None

            sys.meta_path.insert(0, _Absent())
            """
        )
    )
    out = tmp_path / "out"
    env = dict(
        os.environ,
        TSL_BENCH_SMALL="1",
        TSL_BENCH_DIR=str(tmp_path / "work"),
        TSL_BENCH_BUDGET="100000",
        PYTHON=sys.executable,
        PYTHONPATH=str(blocker),
    )
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "run_gpu.sh"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    timings = (out / "timings.txt").read_text()
    log = (out / "run_gpu.log").read_text()
    assert proc.returncode == 0, timings + log[-3000:]
    for step in STEPS:
        assert f"{step} rc=0" in timings, timings
    results = (out / "results.md").read_text()
    for title in (
        "GPU sharing",
        "Data stall",
        "Evaluation at COCO 5k",
        "Cache vs online",
        "Training loader",
        "JPEG decode",
        "Cache build",
    ):
        assert f"## {title}" in results, title
    assert len(list(out.iterdir())) <= 8  # what the device runner brings back
    blocked = subprocess.run([sys.executable, "-c", "import ray"], env=env, capture_output=True, check=False)
    assert blocked.returncode != 0, "the import blocker did not block: the run above proves nothing"
