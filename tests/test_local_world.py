"""The local world hands out absolute paths: trial configs carry them into Ray workers' own folders."""

from __future__ import annotations

from pathlib import Path

from tinysiglip.local_world import local_world
from tinysiglip.sweep.caches import default_cache_dir


def test_relative_roots_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TINYSIGLIP_LOCAL_WORLD", "relative/world")
    monkeypatch.setenv("TINYSIGLIP_CACHE_DIR", "relative/caches")
    world = local_world(size="tiny", progress=False)
    assert world.base.is_absolute() and world.base == tmp_path / "relative" / "world" / "tiny"
    assert local_world("other", size="tiny").base == tmp_path / "other" / "tiny"
    assert default_cache_dir() == tmp_path / "relative" / "caches"
    monkeypatch.delenv("TINYSIGLIP_LOCAL_WORLD")
    assert local_world(size="tiny").root == Path(tmp_path / ".tinysiglip" / "local_world")
