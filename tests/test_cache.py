"""The HDF5 teacher cache: contents equal the teacher's own outputs, resumable builds, refusals,
and the torch Datasets that every trial reads."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

from tinysiglip.cache import (
    DATASETS,
    CachedCaptions,
    CachedImages,
    CacheError,
    TrainPairs,
    build_cache,
    open_cache,
    partial_path,
    pixels_to_float,
    read_meta,
)
from tinysiglip.data import BadImageError, check_images, make_shapes, open_rgb
from tinysiglip.errors import TinySigLIPError

pytest.importorskip("transformers")

from tinysiglip.teacher import load_teacher  # noqa: E402
from tinysiglip.teacher.tiny import caption_words, save_tiny_teacher  # noqa: E402

BATCH = 8


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache_world")
    shapes = make_shapes(root / "shapes", seed=0, sizes={"train": 20, "val": 6}, image_size=40)
    train = shapes.load("train")
    words = caption_words(c for r in train.records for c in r.captions)
    teachers = {}
    for kind in ("siglip", "siglip2"):
        save_tiny_teacher(root / f"teacher_{kind}", kind=kind, vocab_words=words, image_size=32)
        teachers[kind] = root / f"teacher_{kind}"
    return {"root": root, "shapes": shapes, "train": train, "teachers": teachers}


@pytest.fixture(scope="module")
def teacher(world):
    return load_teacher(world["teachers"]["siglip"])


@pytest.fixture(scope="module")
def reference(world, teacher):
    """An uninterrupted build that other tests compare with."""
    return build_cache(
        teacher, world["train"], world["root"] / "reference.h5", batch_size=BATCH, progress=False
    )


def contents(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as handle:
        return {name: handle[name][:] for name in DATASETS}


def assert_same_contents(a: Path, b: Path) -> None:
    left, right = contents(a), contents(b)
    for name in DATASETS:
        np.testing.assert_array_equal(left[name], right[name], err_msg=name)


class Interrupt(RuntimeError):
    pass


def interrupt_after(monkeypatch, teacher, batches: int) -> None:
    """Make teacher.embed_pixels raise on call number ``batches + 1``."""
    original = teacher.embed_pixels
    calls = {"n": 0}

    def flaky(pixels):
        calls["n"] += 1
        if calls["n"] > batches:
            raise Interrupt(f"simulated crash at batch {calls['n']}")
        return original(pixels)

    monkeypatch.setattr(teacher, "embed_pixels", flaky)


# -- contents -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["siglip", "siglip2"])
def test_cached_embeddings_equal_teacher_outputs(world, kind, tmp_path):
    teacher = load_teacher(world["teachers"][kind])
    dataset = world["train"]
    out = build_cache(teacher, dataset, tmp_path / "c.h5", batch_size=BATCH, progress=False)
    assert out == tmp_path / "c.h5" and out.exists() and not partial_path(out).exists()
    cache = open_cache(out, verify=True)
    assert (cache.num_images, cache.num_captions) == (len(dataset.records), dataset.num_captions)
    assert cache.embed_dim == teacher.embed_dim and cache.image_size == teacher.image_size
    assert cache.meta["teacher_kind"] == kind

    pixels = cache.pixels()
    assert pixels.dtype == np.uint8 and pixels.shape == (20, 3, 32, 32)
    for row in (0, 7, 19):
        expected = teacher.resize_to_uint8(open_rgb(dataset.records[row].path))
        np.testing.assert_array_equal(pixels[row], expected)
    image_embeds = teacher.embed_pixels(torch.from_numpy(pixels)).numpy()
    np.testing.assert_allclose(cache.image_embeds(), image_embeds, rtol=2e-3, atol=2e-3)

    captions = [c for r in dataset.records for c in r.captions]
    assert cache.captions() == captions
    token_ids = cache.token_ids()
    np.testing.assert_array_equal(token_ids, teacher.tokenize(captions).numpy())
    text_embeds = teacher.embed_token_ids(torch.from_numpy(token_ids)).numpy()
    np.testing.assert_allclose(cache.text_embeds(), text_embeds, rtol=2e-3, atol=2e-3)
    np.testing.assert_array_equal(cache.token_ids_present, np.unique(token_ids))

    index = cache.caption_image_index()
    offsets = cache.caption_offsets()
    for row, record in enumerate(dataset.records):
        assert (index[offsets[row] : offsets[row + 1]] == row).all()
        assert offsets[row + 1] - offsets[row] == len(record.captions)
    np.testing.assert_array_equal(cache.image_ids(), [r.image_id for r in dataset.records])

    assert cache.logit_scale == pytest.approx(teacher.logit_scale)
    assert cache.logit_bias == pytest.approx(teacher.logit_bias)
    logits = cache.teacher_logits([0, 1], [0, 5])
    img = torch.nn.functional.normalize(torch.from_numpy(cache.image_embeds()[[0, 1]]), dim=-1)
    txt = torch.nn.functional.normalize(torch.from_numpy(cache.text_embeds()[[0, 5]]), dim=-1)
    torch.testing.assert_close(logits, teacher.logit_scale * img @ txt.T + teacher.logit_bias)


def test_float32_embeddings_and_metadata(world, teacher, tmp_path):
    out = build_cache(
        teacher, world["train"], tmp_path / "c32.h5", batch_size=BATCH, embed_dtype="float32", progress=False
    )
    cache = open_cache(out)
    with h5py.File(out, "r") as handle:
        assert handle["image_embeds"].dtype == np.float32
        assert handle["pixels"].chunks == (1, 3, 32, 32)
        assert handle["token_ids"].dtype == np.int32
    expected = teacher.embed_pixels(torch.from_numpy(cache.pixels())).numpy()
    np.testing.assert_allclose(cache.image_embeds(), expected, rtol=1e-5, atol=1e-5)
    meta = cache.meta
    for key in (
        "format_version",
        "teacher_source",
        "teacher_revision",
        "teacher_kind",
        "teacher_fingerprints",
        "dataset_name",
        "split",
        "dataset_fingerprint",
        "image_list_fingerprint",
        "embed_dim",
        "image_size",
        "image_mean",
        "image_std",
        "dtypes",
        "num_images",
        "num_captions",
        "special_token_ids",
        "tinysiglip_version",
        "created_at",
        "build_seconds",
        "checksums",
        "num_skipped_images",
        "skipped_images",
    ):
        assert key in meta, key
    assert meta["complete"] is True
    assert meta["dataset_fingerprint"] == world["train"].fingerprint()
    assert meta["teacher_fingerprints"] == teacher.fingerprints()
    assert meta["embed_dtype"] == "float32" and meta["dtypes"]["image_embeds"] == "float32"
    assert meta["special_token_ids"] == teacher.special_token_ids()
    assert meta["pad_token_id"] == teacher.tokenizer.pad_token_id
    assert meta["teacher_vocab_size"] == teacher.model.config.text_config.vocab_size
    assert set(meta["checksums"]) == set(DATASETS)
    assert meta["num_skipped_images"] == 0 and meta["skipped_images"] == []


def test_pixels_to_float_matches_teacher_normalisation(reference, teacher):
    cache = open_cache(reference)
    pixels = torch.from_numpy(cache.pixels([3, 1]))
    ours = pixels_to_float(pixels, cache.image_mean, cache.image_std)
    assert ours.dtype == torch.float32 and ours.shape == (2, 3, 32, 32)
    torch.testing.assert_close(ours, teacher.normalize_pixels(pixels))
    torch.testing.assert_close(pixels_to_float(pixels[0], cache.image_mean, cache.image_std), ours[0])


# -- resume, atomic completion, no-op and mismatches -------------------------------------------------


def test_resume_after_crash_gives_same_contents(world, teacher, reference, tmp_path, monkeypatch):
    out = tmp_path / "c.h5"
    interrupt_after(monkeypatch, teacher, batches=1)
    with pytest.raises(Interrupt):
        build_cache(teacher, world["train"], out, batch_size=BATCH, progress=False)
    monkeypatch.undo()
    partial = partial_path(out)
    assert partial.exists() and not out.exists()
    meta = read_meta(partial)
    assert meta["images_done"] == BATCH and meta["complete"] is False

    with pytest.raises(CacheError, match="incomplete build.*resume"):
        open_cache(out)
    with pytest.raises(CacheError, match="incomplete"):
        open_cache(partial)

    calls = {"n": 0}
    original = teacher.embed_pixels

    def counting(pixels):
        calls["n"] += 1
        return original(pixels)

    monkeypatch.setattr(teacher, "embed_pixels", counting)
    assert build_cache(teacher, world["train"], out, batch_size=BATCH, progress=False) == out
    # 1 probe of the stored image 0 + the 2 remaining batches (20 images, batches of 8)
    assert calls["n"] == 3
    assert out.exists() and not partial.exists()
    assert_same_contents(out, reference)
    assert open_cache(out).meta["checksums"] == open_cache(reference).meta["checksums"]


def test_resume_overwrites_rows_beyond_truncated_counter(world, teacher, reference, tmp_path, monkeypatch):
    out = tmp_path / "c.h5"
    interrupt_after(monkeypatch, teacher, batches=2)
    with pytest.raises(Interrupt):
        build_cache(teacher, world["train"], out, batch_size=BATCH, progress=False)
    monkeypatch.undo()
    partial = partial_path(out)
    with h5py.File(partial, "r+") as handle:  # a crash after writing rows but before the counter
        handle.attrs.modify("images_done", BATCH)
        handle["pixels"][BATCH:] = 255
        handle["image_embeds"][BATCH:] = 7.0
        start = int(handle["caption_offsets"][BATCH])
        handle["text_embeds"][start:] = -3.0
    build_cache(teacher, world["train"], out, batch_size=BATCH, progress=False)
    assert_same_contents(out, reference)


KILL_SCRIPT = """
import os, signal, sys
from tinysiglip.data import load_coco_captions
from tinysiglip.teacher import load_teacher
from tinysiglip.cache import build_cache

