"""Stand-ins for the sweep tests: a deterministic training function and fake caches.

Importable by Ray workers through PYTHONPATH (the tests put this folder on it). The stub reads only
valid training-config keys, so the same study YAML also passes ``load_study``:

* curve: objective(epoch) = 10 * loss.contrast * (1.0 if loss.feat >= 0.5 else 0.2) * epoch —
  ``loss.feat`` is the searched λ (a low one is a designed-bad trial), ``loss.contrast`` sets a cell's scale.
* faults from ``TSL_STUB_FAULTS`` = "raise_once:1,diverge_once:2,always:3" (trial numbers of every cell).
* ``TSL_STUB_SLEEP`` seconds per epoch; resumable from ``run_dir/checkpoint/state.json``.
* ``TSL_STUB_HOLD`` = a path: while that file exists, search trials wait before their last epoch, so a
  test can keep a search running (no trial finishes, no final starts) for as long as it needs.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def curve(config: dict, epoch: int) -> float:
    loss = config.get("loss", {})
    quality = 1.0 if float(loss.get("feat", 1.0)) >= 0.5 else 0.2
    return 10.0 * float(loss.get("contrast", 1.0)) * quality * epoch


def _faults() -> dict[int, str]:
    out = {}
    for item in filter(None, os.environ.get("TSL_STUB_FAULTS", "").split(",")):
        kind, _, num = item.partition(":")
        out[int(num)] = kind
    return out


def stub_train(config: dict, *, run_dir, report=None) -> dict:
    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoint" / "state.json"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    attempts_file = run_dir / "attempts.txt"
    attempt = int(attempts_file.read_text()) + 1 if attempts_file.exists() else 1
    attempts_file.write_text(str(attempt))
    state = json.loads(ckpt.read_text()) if ckpt.exists() else {"epoch": 0, "val_history": []}
    epochs = int(config["train"]["epochs"])
    fault = None
    if run_dir.parent.parent.name == "trials":
        fault = _faults().get(int(run_dir.name))
    sleep = float(os.environ.get("TSL_STUB_SLEEP", "0"))
    hold = os.environ.get("TSL_STUB_HOLD")
    started = time.time()
    for epoch in range(state["epoch"] + 1, epochs + 1):
        while hold and epoch == epochs and run_dir.parent.parent.name == "trials" and Path(hold).exists():
            time.sleep(0.1)
        time.sleep(sleep)
        if fault == "always" or (fault == "raise_once" and attempt == 1 and epoch == 2):
            raise RuntimeError(f"stub failure in epoch {epoch} (attempt {attempt})")
        if fault == "diverge_once" and attempt == 1 and epoch == 2:
            return {"status": "diverged", "error": "loss is NaN at step 20", "epochs_done": epoch - 1}
        value = curve(config, epoch)
        event = {
            "epoch": epoch,
            "step": epoch * 10,
            "metrics": {"mean_r1": value, "i2t_r1": value},
            "objective": value,
        }
        state["epoch"] = epoch
        state["val_history"].append(event)
        ckpt.write_text(json.dumps(state))
        if report is not None and report(event):
            return {"status": "stopped", "epochs_done": epoch, "val_history": state["val_history"]}
    if os.environ.get("TSL_STUB_RECORD_CACHES"):  # which cache files the trial got, and their content
        data = config.get("data", {})
        got = {k: [v, Path(v).read_bytes()[:40].decode()] for k, v in data.items() if k.endswith("_cache")}
        (run_dir / "caches_read.json").write_text(json.dumps(got))
    test = ranks = None
    if config.get("data", {}).get("test_cache"):
        test = {"i2t_r1": curve(config, epochs), "t2i_r1": curve(config, epochs) / 2}
        ranks = stub_ranks(test["i2t_r1"], test["t2i_r1"])
    return {
        "status": "complete",
        "error": None,
        "epochs_done": state["epoch"],
        "steps": state["epoch"] * 10,
        "val_history": state["val_history"],
        "val_metrics": state["val_history"][-1]["metrics"],
        "test_metrics": test,
        "test_ranks": ranks,
        "param_counts": {"image_tower": 1, "text_tower": 2, "heads": 0, "total": 3},
        "wall_time_s": time.time() - started,
        "device": "cpu",
        "config": config,
    }


def stub_ranks(i2t_r1: float, t2i_r1: float, num_images: int = 100) -> dict:
    """Per-query ranks of 100 images with 2 captions each whose R@1 is the given percentages."""
    hit_images = round(i2t_r1 / 100 * num_images)
    hit_texts = round(t2i_r1 / 100 * 2 * num_images)
    return {
        "image_ranks": [0] * hit_images + [5] * (num_images - hit_images),
        "text_ranks": [0] * hit_texts + [9] * (2 * num_images - hit_texts),
        "caption_image": [i // 2 for i in range(2 * num_images)],
    }


def stub_caches(study, progress=True):
    """Empty files where the caches would be (trials check that they can read them)."""
    root = Path(study.run_dir).resolve() / "fake_caches"
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for c in study.caches_needed():
        path = root / f"{c.teacher}-{c.dataset}-{c.split}.h5"
        path.write_bytes(f"{c.teacher}/{c.dataset}/{c.split}\n".encode() * 5000)  # ~100 KB to copy
        out[(c.teacher, c.dataset, c.split)] = path
    return out


def stub_teacher_metrics(path):
    """The teacher reference: metrics, parameter counts and (optional third item) per-query ranks."""
    from tinysiglip.results.ranks import QueryRanks

    ranks = QueryRanks.from_payload(stub_ranks(50.0, 40.0))
    return {"i2t_r1": 50.0, "t2i_r1": 40.0}, {"total": 1000}, ranks
