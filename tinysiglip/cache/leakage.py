"""Train/evaluation leakage: refuse to train or evaluate when the train cache holds evaluation images.

Three checks, from certain to suggestive, each over the train cache against every val/test cache:

- **same image id** (only between caches of the same ``dataset_name``, where ids mean the same thing):
  the common mistake on real data, e.g. ``captions_train2017.json`` holds most of Karpathy's test split.
- **identical stored pixels** (``pixel_sha256``, the sha256 of the resized uint8 square stored at build
  time): the same picture under another id or file name, e.g. COCO 2017 vs 2014 copies of one JPEG,
  or a lossless re-save. It does not catch a lossy re-encode: one changed pixel changes the hash.
- **near-duplicates** (``pixel_dhash``, a 64-bit difference hash of the stored square, then a pixel
  check): pairs within ``NEAR_BITS`` bits whose stored squares differ by at most ``NEAR_MEAN_ABS``
  intensity levels on average. This catches JPEG re-encodes, small rescales and format changes, but
  not crops or flips. Near-duplicates are REPORTED, not refused: distinct pictures can be near-identical
  (burst photos; the synthetic shapes world holds test images within one intensity level of a train
  image), and only a person can tell a copy from a twin.

The first two refuse (``LeakageError``) unless the caller allows leakage explicitly; the result
(``LeakageReport.as_record()``) is recorded on the run either way.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tinysiglip.cache.format import CacheError

logger = logging.getLogger(__name__)

EXAMPLES = 5
NEAR_BITS = 4  # Hamming distance between difference hashes
NEAR_MEAN_ABS = 2.0  # mean absolute difference of the stored uint8 squares
NEAR_MAX_PAIRS = 20_000  # pixel comparisons per cache pair; beyond that the check says it stopped
NEAR_MAX_BUCKET = 64  # a hash band shared by more train images is uninformative (flat images)
_BANDS = ((0, 13), (13, 26), (26, 39), (39, 52), (52, 64))  # 5 bands: distance <= 4 shares one


class LeakageError(CacheError):
    """The train cache shares images with an evaluation cache."""


# ------------------------------------------------------------------------------------------------
# per-image hashes, computed at build time from the stored pixels


def pixel_sha256(pixels: np.ndarray) -> np.ndarray:
    """(B, 32) uint8: sha256 of each (3, H, W) uint8 image's bytes."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    out = np.empty((len(pixels), 32), dtype=np.uint8)
    for row, image in enumerate(pixels):
        out[row] = np.frombuffer(hashlib.sha256(image.tobytes()).digest(), dtype=np.uint8)
    return out


def pixel_dhash(pixels: np.ndarray) -> np.ndarray:
    """(B,) uint64 difference hash: luma box-averaged to 8 rows x 9 columns, bit = right > left."""
    from PIL import Image

    out = np.empty(len(pixels), dtype=np.uint64)
    weights = (1 << np.arange(64, dtype=np.uint64)).astype(np.uint64)
    for row, image in enumerate(np.asarray(pixels, dtype=np.uint8)):
        small = Image.fromarray(image.transpose(1, 2, 0)).convert("L").resize((9, 8), Image.Resampling.BOX)
        grid = np.asarray(small, dtype=np.int16)
        bits = (grid[:, 1:] > grid[:, :-1]).reshape(-1).astype(np.uint64)
        out[row] = np.uint64((bits * weights).sum(dtype=np.uint64))
    return out


# ------------------------------------------------------------------------------------------------
# the check


@dataclass
class SplitOverlap:
    """What one evaluation cache shares with the train cache."""

    split: str
    path: str
    num_images: int
    shared_ids: list[int] = field(default_factory=list)
    identical: list[tuple[int, int]] = field(default_factory=list)  # (eval id, train id)
    near: list[tuple[int, int]] = field(default_factory=list)  # (eval id, train id)
    near_stopped: bool = False
    ids_compared: bool = True

    @property
    def leaked(self) -> int:
        """Evaluation images found in the train cache by id or identical pixels."""
        return len(set(self.shared_ids) | {e for e, _ in self.identical})

    def as_record(self) -> dict[str, Any]:
        return {
            "cache": self.path,
            "images": self.num_images,
            "leaked": self.leaked,
            "shared_ids": len(self.shared_ids),
            "identical_pixels": len(self.identical),
            "near_duplicates": len(self.near),
            "near_check_stopped": self.near_stopped,
            "ids_compared": self.ids_compared,
            "examples": sorted(set(self.shared_ids) | {e for e, _ in self.identical})[:EXAMPLES],
        }


@dataclass
class LeakageReport:
    train_path: str
    splits: list[SplitOverlap]
    allowed: bool

    @property
    def leaked(self) -> bool:
        return any(s.leaked for s in self.splits)

    def as_record(self) -> dict[str, Any]:
        return {
            "train_cache": self.train_path,
            "allowed": self.allowed,
            "leaked": self.leaked,
            "splits": {s.split: s.as_record() for s in self.splits},
        }

    def describe(self) -> str:
        lines = []
        for s in self.splits:
            if s.leaked:
                parts = []
                if s.shared_ids:
                    parts.append(f"{len(s.shared_ids)} by image id (e.g. {_ids(s.shared_ids)})")
                if s.identical:
                    pairs = ", ".join(f"{e} = train {t}" for e, t in s.identical[:EXAMPLES])
                    parts.append(f"{len(s.identical)} by identical stored pixels (e.g. {pairs})")
                lines.append(
                    f"  {s.split} ({s.path}): {s.leaked} of {s.num_images} images are in the train cache: "
                    + "; ".join(parts)
                )
        return "\n".join(lines)

    def describe_near(self) -> str:
        lines = []
        for s in self.splits:
            if s.near:
                pairs = ", ".join(f"{e} ~ train {t}" for e, t in s.near[:EXAMPLES])
                stopped = " (check stopped early: more pairs than it compares)" if s.near_stopped else ""
                lines.append(
                    f"  {s.split}: {len(s.near)} of {s.num_images} images are near-duplicates of train "
                    f"images (e.g. {pairs}){stopped}"
                )
        return "\n".join(lines)


