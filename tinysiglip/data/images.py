"""Open any image file as RGB, and check a whole dataset's images before a long cache build."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from tinysiglip.data.records import CaptionDataset, DatasetError

logger = logging.getLogger(__name__)

WHITE = (255, 255, 255)
MAX_LISTED = 20


class BadImageError(DatasetError):
    """An image file is missing, unreadable or truncated."""


def _composite_on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, WHITE + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _scale_to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and float grayscale: PIL's own convert clips at 255, which turns most pixels white."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        finite = values[np.isfinite(values)]
        peak = float(finite.max()) if finite.size else 0.0
        scale = 255.0 if peak <= 1.0 else 1.0  # [0, 1] floats are the common case
    else:
        # I;16* is 16-bit by definition; a 32-bit "I" image (how 16-bit PNGs used to open) is 16-bit
        # when its values exceed the 8-bit range.
        sixteen_bit = image.mode.startswith("I;16") or float(values.max(initial=0)) > 255
        scale = 255.0 / 65535.0 if sixteen_bit else 1.0
    gray = np.clip(np.nan_to_num(values * scale), 0, 255).round().astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparency is composited on white (not on black)."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode == "F" or mode == "I" or mode.startswith("I;16"):
        return _scale_to_8bit(image)
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info:
        return _composite_on_white(image)
    if mode == "1":
        return image.convert("L").convert("RGB")
    return image.convert("RGB")  # L, P without transparency, CMYK, YCbCr, LAB, HSV


def open_rgb(path: str | Path) -> Image.Image:
    """Decode an image file fully and return it in RGB; raise ``BadImageError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise BadImageError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file fails here, not later inside a worker
            return to_rgb(image)
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise BadImageError(f"cannot read image {path}: {type(error).__name__}: {error}") from error


def _problem(path: Path) -> str | None:
    """Why ``path`` cannot be used (None when it can): a full decode, so truncated files and garbage
    bytes are found too, not only missing files."""
    if not path.is_file():
        return "file not found" if not path.exists() else "not a regular file"
    try:
        with Image.open(path) as image:  # header read
            image.load()  # full decode
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None


def write_bad_image_list(bad: list[tuple[Path, str]], report_path: Path) -> Path:
    """Every bad image as ``path<TAB>reason`` lines (the error message lists only the first 20)."""
    report_path = Path(report_path)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text("".join(f"{path}\t{reason}\n" for path, reason in bad), encoding="utf-8")
    return report_path


def find_bad_images(paths: list[Path], *, workers: int | None = None) -> list[tuple[Path, str]]:
    """(path, reason) of every image that cannot be decoded, in the order given; decoded in a thread
    pool (PIL's decoders release the GIL)."""
    workers = workers or min(8, 2 * (os.cpu_count() or 1))
    if workers > 1 and len(paths) > 16:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="check-images") as pool:
            problems = list(pool.map(_problem, paths, chunksize=8))
    else:
        problems = [_problem(path) for path in paths]
    return [(path, reason) for path, reason in zip(paths, problems, strict=True) if reason is not None]


def check_images(
    dataset: CaptionDataset,
    *,
    skip_bad: bool,
    workers: int | None = None,
    report_path: str | Path | None = None,
) -> CaptionDataset:
    """Open and fully decode every image of ``dataset`` before hours of teacher inference depend on it.

    With ``skip_bad=False`` any bad image raises one ``BadImageError`` with the number of bad files,
    the first 20 with their reasons, and the path of the full list (``report_path``, or a file in the
    temporary folder). With ``skip_bad=True`` it returns a new dataset without them, with ``skipped``
    holding (path, reason), and logs how many were left out. A dataset without bad images is
    returned as is; either way the result is marked ``images_checked``.
    """
    paths = [record.path for record in dataset.records]
    bad = find_bad_images(paths, workers=workers)
    if not bad:
        dataset.images_checked = True  # the same records, now known to decode: the same dataset
        return dataset
    if not skip_bad:
        if report_path is None:
            import tempfile

            handle, name = tempfile.mkstemp(prefix="tinysiglip-bad-images-", suffix=".txt")
            os.close(handle)
            report_path = Path(name)
        written = write_bad_image_list(bad, Path(report_path))
        listed = "\n".join(f"  {path}: {reason}" for path, reason in bad[:MAX_LISTED])
        more = f"\n  ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        raise BadImageError(
            f"{len(bad)} of {len(paths)} images of {dataset.name}/{dataset.split} "
            f"({dataset.annotation_file}) cannot be read:\n{listed}{more}\n"
            f"Full list ({len(bad)} lines, path<TAB>reason): {written}\n"
            "Nothing was built. Fix or remove them, or leave them out with --skip-bad-images "
            "(check_images(..., skip_bad=True)); the skipped files are recorded in the cache metadata."
        )
    bad_paths = {path for path, _ in bad}
    logger.warning(
        "%s/%s: skipping %d of %d images that cannot be read (first: %s: %s)",
        dataset.name,
        dataset.split,
        len(bad),
        len(paths),
        bad[0][0],
        bad[0][1],
    )
    kept = replace(
        dataset,
        records=[record for record in dataset.records if record.path not in bad_paths],
        skipped=list(dataset.skipped) + bad,
    )
    kept.images_checked = True
    return kept
