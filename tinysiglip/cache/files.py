"""The files of a cache build on disk: what an existing output or partial build holds, whether a partial
build can be resumed, replaced or must be named with the command that removes it, free space, fsync."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from tinysiglip.cache.format import FORMAT_VERSION, CacheError, diff_meta, read_attrs

logger = logging.getLogger(__name__)


def bad_images_report_path(out_path: str | Path) -> Path:
    """Where a build writes the full list of unreadable images: ``<out>.bad-images.txt``."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".bad-images.txt")


def read_identity_of(path: Path) -> tuple[dict[str, Any], bool]:
    """(metadata, openable) of an existing cache file; raises CacheError for locked files."""
    try:
        with h5py.File(path, "r") as handle:
            return read_attrs(handle.attrs), True
    except OSError as error:
        if "lock" in str(error).lower():
            raise CacheError(
                f"{path} is open for writing by another process (another cache build?): {error}"
            ) from error
        return {}, False


def check_free_space(directory: Path, num_images: int, num_captions: int, identity: dict) -> None:
    """Pixels are allocated sparsely; fail now, not after hours, when the disk cannot hold them."""
    size, dim = int(identity["image_size"]), int(identity["embed_dim"])
    itemsize = np.dtype(identity["embed_dtype"]).itemsize
    needed = num_images * (3 * size * size + dim * itemsize + 16 + 40) + num_captions * (
        dim * itemsize + int(identity["max_length"]) * 4 + 16 + 80
    )
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise CacheError(
            f"not enough disk space in {directory} for the teacher cache: about {needed / 1e9:.2f} GB "
            f"needed, {free / 1e9:.2f} GB free. Free some space or choose another output path."
        )


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    try:
        fsync(path)
    except OSError:  # not supported everywhere (Windows); the rename itself is still atomic
        pass


def usable_partial(partial: Path, identity: dict) -> bool:
    """True when ``partial`` is a resumable build of this request. A partial build of another request
    is replaced when it holds no finished image, and otherwise refused with the command that removes it."""
    if not partial.exists():
        return False
    meta, readable = read_identity_of(partial)
    if not (readable and meta.get("initialised") and meta.get("format_version") == FORMAT_VERSION):
        logger.warning("restarting %s: it holds no usable progress", partial)
        return False
    differences = diff_meta(identity, meta)
    if not differences:
        return True
    done = int(meta.get("images_done", 0))
    if done == 0:
        logger.warning(
            "replacing %s: an unfinished build of another request with no finished image (%s)",
            partial,
            "; ".join(differences),
        )
        return False
    raise CacheError(
        f"{partial} is an unfinished build of a different request ({done} of "
        f"{meta.get('num_images', '?')} images done):\n  "
        + "\n  ".join(differences)
        + "\nRerun with the original arguments to finish it"
        + (f" (`{meta['build_command']}`)" if meta.get("build_command") else "")
        + f", or remove it to start over with these: `rm {shlex.quote(str(partial))}`"
    )


def drop_if_empty(partial: Path) -> None:
    """A partial build that finished no image holds nothing worth keeping: remove it."""
    if not partial.exists():
        return
    meta, readable = read_identity_of(partial)
    if not readable or int(meta.get("images_done", 0) or 0) == 0:
        try:
            partial.unlink()
            logger.info("removed %s: the build stopped before finishing any image", partial)
        except OSError:  # pragma: no cover - nothing to lose either way
            pass
