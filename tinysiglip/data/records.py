"""The in-memory form every dataset loader produces: one record per image, all its captions."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path

from tinysiglip.errors import TinySigLIPError


class DatasetError(TinySigLIPError):
    """An annotation or split file cannot be used as it is (the message names the file and field)."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def normalize_caption(caption: str) -> str:
    """Strip and collapse internal whitespace (newlines, tabs, double spaces); keep the case."""
    return " ".join(caption.split())


@dataclass(frozen=True)
class ImageRecord:
    image_id: int
    path: Path  # absolute path of the image file
    captions: tuple[str, ...]  # whitespace-normalised, original case kept


@dataclass
class CaptionDataset:
    name: str  # "coco", "shapes", ...
    split: str  # "train" / "val" / "test" / whatever the file says
    records: list[ImageRecord]  # sorted by image_id
    annotation_file: Path
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (path, reason) of images left out
    # sha256 of the annotation file's bytes as the loader read them; None: hash the file when asked
    annotation_sha256: str | None = field(default=None, repr=False)
    # True once check_images decoded every image of ``records`` (a build then skips its own check).
    # Not an init field: ``dataclasses.replace`` (new records) resets it to False.
    images_checked: bool = field(default=False, init=False, repr=False, compare=False)
    # what was left out on purpose (exclude_images): {"source": ..., "count": n, "ids": [...first few]}
    excluded: dict | None = field(default=None, repr=False, compare=False)

    def fingerprint(self) -> str:
        """Identify the exact data a cache was built from.

        Covers the annotation file's bytes (as loaded, even if the file changed since) and the
        (image_id, file name) list actually used, so a split of the same file, or the same file
        with bad images skipped, gets another fingerprint.
        """
        digest = hashlib.sha256()
        digest.update((self.annotation_sha256 or sha256_file(self.annotation_file)).encode())
        for image_id, file_name in sorted((r.image_id, r.path.name) for r in self.records):
            digest.update(f"\n{image_id}\t{file_name}".encode())
        return digest.hexdigest()

    @property
    def num_captions(self) -> int:
        return sum(len(record.captions) for record in self.records)

    @property
    def num_images(self) -> int:
        return len(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return (
            f"CaptionDataset(name={self.name!r}, split={self.split!r}, images={len(self.records)}, "
            f"captions={self.num_captions}, skipped={len(self.skipped)}, "
            f"annotation_file={str(self.annotation_file)!r})"
        )


def exclude_images(dataset: CaptionDataset, image_ids: set[int], *, source: str) -> CaptionDataset:
    """``dataset`` without the images whose id is in ``image_ids`` (e.g. Karpathy's val/test images out
    of a train2017 train set); ``excluded`` records how many and why, for the cache metadata."""
    kept = [r for r in dataset.records if r.image_id not in image_ids]
    removed = sorted(r.image_id for r in dataset.records if r.image_id in image_ids)
    excluded = {"source": source, "count": len(removed), "listed": len(image_ids), "ids": removed[:20]}
    return replace(dataset, records=kept, excluded=excluded)
