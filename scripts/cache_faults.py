"""Inject the cache faults of issue 11 §4-5 into a tiny local world and say what the code does with each.

    PYTHONPATH=. python scripts/cache_faults.py --root /tmp/faults

Uses only APIs that exist before and after format 2 (``open_cache``, ``build_cache``, ``TrainPairs``,
``LocalWorld.cache_path``), so the same script run against an older checkout (``PYTHONPATH=<old checkout>``)
gives the "before" column. Each fault prints one line: ``ACCEPTED`` (used as if fine: silently wrong),
``REFUSED`` or ``REBUILT`` with the first line of the message.
"""

from __future__ import annotations

import argparse
import os
import shutil
import traceback
from pathlib import Path

import h5py
import numpy as np


def flip_chunk_bytes(path: Path, dataset: str, row: int, count: int) -> None:
    with h5py.File(path, "r") as handle:
        ds = handle[dataset]
        if ds.chunks is None:  # contiguous (format 1): the row's bytes
            offset = ds.id.get_offset() + row * ds.dtype.itemsize * int(np.prod(ds.shape[1:]))
        else:
            offset = ds.id.get_chunk_info_by_coord(
                (row - row % ds.chunks[0],) + (0,) * (ds.ndim - 1)
            ).byte_offset
    with open(path, "r+b") as raw:
        raw.seek(offset)
        data = bytearray(raw.read(count))
        raw.seek(offset)
        raw.write(bytes(b ^ 0xFF for b in data))


def write_nan_bytes(path: Path, dataset: str, row: int) -> None:
    """NaN bit patterns written into the file under HDF5 (as a bad disk or a careless tool would)."""
    with h5py.File(path, "r") as handle:
        ds = handle[dataset]
        itemsize, width = ds.dtype.itemsize, int(ds.shape[1])
        if ds.chunks is None:
            offset = ds.id.get_offset() + row * itemsize * width
        else:
            info = ds.id.get_chunk_info_by_coord((row - row % ds.chunks[0], 0))
            offset = info.byte_offset + (row % ds.chunks[0]) * itemsize * width
    nan = np.full(width, np.nan, dtype=ds.dtype).tobytes()
    with open(path, "r+b") as raw:
        raw.seek(offset)
        raw.write(nan)


def fault_world(root: Path):
    """A local world at the smallest size with both teachers' caches built (seconds): ``(world, size)``."""
    from tinysiglip.local_world import LocalWorld, WorldSize

    size = WorldSize(
        "faults",
        {"train": 48, "val": 16, "test": 16},
        teacher_steps=2,
        image_size=32,
        teacher_overrides={"patch_size": 8, "vision_layers": 1, "text_layers": 1},
    )
    world = LocalWorld(root, size, progress=False)
    for teacher in ("local-s", "local-m"):
        for split in ("train", "val", "test"):
            world.cache_path(teacher, split)
    return world, size


def outcome(action) -> str:
    try:
        result = action()
    except Exception as error:  # noqa: BLE001 - the point is to report what happened
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"REFUSED  {type(error).__name__}: {first[:160]}"
    return result or "ACCEPTED"


def main(argv: list[str] | None = None) -> int:
    from tinysiglip.cache import TrainPairs, build_cache, open_cache
    from tinysiglip.local_world import LocalWorld

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", required=True)
    args = parser.parse_args(argv)
    root = Path(args.root)
    shutil.rmtree(root, ignore_errors=True)
    world, size = fault_world(root / "world")
    caches = root / "world" / "faults" / "caches"
    work = root / "work"
    work.mkdir()

    def copy(teacher: str, split: str, name: str) -> Path:
        out = work / name
        shutil.copy(caches / teacher / f"{split}.h5", out)
        return out

    results = {}

    damaged = copy("local-m", "train", "flipped.h5")
    flip_chunk_bytes(damaged, "pixels", 5, 256)

    def read_all_pixels():
        pairs = TrainPairs(damaged)
        for i in range(len(pairs)):
            pairs[i]

    results["4a 256 flipped bytes in the pixels (train cache), read by training"] = outcome(read_all_pixels)

    nan_test = copy("local-m", "test", "nan_test.h5")
    write_nan_bytes(nan_test, "text_embeds", 3)

    def teacher_reference():
        cache = open_cache(nan_test)
        return (
            "ACCEPTED (non-finite embeddings in use)" if not np.isfinite(cache.text_embeds()).all() else None
        )

    results["4b NaN bytes in the test text embeddings, teacher reference metrics"] = outcome(
        teacher_reference
    )

    nan_train = copy("local-m", "train", "nan_train.h5")
    write_nan_bytes(nan_train, "image_embeds", 0)

    def train_pairs_nan():
        pairs = TrainPairs(nan_train, embeddings_in_memory=True)
        item = pairs[0]
        return (
            "ACCEPTED (NaN target reaches the loss)"
            if not np.isfinite(item["teacher_image_embed"].numpy()).all()
            else None
        )

    results["4c NaN bytes in the train image embeddings, read by training"] = outcome(train_pairs_nan)

    def copied_world():
        shutil.copytree(root / "world", root / "copied")
        copied = LocalWorld(root / "copied", size, progress=False)
        teacher = root / "copied" / "faults" / "teachers" / "local-m"
        out = copied.cache_path("local-m", "train")
        open_cache(out, expect={"teacher_source": str(teacher)})
        build_cache(str(teacher), copied.dataset("train"), out, progress=False)
        return "ACCEPTED (as it should be)"

    results["5a a copied world (cp -r), its caches checked against its teacher"] = outcome(copied_world)

    def swapped():
        small = caches / "local-s" / "train.h5"
        medium = caches / "local-m" / "train.h5"
        shutil.copy(medium, work / "medium_train.h5")
        shutil.copy(small, medium)  # local-s's cache in local-m's place
        path = world.cache_path("local-m", "train")
        width = open_cache(path).embed_dim
        shutil.copy(work / "medium_train.h5", medium)
        return "ACCEPTED (local-s caches used as local-m's)" if width == 64 else f"REBUILT  (width {width})"

    results["5b caches of local-s in local-m's place, local world"] = outcome(swapped)

    def damaged_and_reopened(split: str, damage) -> str:
        cache = caches / "local-m" / f"{split}.h5"
        damage(cache)
        path = world.cache_path("local-m", split)
        try:
            open_cache(path)
        except Exception:  # noqa: BLE001
            return "ACCEPTED (called ready, cannot be opened)"
        return "REBUILT" if path.with_name(f"{split}.h5.rejected").exists() else "ACCEPTED"

    def truncate(path: Path) -> None:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    def garble(path: Path) -> None:
        path.write_bytes(os.urandom(8192))

    results["5c truncated train.h5, `local-world` calls it ready"] = outcome(
        lambda: damaged_and_reopened("train", truncate)
    )
    results["5d garbage val.h5, `local-world` calls it ready"] = outcome(
        lambda: damaged_and_reopened("val", garble)
    )

    for fault, result in results.items():
        print(f"{fault:<72} {result}")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except Exception:
        traceback.print_exc()
        raise SystemExit(1) from None
