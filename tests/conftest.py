"""Shared fixtures. Keep this file small: area-specific fixtures live in their own test modules."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory):
    """Factory: ``tiny_teacher_dir("siglip" | "siglip2") -> Path`` of a random-weight tiny teacher
    (32 px, patch 8, width 32) saved once per session; load it with ``load_teacher(path)``."""
    from tinysiglip.teacher.tiny import save_tiny_teacher

    made: dict[str, Path] = {}

    def make(kind: str = "siglip") -> Path:
        if kind not in made:
            made[kind] = save_tiny_teacher(tmp_path_factory.mktemp(f"tiny_teacher_{kind}"), kind=kind)
        return made[kind]

    return make


@pytest.fixture(scope="session")
def tiny_caches(tmp_path_factory, tiny_teacher_dir) -> dict[str, Path]:
    """Train/val/test caches of a random tiny SigLIP teacher over a small shapes dataset (32 px)."""
    from tinysiglip.cache import build_cache
    from tinysiglip.data import make_shapes
    from tinysiglip.teacher import load_teacher

    root = tmp_path_factory.mktemp("tiny_caches")
    shapes = make_shapes(root / "shapes", seed=0, sizes={"train": 96, "val": 24, "test": 24}, image_size=32)
    teacher = load_teacher(tiny_teacher_dir("siglip"))
    return {
        split: build_cache(teacher, shapes.load(split), root / f"{split}.h5", batch_size=32, progress=False)
        for split in ("train", "val", "test")
    }
