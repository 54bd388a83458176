"""A damaged checkpoint (issue 11 §7) is detected before anything is loaded from it, set aside (renamed,
kept) and the run starts over from scratch, saying so in its result."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_train import tiny_config

from tinysiglip.train import run_training


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 16] = bytes(b ^ 0xFF for b in data[mid : mid + 16])
    path.write_bytes(bytes(data))


DAMAGE = {
    "flipped weight bytes": lambda d: _flip(d / "model.safetensors"),
    "truncated weights": lambda d: (d / "model.safetensors").write_bytes(
        (d / "model.safetensors").read_bytes()[:100]
    ),
    "optimizer state missing": lambda d: (d / "optimizer.pt").unlink(),
    "trainer state garbage": lambda d: (d / "trainer_state.json").write_text("{not json"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_checkpoint_is_set_aside_and_training_starts_over(tiny_caches, tmp_path, damage):
    config = tiny_config(tiny_caches, train={"epochs": 2})
    straight = run_training(config, run_dir=tmp_path / "straight")
    run_dir = tmp_path / "run"
    stopped = run_training(config, run_dir=run_dir, report=lambda event: event["epoch"] == 1)
    assert stopped["status"] == "stopped"
    DAMAGE[damage](run_dir / "checkpoint")
    result = run_training(config, run_dir=run_dir)
    assert result["status"] == "complete" and result["resumed_from_epoch"] is None  # from scratch ...
    assert result["val_metrics"] == straight["val_metrics"]  # ... to the same result as a clean run
    aside = result["checkpoint_set_aside"]
    assert Path(aside["path"]).is_dir() and ".damaged-" in aside["path"] and aside["error"]
    assert (run_dir / "checkpoint" / "checksums.json").exists()  # a fresh, complete checkpoint again
