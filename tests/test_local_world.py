"""The local world: absolute paths (trial configs carry them into Ray workers' own folders), the
teachers' own pretraining corpus, and nothing stale reused after the world's recipe changed."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from tinysiglip.local_world import SPLITS, LocalWorld, WorldSize, local_world
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


def _small_world(root: Path, sizes: dict[str, int]) -> LocalWorld:
    return LocalWorld(root, WorldSize("small", sizes, teacher_steps=2), progress=False)


def test_teachers_learn_from_the_pretraining_corpus_students_never_see(tmp_path):
    world = _small_world(tmp_path, {"train": 6, "val": 3, "test": 3, "pretrain": 9})
    corpus = world.teacher_training_data()
    assert corpus.split == "pretrain" and len(corpus.records) == 9
    student_ids = {r.image_id for split in SPLITS for r in world.dataset(split).records}
    assert not {r.image_id for r in corpus.records} & student_ids
    no_corpus = _small_world(tmp_path / "other", {"train": 6, "val": 3, "test": 3})
    assert no_corpus.teacher_training_data().split == "train"


def test_data_of_another_recipe_is_rewritten(tmp_path):
    _small_world(tmp_path, {"train": 6, "val": 3, "test": 3}).dataset("val")
    grown = _small_world(tmp_path, {"train": 6, "val": 3, "test": 5, "pretrain": 4})
    assert len(grown.dataset("test").records) == 5
    assert len(grown.dataset("pretrain").records) == 4


def test_caches_of_another_teacher_are_rebuilt(tmp_path, monkeypatch):
    """A world made by an earlier version (other teacher or data) never hands out its old caches."""
    import tinysiglip.cache

    world = _small_world(tmp_path, {"train": 6, "val": 3, "test": 3})
    teacher_dir = tmp_path / "teacher"
    teacher_dir.mkdir()
    marker = teacher_dir / "tinysiglip_teacher.json"
    marker.write_text(json.dumps({"fingerprint": "first"}))
    monkeypatch.setattr(LocalWorld, "teacher_path", lambda self, name="local-m": teacher_dir)
    builds = []

    def fake_build(teacher, dataset, out, **kwargs):
        builds.append((dataset.split, Path(out)))
        Path(out).write_text(f"cache of {teacher}")
        return Path(out)

    monkeypatch.setattr(tinysiglip.cache, "build_cache", fake_build)
    # the fake caches are text files: this test is about the stamp, not the checks at open
    monkeypatch.setattr(
        tinysiglip.cache, "open_cache", lambda path, **kwargs: SimpleNamespace(close=lambda: None)
    )
    first = world.cache_path("local-m", "val")
    assert world.cache_path("local-m", "val") == first and len(builds) == 1
    marker.write_text(json.dumps({"fingerprint": "retrained"}))
    assert world.cache_path("local-m", "val") == first and len(builds) == 2
    world.cache_path("local-m", "test")
    world.cache_path("local-m", "val")
    assert [split for split, _ in builds] == ["val", "val", "test"]
