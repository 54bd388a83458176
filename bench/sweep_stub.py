"""Stand-in training function and hooks for bench.sweep_overhead (importable by Ray workers).

``bench_train`` runs ``train.epochs`` epochs; each epoch either sleeps ``TSL_BENCH_SLEEP`` seconds or
runs ``TSL_BENCH_ITERS`` fixed 256x256 float32 matmuls on one thread (``TSL_BENCH_MODE=compute``), then
reports an evaluation whose objective depends on ``loss.feat`` only (deterministic)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def work_epoch() -> None:
    if os.environ.get("TSL_BENCH_MODE", "sleep") == "compute":
        import torch

        torch.set_num_threads(1)
        a = torch.ones(256, 256) / 256
        x = torch.ones(256, 256)
        for _ in range(int(os.environ.get("TSL_BENCH_ITERS", "100"))):
            x = a @ x
    else:
        time.sleep(float(os.environ.get("TSL_BENCH_SLEEP", "0.5")))


def bench_train(config: dict, *, run_dir, report=None) -> dict:
    started = time.time()
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    epochs = int(config["train"]["epochs"])
    feat = float(config.get("loss", {}).get("feat", 1.0))
    history = []
    for epoch in range(1, epochs + 1):
        work_epoch()
        value = 10.0 * feat * epoch
        event = {"epoch": epoch, "step": epoch, "metrics": {"mean_r1": value}, "objective": value}
        history.append(event)
        if report is not None and report(event):
            return {"status": "stopped", "epochs_done": epoch, "val_history": history}
    return {
        "status": "complete",
        "error": None,
        "epochs_done": epochs,
        "steps": epochs,
        "val_history": history,
        "val_metrics": history[-1]["metrics"],
        "test_metrics": {"i2t_r1": 1.0, "t2i_r1": 1.0} if config.get("data", {}).get("test_cache") else None,
        "param_counts": {"total": 1},
        "wall_time_s": time.time() - started,
        "device": "cpu",
        "config": config,
    }


def bench_caches(study, progress=True):
    root = Path(study.run_dir) / "fake_caches"
    return {(c.teacher, c.dataset, c.split): root / f"{c.split}.h5" for c in study.caches_needed()}


def bench_teacher_metrics(path):
    return {"i2t_r1": 50.0, "t2i_r1": 40.0}, {"total": 1000}
