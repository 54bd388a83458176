"""A training run's resumable checkpoint: ``run_dir/checkpoint/``.

It holds the student as ``save_pretrained`` writes it (``model.safetensors``, ``vocab.json``,
``student_config.json``: ``tinysiglip eval --student`` loads it), ``optimizer.pt`` (optimiser, LR schedule and torch RNG state),
``config.yaml`` (the resolved training config) and ``trainer_state.json`` (epoch, step,
validation history, elapsed time). A save is written into a fresh folder and swapped in, so a run
killed mid-save keeps its previous checkpoint. Whether a checkpoint belongs to a given config is the
trainer's call (:mod:`tinysiglip.train`); this module only reads and writes the files.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

__all__ = ["find_checkpoint", "read_checkpoint_config", "restore_checkpoint", "save_checkpoint"]

CHECKPOINT_DIR = "checkpoint"


def save_checkpoint(
    run_dir: Path, *, model, optimizer, scheduler, trainer_state: dict[str, Any], config: dict[str, Any]
) -> Path:
    """Write the checkpoint into a fresh folder, then swap it in place of the previous one."""
    final = run_dir / CHECKPOINT_DIR
    staging = run_dir / "checkpoint.tmp"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    model.save_pretrained(staging)  # weights, vocab and student_config.json: `eval --student` loads it
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
        },
        staging / "optimizer.pt",
    )
    (staging / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=True))
    (staging / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
    old = run_dir / "checkpoint.old"
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(staging, final)
    if old.exists():
        shutil.rmtree(old)
    return final


def find_checkpoint(run_dir: Path) -> Path | None:
    """The run's complete checkpoint folder, or None when there is nothing to resume."""
    folder = run_dir / CHECKPOINT_DIR
    if (folder / "trainer_state.json").exists():
        return folder
    old = run_dir / "checkpoint.old"  # killed between the two renames of a save
    if (old / "trainer_state.json").exists():
        os.replace(old, folder)
        return folder
    return None


def read_checkpoint_config(folder: Path) -> dict[str, Any]:
    return yaml.safe_load((folder / "config.yaml").read_text())


def restore_checkpoint(folder: Path, *, model, optimizer, scheduler) -> dict[str, Any]:
    """Load weights, optimiser, LR schedule and torch RNG state in place; returns the trainer state."""
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    extra = torch.load(folder / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    torch.set_rng_state(extra["torch_rng"])
    return json.loads((folder / "trainer_state.json").read_text())
