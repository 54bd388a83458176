"""Integrity checks a cache passes when opened: embedding checksums and finiteness (once per file and
process), token ids within the vocabulary, and the command that rebuilds a cache that fails them."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py

from tinysiglip.cache.format import EMBEDDING_DATASETS, CacheError, checksum_and_nonfinite_rows
from tinysiglip.cache.mapped import damaged_rows


def rebuild_command(path: Path, meta: Mapping[str, Any]) -> str:
    """The command that rebuilds a cache, as exactly as its metadata allows."""
    if meta.get("build_command"):
        return f"rm {_quote(path)} && {meta['build_command']}"
    annotation = meta.get("annotation_file", "<captions or Karpathy file>")
    source = f"--coco-captions {_quote(annotation)}"
    if Path(str(annotation)).name.startswith("dataset_"):
        source = f"--karpathy {_quote(annotation)} --split {meta.get('split', '<split>')}"
    return (
        f"rm {_quote(path)} && tinysiglip cache build --teacher {_quote(meta.get('teacher_source', '<teacher>'))} "
        f"{source} --images <image folder> --name {meta.get('dataset_name', 'coco')} --out {_quote(path)}"
    )


def damaged(
    path: Path, meta: Mapping[str, Any], problems: list[str], why: str = "", hint: str = ""
) -> CacheError:
    """The error for a cache that fails a check: every problem, and the command that rebuilds it."""
    return CacheError(
        f"teacher cache {path} is damaged{f' ({why})' if why else ''}:\n  "
        + "\n  ".join(problems)
        + (f"\n{hint}" if hint else "")
        + f"\nRebuild it: {rebuild_command(path, meta)}"
    )


def _rows_text(rows: list[int]) -> str:
    return ", ".join(str(r) for r in rows[:10]) + (f" ... ({len(rows)} rows)" if len(rows) > 10 else "")


def damaged_chunks(path: Path, meta: Mapping[str, Any], dataset: str, rows: list[int]) -> CacheError:
    """A read that met chunks failing their Fletcher-32 checksum: the dataset, the rows, the fix."""
    return damaged(
        path,
        meta,
        [f"dataset {dataset!r}, row(s) {_rows_text(rows)}: the stored chunk fails its Fletcher-32 checksum"],
        "its contents changed since it was written",
        hint=f"Nothing of those rows was used. Check every dataset: `tinysiglip cache verify {_quote(path)}`",
    )


def unreadable(
    path: Path, meta: Mapping[str, Any], dataset: h5py.Dataset, rows: Any, error: OSError
) -> CacheError:
    """The error for h5py's bare OSError on reading ``rows`` (None: all) of ``dataset``: the damaged
    chunks' rows when the Fletcher-32 check failed, else h5py's message with the file and dataset."""
    name = dataset.name.lstrip("/")
    bad = damaged_rows(dataset, rows)
    if bad:
        return damaged_chunks(path, meta, name, bad)
    return damaged(
        path,
        meta,
        [f"dataset {name!r} cannot be read: {error}"],
        hint=f"Check every dataset: `tinysiglip cache verify {_quote(path)}`",
    )


def _quote(value: Any) -> str:
    return shlex.quote(str(value))


# Embedding tables verified in this process: (path, inode, size, mtime) -> True. A file changed in
# place gets a new mtime and is checked again.
_VERIFIED: dict[tuple[str, int, int, int], bool] = {}


def _file_key(path: Path) -> tuple[str, int, int, int]:
    stat = path.stat()
    return (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)


def verify_embeddings(path: Path, handle: h5py.File, meta: Mapping[str, Any]) -> None:
    """Re-hash the embedding tables against the checksums stored at completion and refuse NaN/inf.
    Reading them also verifies their Fletcher-32 chunk checksums."""
    key = _file_key(path)
    if _VERIFIED.get(key):
        return
    stored = meta.get("checksums") or {}
    problems = []
    for name in EMBEDDING_DATASETS:
        try:
            have, nonfinite, rows = checksum_and_nonfinite_rows(handle[name])
        except OSError as error:  # a chunk failed its Fletcher-32 check
            bad = damaged_rows(handle[name])
            where = f", row(s) {_rows_text(bad)}: the stored chunk fails its Fletcher-32 checksum"
            problems.append(f"dataset {name!r}{where if bad else f': {error}'}")
            continue
        if nonfinite:
            problems.append(
                f"dataset {name!r} holds non-finite values (NaN/inf) in {nonfinite} row(s), e.g. {rows}"
            )
        if stored.get(name) != have:
            problems.append(f"dataset {name!r}: checksum {have} differs from the stored {stored.get(name)}")
    present = handle["token_ids_present"][:]
    vocab = meta.get("teacher_vocab_size")
    if present.size and (present.min() < 0 or (vocab is not None and present.max() >= int(vocab))):
        problems.append(f"dataset 'token_ids_present' holds ids outside [0, {vocab})")
    if problems:
        raise damaged(path, meta, problems, "its contents changed since it was written")
    _VERIFIED[key] = True
