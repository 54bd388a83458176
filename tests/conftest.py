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
