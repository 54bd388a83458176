"""Damaged and wrong caches are refused when opened (issue 11 §4-5): per-chunk Fletcher-32 checks,
embedding checksums and finiteness at open, the teacher identified by the content of its files (a
copied folder is the same teacher, another teacher is not), old-format caches, and a local world
that verifies what it calls ready."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from tinysiglip.cache import CacheError, TrainPairs, build_cache, open_cache
from tinysiglip.cache.format import FORMAT_VERSION
from tinysiglip.data import make_shapes
from tinysiglip.teacher.identity import content_fingerprint
from tinysiglip.teacher.tiny import caption_words, save_tiny_teacher

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("integrity")
    shapes = make_shapes(root / "shapes", seed=0, sizes={"train": 16, "val": 6}, image_size=32)
    words = caption_words(c for r in shapes.load("train").records for c in r.captions)
    small = save_tiny_teacher(root / "local-s", vocab_words=words, image_size=32, hidden=32)
    medium = save_tiny_teacher(root / "local-m", vocab_words=words, image_size=32, hidden=48, seed=1)
    caches = {}
    for name, folder in (("local-s", small), ("local-m", medium)):
        for split in ("train", "val"):
            out = root / "caches" / name / f"{split}.h5"
            caches[name, split] = build_cache(
                str(folder), shapes.load(split), out, batch_size=8, progress=False
            )
    return {
        "root": root,
        "shapes": shapes,
        "teachers": {"local-s": small, "local-m": medium},
        "caches": caches,
    }


def _copy(path: Path, tmp_path: Path, name: str = "copy.h5") -> Path:
    out = tmp_path / name
    shutil.copy(path, out)
    return out


def _flip_bytes_in_chunk(path: Path, dataset: str, row: int, count: int = 256) -> None:
    """Flip bytes of the chunk holding ``row`` in the file itself, as a bad disk or copy would."""
    with h5py.File(path, "r") as handle:
        ds = handle[dataset]
        info = ds.id.get_chunk_info_by_coord((row - row % ds.chunks[0],) + (0,) * (ds.ndim - 1))
    with open(path, "r+b") as raw:
        raw.seek(info.byte_offset)
        data = bytearray(raw.read(min(count, info.size)))
        raw.seek(info.byte_offset)
        raw.write(bytes(b ^ 0xFF for b in data))


# -- §4 damaged caches ----------------------------------------------------------------------------


def test_flipped_pixel_bytes_fail_when_read_and_in_verify(world, tmp_path):
    damaged = _copy(world["caches"]["local-s", "train"], tmp_path)
    _flip_bytes_in_chunk(damaged, "pixels", 3)
    open_cache(damaged)  # opening reads no pixels
    pairs = TrainPairs(damaged)
    pairs[2]  # an intact chunk reads fine
    with pytest.raises(CacheError, match=r"dataset 'pixels', row\(s\) 3: .*Fletcher-32") as error:
        pairs[3]  # every chunk is checked as it is read: no training on damaged pixels
    assert str(damaged) in str(error.value) and f"tinysiglip cache verify {damaged}" in str(error.value)
    with pytest.raises(CacheError, match="pixels"):
        open_cache(damaged, verify=True)


@pytest.mark.parametrize("dataset", ["text_embeds", "image_embeds"])
def test_damaged_embeddings_are_refused_at_open(world, tmp_path, dataset):
    raw = _copy(world["caches"]["local-s", "val"], tmp_path, "raw.h5")
    _flip_bytes_in_chunk(raw, dataset, 0, count=16)
    with pytest.raises(CacheError, match=f"{dataset}") as error:
        open_cache(raw)
    assert str(raw) in str(error.value) and "Rebuild it" in str(error.value)

    # NaN written through HDF5 (chunk checksum valid), checksum updated too: the finiteness check.
    nan = _copy(world["caches"]["local-s", "val"], tmp_path, "nan.h5")
    with h5py.File(nan, "r+") as handle:
        handle[dataset][1, :4] = np.nan
        from tinysiglip.cache.format import dataset_checksum, read_attrs, write_attrs

        checksums = read_attrs(handle.attrs)["checksums"]
        checksums[dataset] = dataset_checksum(handle[dataset])
        write_attrs(handle.attrs, {"checksums": checksums})
    with pytest.raises(
        CacheError, match=rf"'{dataset}' holds non-finite values \(NaN/inf\) in 1 row\(s\), e\.g\. \[1\]"
    ):
        open_cache(nan)


def test_old_format_is_refused_with_the_rebuild_command(world, tmp_path):
    old = _copy(world["caches"]["local-s", "val"], tmp_path)
    with h5py.File(old, "r+") as handle:
        handle.attrs["format_version"] = FORMAT_VERSION - 1
    with pytest.raises(CacheError, match="format version 1") as error:
        open_cache(old)
    message = str(error.value)
    assert f"rm {old} && tinysiglip cache build --teacher {world['teachers']['local-s']}" in message
    assert "--coco-captions" in message and f"--out {old}" in message


# -- §5 wrong caches --------------------------------------------------------------------------------


def test_caches_of_another_teacher_are_refused(world, tmp_path):
    medium = world["teachers"]["local-m"]
    small_cache = world["caches"]["local-s", "train"]
    with pytest.raises(CacheError, match="is not the one this cache was built from") as error:
        open_cache(small_cache, expect={"teacher_source": str(medium)})
    assert "model.safetensors" in str(error.value) and "local-s" in str(error.value)
    expected = {"teacher_fingerprint": content_fingerprint(medium), "embed_dim": 48}
    with pytest.raises(CacheError) as error:
        open_cache(small_cache, expect=expected)
    assert "teacher_fingerprint: expected" in str(error.value) and "embed_dim: expected 48, found 32" in str(
        error.value
    )


def test_sweep_check_refuses_swapped_caches(world):
    from types import SimpleNamespace

    from tinysiglip.sweep.caches import check_study_caches, expected_identity

    study = SimpleNamespace(cells=[SimpleNamespace(teacher="local-m", dataset="shapes", base_config={})])
    swapped = {("local-m", "shapes", s): world["caches"]["local-s", s] for s in ("train", "val")}
    expected = {"local-m": expected_identity(str(world["teachers"]["local-m"]), None)}
    with pytest.raises(CacheError, match="embed_dim: expected 48, found 32"):
        check_study_caches(study, swapped, expected, echo=lambda *a, **k: None)
    right = {("local-m", "shapes", s): world["caches"]["local-m", s] for s in ("train", "val")}
    check_study_caches(study, right, expected, echo=lambda *a, **k: None)


def test_a_copied_world_is_the_same_world(world, tmp_path):
    copy = tmp_path / "copied"
    shutil.copytree(world["root"], copy)
    teacher = copy / "local-s"
    assert content_fingerprint(teacher) == content_fingerprint(world["teachers"]["local-s"])
    cache = copy / "caches" / "local-s" / "train.h5"
    open_cache(cache, expect={"teacher_source": str(teacher)})
    shapes = make_shapes(copy / "shapes", seed=0, sizes={"train": 16, "val": 6}, image_size=32)
    before = cache.stat().st_mtime_ns
    assert build_cache(str(teacher), shapes.load("train"), cache, batch_size=8, progress=False) == cache
    assert cache.stat().st_mtime_ns == before  # accepted as is, not rebuilt


def test_teacher_fingerprint_ignores_save_stamps_not_content(world, tmp_path):
    import json

    folder = tmp_path / "teacher"
    shutil.copytree(world["teachers"]["local-s"], folder)
    original = content_fingerprint(folder)
    config = json.loads((folder / "config.json").read_text())
    config["transformers_version"] = "0.0.1"
    (folder / "config.json").write_text(json.dumps(config, indent=4))  # other layout, same content
    (folder / "README.md").write_text("notes")
    assert content_fingerprint(folder) == original
    config["logit_scale_init_value"] = 3.0
    (folder / "config.json").write_text(json.dumps(config))
    assert content_fingerprint(folder) != original


# -- the local world verifies what it calls ready --------------------------------------------------------


def test_local_world_rebuilds_truncated_and_garbage_caches(tmp_path, capsys):
    from tinysiglip.local_world import LocalWorld, WorldSize

    size = WorldSize(
        "t",
        {"train": 24, "val": 8, "test": 8},
        teacher_steps=2,
        image_size=32,
        teacher_overrides={"patch_size": 8, "hidden": 32, "vision_layers": 1, "text_layers": 1, "heads": 2},
    )
    world = LocalWorld(tmp_path, size, progress=False)
    train, val = world.cache_path("local-m", "train"), world.cache_path("local-m", "val")
    data = train.read_bytes()
    train.write_bytes(data[: len(data) // 2])
    val.write_bytes(os.urandom(4096))
    capsys.readouterr()
    assert world.cache_path("local-m", "train") == train
    assert world.cache_path("local-m", "val") == val
    printed = capsys.readouterr().out
    assert f"rebuilding {train}" in printed and "truncated" in printed
    assert f"rebuilding {val}" in printed and "not an HDF5 file" in printed
    assert (train.parent / "train.h5.rejected").exists()
    open_cache(train, verify=True)
    open_cache(val, verify=True)