def _ids(ids: list[int]) -> str:
    return ", ".join(str(i) for i in sorted(ids)[:EXAMPLES]) + (", ..." if len(ids) > EXAMPLES else "")


def _open(cache):
    from tinysiglip.cache.reader import TeacherCache, open_cache

    return cache if isinstance(cache, TeacherCache) else open_cache(cache)


def _near_pairs(train, other, train_hashes: np.ndarray, other_hashes: np.ndarray) -> tuple[list, bool]:
    """(other row, train row) pairs within NEAR_BITS bits whose stored squares are near-identical."""
    candidates: set[tuple[int, int]] = set()
    stopped = False
    for lo, hi in _BANDS:
        mask = np.uint64((1 << (hi - lo)) - 1)
        train_band = (train_hashes >> np.uint64(lo)) & mask
        other_band = (other_hashes >> np.uint64(lo)) & mask
        order = np.argsort(train_band, kind="stable")
        sorted_band = train_band[order]
        left = np.searchsorted(sorted_band, other_band, side="left")
        right = np.searchsorted(sorted_band, other_band, side="right")
        for row in np.flatnonzero((right - left > 0) & (right - left <= NEAR_MAX_BUCKET)):
            for train_row in order[left[row] : right[row]]:
                candidates.add((int(row), int(train_row)))
    close = [
        (o, t)
        for o, t in sorted(candidates)
        if bin(int(other_hashes[o]) ^ int(train_hashes[t])).count("1") <= NEAR_BITS
    ]
    if len(close) > NEAR_MAX_PAIRS:
        close, stopped = close[:NEAR_MAX_PAIRS], True
    found: dict[int, int] = {}
    for o, t in close:
        if o in found:
            continue
        a = train.pixels([t])[0].astype(np.int16)
        b = other.pixels([o])[0].astype(np.int16)
        if float(np.abs(a - b).mean()) <= NEAR_MEAN_ABS:
            found[o] = t
    return sorted(found.items()), stopped


def find_overlap(train, other, split: str) -> SplitOverlap:
    """What ``other`` (an evaluation cache) shares with ``train``."""
    train, other = _open(train), _open(other)
    overlap = SplitOverlap(split=split, path=str(other.path), num_images=other.num_images)
    train_ids, other_ids = train.image_ids(), other.image_ids()
    overlap.ids_compared = train.meta.get("dataset_name") == other.meta.get("dataset_name")
    if overlap.ids_compared:
        overlap.shared_ids = [int(i) for i in np.intersect1d(train_ids, other_ids)]
    train_sha = {bytes(row): index for index, row in enumerate(train.pixel_sha256())}
    for row, digest in enumerate(other.pixel_sha256()):
        hit = train_sha.get(bytes(digest))
        if hit is not None:
            overlap.identical.append((int(other_ids[row]), int(train_ids[hit])))
    near, overlap.near_stopped = _near_pairs(train, other, train.pixel_dhash(), other.pixel_dhash())
    leaked_rows = {int(i) for i in overlap.shared_ids} | {e for e, _ in overlap.identical}
    overlap.near = [
        (int(other_ids[o]), int(train_ids[t])) for o, t in near if int(other_ids[o]) not in leaked_rows
    ]
    return overlap


def check_leakage(
    train_cache,
    eval_caches: Mapping[str, Any],
    *,
    allow: bool = False,
    override_hint: str = "set data.allow_leakage: true",
) -> LeakageReport:
    """Refuse (``LeakageError``) when the train cache shares images with any evaluation cache, by
    image id or identical stored pixels, naming the count and a few ids, unless ``allow``.

    ``eval_caches``: {"val": path or TeacherCache or None, "test": ...}; None entries are skipped.
    Near-duplicates are never refused (``report.describe_near()`` lists them). Returns the report for
    the run record."""
    train = _open(train_cache)
    splits = [find_overlap(train, cache, split) for split, cache in eval_caches.items() if cache is not None]
    report = LeakageReport(train_path=str(train.path), splits=splits, allowed=bool(allow))
    near = report.describe_near()
    if near:  # callers that talk to people print report.describe_near(); runs record the counts
        logger.info("near-duplicate images between train and evaluation caches (not refused):\n%s", near)
    if report.leaked and not allow:
        raise LeakageError(
            f"train/test leakage: the train cache {train.path} holds evaluation images:\n"
            + report.describe()
            + "\nBuild the train cache without them (`tinysiglip cache build ... --exclude-karpathy "
            "dataset_coco.json` leaves out Karpathy's val and test images, `--exclude-ids FILE` any list), "
            f"or, if this is intended, {override_hint} (recorded on the run)."
        )
    if report.leaked:
        logger.warning("train/test leakage allowed by the caller:\n%s", report.describe())
    return report
