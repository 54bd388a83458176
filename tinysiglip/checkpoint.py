"""A training run's resumable checkpoint: ``run_dir/checkpoint/``.

It holds the student as ``save_pretrained`` writes it (``model.safetensors``, ``vocab.json``,
``student_config.json``: ``tinysiglip eval --student`` loads it), ``optimizer.pt`` (optimiser, LR schedule and torch RNG state),
``config.yaml`` (the resolved training config) and ``trainer_state.json`` (epoch, step,
validation history, elapsed time). A save is written into a fresh folder and swapped in, so a run
killed mid-save keeps its previous checkpoint. Whether a checkpoint belongs to a given config is the
trainer's call (:mod:`tinysiglip.train`); this module only reads and writes the files. A checkpoint
whose files cannot be read (truncated, flipped bytes, a file missing) raises :class:`CheckpointDamaged`
before anything is changed in memory; the trainer sets it aside (:func:`set_aside`) and starts over.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import yaml

__all__ = [
    "CheckpointDamaged",
    "find_checkpoint",
    "read_checkpoint_config",
    "restore_checkpoint",
    "save_checkpoint",
    "set_aside",
]

CHECKPOINT_DIR = "checkpoint"
CHECKSUMS = "checksums.json"  # sha256 of every file: flipped bytes are found before anything is loaded


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verify(folder: Path) -> None:
    """Check every file against ``checksums.json`` (a checkpoint written before it existed has none)."""
    listed = folder / CHECKSUMS
    if not listed.exists():
        return
    for name, digest in json.loads(listed.read_text()).items():
        if _sha256(folder / name) != digest:
            raise ValueError(f"{name} does not match its checksum")


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
    sums = {p.name: _sha256(p) for p in sorted(staging.iterdir()) if p.is_file()}
    (staging / CHECKSUMS).write_text(json.dumps(sums, indent=2))
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


class CheckpointDamaged(Exception):
    """A checkpoint's files cannot be read back; nothing was loaded from it."""


def read_checkpoint_config(folder: Path) -> dict[str, Any]:
    try:
        _verify(folder)
        config = yaml.safe_load((folder / "config.yaml").read_text())
    except Exception as exc:  # noqa: BLE001 - unreadable, truncated or not YAML
        raise CheckpointDamaged(f"{folder / 'config.yaml'}: {exc}") from exc
    if not isinstance(config, dict):
        raise CheckpointDamaged(f"{folder / 'config.yaml'}: not a config mapping")
    return config


def restore_checkpoint(folder: Path, *, model, optimizer, scheduler) -> dict[str, Any]:
    """Load weights, optimiser, LR schedule and torch RNG state in place; returns the trainer state.
    Every file is read and parsed first: a damaged one raises :class:`CheckpointDamaged` untouched."""
    from safetensors.torch import load_file

    try:
        _verify(folder)
        weights = load_file(str(folder / "model.safetensors"))
        extra = torch.load(folder / "optimizer.pt", weights_only=True)
        state = json.loads((folder / "trainer_state.json").read_text())
        parts = (extra["optimizer"], extra["scheduler"], extra["torch_rng"])
    except Exception as exc:  # noqa: BLE001 - any unreadable part makes the whole checkpoint unusable
        raise CheckpointDamaged(f"{folder}: {type(exc).__name__}: {exc}") from exc
    if not all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point()):
        raise CheckpointDamaged(f"{folder / 'model.safetensors'}: non-finite weights")
    model.load_state_dict(weights)
    optimizer.load_state_dict(parts[0])
    scheduler.load_state_dict(parts[1])
    torch.set_rng_state(parts[2])
    return state


def set_aside(folder: Path) -> Path:
    """Rename a damaged checkpoint out of the way (kept for a post-mortem): ``checkpoint.damaged-<time>``."""
    target = folder.with_name(f"{folder.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while target.exists():
        target = folder.with_name(f"{folder.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
        n += 1
    os.replace(folder, target)
    return target