teacher = load_teacher(sys.argv[1])
dataset = load_coco_captions(sys.argv[2], sys.argv[3], name="shapes", split="train")
original = teacher.embed_pixels
calls = [0]
def dying(pixels):
    calls[0] += 1
    if calls[0] == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(pixels)
teacher.embed_pixels = dying
build_cache(teacher, dataset, sys.argv[4], batch_size=int(sys.argv[5]), progress=False)
"""


@pytest.mark.skipif(not hasattr(os, "kill") or sys.platform == "win32", reason="needs SIGKILL")
def test_resume_after_sigkill(world, teacher, reference, tmp_path):
    out = tmp_path / "killed.h5"
    script = tmp_path / "kill_build.py"
    script.write_text(textwrap.dedent(KILL_SCRIPT))
    train = world["train"]
    result = subprocess.run(
        [
            sys.executable,
            str(script),
            str(world["teachers"]["siglip"]),
            str(train.annotation_file),
            str(world["shapes"].image_roots["train"]),
            str(out),
            str(BATCH),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == -9, result.stderr
    assert not out.exists() and partial_path(out).exists()
    assert read_meta(partial_path(out))["images_done"] == 2 * BATCH
    build_cache(teacher, train, out, batch_size=BATCH, progress=False)
    assert_same_contents(out, reference)


def test_complete_cache_rerun_is_noop(world, teacher, reference):
    before = reference.stat().st_mtime_ns
    assert build_cache(teacher, world["train"], reference, batch_size=BATCH, progress=False) == reference
    assert reference.stat().st_mtime_ns == before
    assert not partial_path(reference).exists()


def test_existing_cache_for_other_request_is_refused(world, teacher, reference):
    with pytest.raises(CacheError, match="embed_dtype") as error:
        build_cache(teacher, world["train"], reference, embed_dtype="float32", progress=False)
    assert str(reference) in str(error.value) and "Delete it" in str(error.value)
    val = world["shapes"].load("val")
    with pytest.raises(CacheError, match="dataset_fingerprint") as error:
        build_cache(teacher, val, reference, progress=False)
    assert "split: expected 'val', found 'train'" in str(error.value)


def test_changed_teacher_weights_are_noticed(world, reference, tmp_path):
    """Same processor and tokenizer files, other weights: the fingerprints agree, the probe does not."""
    other = tmp_path / "retrained"
    shutil.copytree(world["teachers"]["siglip"], other)
    retrained = load_teacher(other)
    with torch.no_grad():
        for parameter in retrained.model.vision_model.parameters():
            parameter.add_(torch.randn_like(parameter))
    retrained.source = str(world["teachers"]["siglip"])
    with pytest.raises(CacheError, match="teacher weights"):
        build_cache(retrained, world["train"], reference, batch_size=BATCH, progress=False)


def test_partial_build_for_other_request_is_refused(world, teacher, tmp_path, monkeypatch):
    out = tmp_path / "c.h5"
    interrupt_after(monkeypatch, teacher, batches=1)
    with pytest.raises(Interrupt):
        build_cache(teacher, world["train"], out, batch_size=BATCH, progress=False)
    monkeypatch.undo()
    with pytest.raises(CacheError, match="unfinished build of a different request") as error:
        build_cache(teacher, world["train"], out, batch_size=BATCH, embed_dtype="float32", progress=False)
    assert "embed_dtype: expected 'float32', found 'float16'" in str(error.value)
    assert read_meta(partial_path(out))["images_done"] == BATCH  # left alone


def test_unusable_partial_is_restarted(world, teacher, reference, tmp_path):
    out = tmp_path / "c.h5"
    partial_path(out).write_bytes(b"killed before the first flush")
    build_cache(teacher, world["train"], out, batch_size=BATCH, progress=False)
    assert_same_contents(out, reference)


# -- open_cache refusals -----------------------------------------------------------------------------


def test_expect_mismatch_names_every_field(reference, teacher):
    good = {
        "teacher_source": str(teacher.source),
        "teacher_fingerprints": teacher.fingerprints(),
        "split": "train",
        "image_size": 32,
        "embed_dim": teacher.embed_dim,
    }
    assert open_cache(reference, expect=good).num_images == 20
    with pytest.raises(CacheError) as error:
        open_cache(reference, expect={**good, "split": "val", "embed_dim": 99, "dataset_fingerprint": "abc"})
    message = str(error.value)
    assert str(reference) in message
    assert "split: expected 'val', found 'train'" in message
    assert "embed_dim: expected 99" in message and "dataset_fingerprint: expected 'abc'" in message
    assert "image_size" not in message and "teacher_fingerprints" not in message
    assert isinstance(error.value, TinySigLIPError)


def test_truncated_garbage_and_missing_files_are_refused(reference, tmp_path):
    truncated = tmp_path / "truncated.h5"
    data = reference.read_bytes()
    truncated.write_bytes(data[: len(data) - 4096])
    with pytest.raises(CacheError, match="truncated") as error:
        open_cache(truncated)
    assert str(truncated) in str(error.value)

    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(os.urandom(10000))
    with pytest.raises(CacheError, match="not an HDF5 file"):
        open_cache(garbage)

    with pytest.raises(CacheError, match="does not exist"):
        open_cache(tmp_path / "missing.h5")

    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as handle:
        handle["x"] = [1, 2]
    with pytest.raises(CacheError, match="not a tinysiglip teacher cache"):
        open_cache(other)


def test_damaged_contents_are_refused(reference, tmp_path):
    wrong_version = tmp_path / "version.h5"
    shutil.copy(reference, wrong_version)
    with h5py.File(wrong_version, "r+") as handle:
        handle.attrs["format_version"] = 999
    with pytest.raises(CacheError, match="format version 999"):
        open_cache(wrong_version)

    missing = tmp_path / "missing_dataset.h5"
    shutil.copy(reference, missing)
    with h5py.File(missing, "r+") as handle:
        del handle["text_embeds"]
    with pytest.raises(CacheError, match="'text_embeds' is missing"):
        open_cache(missing)

    no_flag = tmp_path / "no_flag.h5"
    shutil.copy(reference, no_flag)
    with h5py.File(no_flag, "r+") as handle:
        del handle.attrs["complete"]
    with pytest.raises(CacheError, match="incomplete"):
        open_cache(no_flag)

    tampered = tmp_path / "tampered.h5"
    shutil.copy(reference, tampered)
    with h5py.File(tampered, "r+") as handle:
        handle["pixels"][3] = 0  # rewritten through HDF5: chunk checksums stay valid, the sha256 does not
    open_cache(tampered)  # pixels are only re-hashed on request (embeddings are re-hashed at open)
    with pytest.raises(CacheError, match="pixels: stored"):
        open_cache(tampered, verify=True)


# -- torch Datasets
# -- torch Datasets ------------------------------------------------------------------------------------


def test_train_pairs_items_and_determinism(reference):
    cache = open_cache(reference)
    pairs = TrainPairs(reference, seed=0)
    assert len(pairs) == 20
    item = pairs[5]
    assert set(item) == {
        "pixels",
        "input_ids",
        "teacher_image_embed",
        "teacher_text_embed",
        "image_index",
        "caption_index",
    }
    assert item["pixels"].dtype == torch.uint8 and item["pixels"].shape == (3, 32, 32)
    assert item["input_ids"].dtype == torch.int64 and item["input_ids"].shape == (64,)
    assert item["teacher_image_embed"].dtype == torch.float32 and item["teacher_image_embed"].shape == (32,)
    assert item["teacher_text_embed"].dtype == torch.float32
    assert item["image_index"].dtype == torch.int64 and int(item["image_index"]) == 5
    caption = int(item["caption_index"])
    offsets = cache.caption_offsets()
    assert offsets[5] <= caption < offsets[6]
    np.testing.assert_array_equal(item["pixels"].numpy(), cache.pixels([5])[0])
    np.testing.assert_array_equal(item["input_ids"].numpy(), cache.token_ids()[caption])
    np.testing.assert_array_equal(item["teacher_image_embed"].numpy(), cache.image_embeds()[5])
    np.testing.assert_array_equal(item["teacher_text_embed"].numpy(), cache.text_embeds()[caption])

    def draws(dataset) -> list[int]:
        return [int(dataset[i]["caption_index"]) for i in range(len(dataset))]

    epoch0 = draws(pairs)
    assert epoch0 == draws(TrainPairs(reference, seed=0))
    assert epoch0 == draws(TrainPairs(reference, seed=0, embeddings_in_memory=True))
    pairs.set_epoch(1)
    epoch1 = draws(pairs)
    assert epoch1 != epoch0
    assert all(offsets[i] <= c < offsets[i + 1] for i, c in enumerate(epoch1))
    pairs.set_epoch(0)
    assert draws(pairs) == epoch0
    assert draws(TrainPairs(reference, seed=1)) != epoch0
    # every caption of an image is drawn over enough epochs
    seen = set()
    for epoch in range(60):
        pairs.set_epoch(epoch)
        seen.add(int(pairs[0]["caption_index"]))
    assert seen == set(range(offsets[0], offsets[1]))

    # the batched path (used by DataLoaders) equals item-by-item access, in any order, with repeats
    pairs.set_epoch(3)
    indices = [7, 2, 19, 2, 0]
    batch = pairs.__getitems__(indices)
    for index, got in zip(indices, batch):
        want = pairs[index]
        for key in want:
            torch.testing.assert_close(got[key], want[key])


def test_train_pairs_with_two_dataloader_workers(reference):
    pairs = TrainPairs(reference, seed=0)
    pairs.set_epoch(2)
    loader = torch.utils.data.DataLoader(
        pairs, batch_size=6, shuffle=True, num_workers=2, generator=torch.Generator().manual_seed(0)
    )
    image_rows, caption_rows = [], []
    for batch in loader:
        assert batch["pixels"].shape[1:] == (3, 32, 32) and batch["pixels"].dtype == torch.uint8
        assert batch["teacher_text_embed"].dtype == torch.float32
        assert batch["input_ids"].shape[1:] == (64,)
        image_rows += batch["image_index"].tolist()
        caption_rows += batch["caption_index"].tolist()
    assert sorted(image_rows) == list(range(20))
    expected = pairs.caption_rows(np.array(image_rows))
    assert caption_rows == expected.tolist()


def test_evaluation_datasets(reference):
    cache = open_cache(reference)
    images = CachedImages(reference)
    captions = CachedCaptions(reference)
    assert len(images) == 20 and len(captions) == cache.num_captions
    image_batches = list(torch.utils.data.DataLoader(images, batch_size=7))
    pixels = torch.cat([b["pixels"] for b in image_batches])
    np.testing.assert_array_equal(pixels.numpy(), cache.pixels())
    assert torch.cat([b["image_index"] for b in image_batches]).tolist() == list(range(20))
    caption_batches = list(torch.utils.data.DataLoader(captions, batch_size=16, num_workers=2))
    np.testing.assert_array_equal(
        torch.cat([b["input_ids"] for b in caption_batches]).numpy(), cache.token_ids()
    )
    np.testing.assert_array_equal(
        torch.cat([b["image_index"] for b in caption_batches]).numpy(), cache.caption_image_index()
    )
    assert torch.cat([b["caption_index"] for b in caption_batches]).tolist() == list(
        range(cache.num_captions)
    )


# -- bad images and the command line -------------------------------------------------------------------


def test_bad_images_fail_or_are_skipped_and_recorded(world, teacher, tmp_path):
    image_dir = tmp_path / "images"
    shutil.copytree(world["shapes"].image_roots["train"], image_dir)
    records = [replace(r, path=image_dir / r.path.name) for r in world["train"].records]
    bad_path = records[4].path
    bad_path.write_bytes(b"not a jpeg at all")
    dataset = replace(world["train"], records=records)

    out = tmp_path / "c.h5"
    with pytest.raises(BadImageError, match="skip-bad-images") as error:
        build_cache(teacher, dataset, out, batch_size=BATCH, progress=False, num_workers=2)
    assert str(bad_path) in str(error.value) and "1 of 20 images" in str(error.value)
    assert not out.exists() and not partial_path(out).exists()  # checked before anything was written
    assert (tmp_path / "c.h5.bad-images.txt").read_text().startswith(f"{bad_path}\t")

    checked = check_images(dataset, skip_bad=True)
    build_cache(teacher, checked, out, batch_size=BATCH, progress=False)
    cache = open_cache(out)
    assert cache.num_images == 19
    assert cache.meta["num_skipped_images"] == 1
    assert cache.meta["skipped_images"][0][0] == str(bad_path)


def run_cli(*argv: str) -> int:
    from tinysiglip.cache.cli import register

    parser = argparse.ArgumentParser(prog="tinysiglip")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_cli_build_info_verify(world, reference, tmp_path, capsys):
    out = tmp_path / "cli.h5"
    shapes = world["shapes"]
    code = run_cli(
        "cache",
        "build",
        "--teacher",
        str(world["teachers"]["siglip"]),
        "--coco-captions",
        str(shapes.annotation_file("train")),
        "--images",
        str(shapes.image_roots["train"]),
        "--name",
        "shapes",
        "--out",
        str(out),
        "--batch-size",
        str(BATCH),
        "--no-progress",
    )
    assert code == 0
    assert_same_contents(out, reference)
    assert run_cli("cache", "info", str(out)) == 0
    printed = capsys.readouterr().out
    assert "num_images: 20" in printed and "teacher_kind: siglip" in printed
    assert run_cli("cache", "verify", str(out)) == 0
    assert "checksums match" in capsys.readouterr().out


def test_cli_karpathy_split_and_partial_info(world, tmp_path, capsys):
    from tinysiglip.cli import main

    shapes = world["shapes"]
    out = tmp_path / "val.h5"
    argv = ["cache", "build", "--teacher", str(world["teachers"]["siglip2"]), "--karpathy"]
    argv += [str(shapes.karpathy_file), "--split", "val", "--images", str(shapes.image_root)]
    argv += ["--name", "shapes", "--out", str(out), "--no-progress", "--skip-bad-images"]
    assert main(argv) == 0
    cache = open_cache(out, expect={"split": "val", "dataset_name": "shapes", "teacher_kind": "siglip2"})
    assert cache.num_images == 6
    assert main(["cache", "build", "--teacher", str(world["teachers"]["siglip"])] + argv[4:]) == 2
    assert "teacher_kind: expected 'siglip', found 'siglip2'" in capsys.readouterr().err

    # `info` on a path whose build is unfinished shows the partial file's progress
    partial = partial_path(tmp_path / "unfinished.h5")
    shutil.copy(out, partial)
    with h5py.File(partial, "r+") as handle:
        handle.attrs.modify("complete", False)
        handle.attrs.modify("images_done", 4)
    assert main(["cache", "info", str(tmp_path / "unfinished.h5")]) == 0
    assert "INCOMPLETE: 4 of 6 images done" in capsys.readouterr().out
    assert main(["cache", "verify", str(tmp_path / "unfinished.h5")]) == 2
    assert "incomplete build" in capsys.readouterr().err


def test_not_enough_disk_space_is_refused_before_building(world, teacher, tmp_path, monkeypatch):
    import tinysiglip.cache.files as files_module

    monkeypatch.setattr(
        files_module.shutil, "disk_usage", lambda path: SimpleNamespace(total=10**9, used=10**9, free=1000)
    )
    with pytest.raises(CacheError, match="not enough disk space"):
        build_cache(teacher, world["train"], tmp_path / "c.h5", progress=False)
    assert not partial_path(tmp_path / "c.h5").exists()


# -- bad images all at once, partial builds of other requests (issue 10) ---------------------------------


def test_every_bad_image_is_reported_at_once_before_the_teacher_loads(world, tmp_path, monkeypatch, capsys):
    from tinysiglip.cli import main

    image_dir = tmp_path / "images"
    shutil.copytree(world["shapes"].image_roots["train"], image_dir)
    names = sorted(p.name for p in image_dir.iterdir())
    for name in names[:3]:  # missing
        (image_dir / name).unlink()
    truncated = image_dir / names[3]
    truncated.write_bytes(truncated.read_bytes()[:200])
    (image_dir / names[4]).write_bytes(os.urandom(3000))

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher was loaded although images are bad")

    monkeypatch.setattr("tinysiglip.teacher.load_teacher", no_teacher)
    out = tmp_path / "c.h5"
    argv = ["cache", "build", "--teacher", str(world["teachers"]["siglip"]), "--coco-captions"]
    argv += [str(world["shapes"].annotation_file("train")), "--images", str(image_dir), "--out", str(out)]
    assert main(argv + ["--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "5 of 20 images of coco/train" in error
    assert error.count("file not found") == 3 and "OSError" in error and "UnidentifiedImageError" in error
    listing = tmp_path / "c.h5.bad-images.txt"
    assert f"Full list (5 lines, path<TAB>reason): {listing}" in error
    assert len(listing.read_text().splitlines()) == 5
    assert not out.exists() and not partial_path(out).exists()


def test_bad_image_message_lists_the_first_20_and_the_count(world, tmp_path):
    records = [replace(r, path=tmp_path / f"gone_{i}.jpg") for i, r in enumerate(world["train"].records)]
    dataset = replace(world["train"], records=records * 2)
    with pytest.raises(BadImageError) as error:
        check_images(dataset, skip_bad=False, report_path=tmp_path / "list.txt")
    message = str(error.value)
    assert "40 of 40 images" in message and message.count("file not found") == 20
    assert "... and 20 more" in message and len((tmp_path / "list.txt").read_text().splitlines()) == 40


def test_a_failed_first_batch_leaves_no_partial(world, teacher, tmp_path, monkeypatch):
    out = tmp_path / "c.h5"
    interrupt_after(monkeypatch, teacher, batches=0)
    with pytest.raises(Interrupt):
        build_cache(teacher, world["train"], out, batch_size=BATCH, progress=False)
    assert not partial_path(out).exists()


def test_partial_of_another_request_is_replaced_when_empty(world, teacher, reference, tmp_path, monkeypatch):
    out = tmp_path / "c.h5"
    interrupt_after(monkeypatch, teacher, batches=1)
    with pytest.raises(Interrupt):
        build_cache(teacher, world["train"], out, batch_size=BATCH, progress=False)
    monkeypatch.undo()
    with h5py.File(partial_path(out), "r+") as handle:  # as if it had stopped before its first batch
        handle.attrs.modify("images_done", 0)
    smaller = replace(world["train"], records=world["train"].records[:12])  # e.g. after --skip-bad-images
    build_cache(teacher, smaller, out, batch_size=BATCH, progress=False)
    assert open_cache(out).num_images == 12


def test_partial_of_another_request_with_progress_names_the_rm_command(world, teacher, tmp_path, monkeypatch):
    out = tmp_path / "c.h5"
    interrupt_after(monkeypatch, teacher, batches=1)
    with pytest.raises(Interrupt):
        build_cache(teacher, world["train"], out, batch_size=BATCH, progress=False)
    monkeypatch.undo()
    smaller = replace(world["train"], records=world["train"].records[:12])
    with pytest.raises(CacheError, match="8 of 20 images done") as error:
        build_cache(teacher, smaller, out, batch_size=BATCH, progress=False)
    assert f"`rm {partial_path(out)}`" in str(error.value)


def test_cache_info_shows_the_teacher_view(reference, capsys):
    assert run_cli("cache", "info", str(reference)) == 0
    printed = capsys.readouterr().out
    assert "teacher view  teacher: processor on the original image = the stored square" in printed
    assert "request_fingerprint: sha256:" in printed and "teacher_fingerprint: sha256:" in printed
