"""The teacher cache's on-disk format: dataset names and shapes, metadata attributes, checksums.

One HDF5 file per (teacher, dataset split, teacher view). Datasets at the root:

==========================  ==========================  ============================================
name                        shape / dtype               meaning
==========================  ==========================  ============================================
``pixels``                  (N, 3, H, W) uint8          ``teacher.resize_to_uint8(open_rgb(path))``:
                                                        what the student reads; one image per chunk
``image_embeds``            (N, D) float16 | float32    the teacher's embedding of each image (not
                                                        normalised), in the view ``teacher_view`` says
``image_ids``               (N,) int64                  dataset image ids, in dataset order
``caption_offsets``         (N + 1,) int64              captions of image i are rows
                                                        ``caption_offsets[i]:caption_offsets[i + 1]``
``token_ids``               (M, L) int32                ``teacher.tokenize(captions)`` (L = 64)
``text_embeds``             (M, D) float16 | float32    ``teacher.embed_token_ids(token_ids)``
``caption_image_index``     (M,) int64                  image row of each caption
``captions``                (M,) UTF-8 strings          the captions as the dataset gave them
``token_ids_present``       (K,) int64                  sorted set of token ids in ``token_ids``
``pixel_sha256``            (N, 32) uint8               sha256 of each image's stored pixel bytes
``pixel_dhash``             (N,) uint64                 64-bit difference hash of each stored image
==========================  ==========================  ============================================

Integrity (format 2): ``pixels``, ``token_ids`` and both embedding tables are chunked with HDF5's
Fletcher-32 filter, so every chunk is verified as it is read (a flipped byte raises instead of
training on it). At completion a sha256 of every dataset goes into ``checksums``; ``open_cache``
re-hashes the embedding tables (small) and refuses non-finite values; ``cache verify`` re-hashes all.

Identity: ``teacher_fingerprint`` hashes the teacher's files by content
(``tinysiglip.teacher.identity``), so a copied teacher folder is the same teacher; ``teacher_source``
and ``teacher_revision`` are provenance only. ``request_fingerprint`` hashes every identity key.

Root attributes hold the metadata (see ``IDENTITY_KEYS`` and ``build.py``); structured values
(dicts, lists, None) are JSON strings and their names are listed in the ``json_keys`` attribute.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tinysiglip.errors import TinySigLIPError

FORMAT_NAME = "tinysiglip-teacher-cache"
FORMAT_VERSION = 2
EMBED_DTYPES = ("float16", "float32")
PARTIAL_SUFFIX = ".partial"

DATASETS = (
    "pixels",
    "image_embeds",
    "image_ids",
    "caption_offsets",
    "token_ids",
    "text_embeds",
    "caption_image_index",
    "captions",
    "token_ids_present",
    "pixel_sha256",
    "pixel_dhash",
)
# Chunked with the Fletcher-32 filter: every chunk is checked as it is read.
CHECKED_DATASETS = ("pixels", "image_embeds", "text_embeds", "token_ids")
EMBEDDING_DATASETS = ("image_embeds", "text_embeds")
# Provenance, not identity: the teacher is identified by teacher_fingerprint (its files' content).
PROVENANCE_KEYS = ("teacher_source", "teacher_revision")

# What makes two builds the same build: when any of these differs, an existing cache (or partial
# build) is not what was asked for.
IDENTITY_KEYS = (
    "format_version",
    "teacher_fingerprint",
    "teacher_kind",
    "teacher_view",
    "teacher_fingerprints",
    "logit_scale",
    "logit_bias",
    "embed_dim",
    "image_size",
    "image_mean",
    "image_std",
    "max_length",
    "dataset_name",
    "split",
    "dataset_fingerprint",
    "image_list_fingerprint",
    "captions_fingerprint",
    "embed_dtype",
)


class CacheError(TinySigLIPError):
    """A teacher cache cannot be built, opened or trusted (the message names the file and the fix)."""


def partial_path(out_path: str | Path) -> Path:
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + PARTIAL_SUFFIX)


def package_version() -> str:
    """The installed tinysiglip version (``tinysiglip.__version__`` when the package defines one)."""
    try:
        import tinysiglip

        version = getattr(tinysiglip, "__version__", None)
        if version:
            return str(version)
    except Exception:  # pragma: no cover - the package is importable if we are running
        pass
    try:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("tinysiglip")
        except PackageNotFoundError:
            return "0+unknown"
    except Exception:  # pragma: no cover
        return "0+unknown"


# ----------------------------------------------------------------------------------------------
# metadata attributes


def _plain(value: Any) -> Any:
    """numpy scalars/arrays -> Python values, tuples -> lists (so JSON round trips compare equal)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_attrs(attrs, values: Mapping[str, Any]) -> None:
    """Write metadata into HDF5 attributes: scalars natively, structured values as JSON."""
    json_keys = set(_decode_json_keys(attrs))
    for key, value in values.items():
        value = _plain(value)
        if value is None or isinstance(value, (dict, list)):
            attrs[key] = json.dumps(value, sort_keys=True)
            json_keys.add(key)
        else:
            attrs[key] = value
            json_keys.discard(key)
    attrs["json_keys"] = json.dumps(sorted(json_keys))


def _decode_json_keys(attrs) -> list[str]:
    if "json_keys" not in attrs:
        return []
    raw = attrs["json_keys"]
    if isinstance(raw, bytes):
        raw = raw.decode()
    return list(json.loads(raw))


def read_attrs(attrs) -> dict[str, Any]:
    """All root attributes as a plain dict (JSON attributes decoded)."""
    json_keys = set(_decode_json_keys(attrs))
    meta: dict[str, Any] = {}
    for key in attrs:
        if key == "json_keys":
            continue
        value = attrs[key]
        if isinstance(value, bytes):
            value = value.decode()
        if key in json_keys:
            value = json.loads(value)
        meta[key] = _plain(value)
    return meta


# ----------------------------------------------------------------------------------------------
# identity of a build request


def _hash_lines(lines: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def image_list_fingerprint(dataset) -> str:
    """sha256 over the (image_id, file name) list in cache row order."""
    return _hash_lines(f"{r.image_id}\t{Path(r.path).name}" for r in dataset.records)


def captions_fingerprint(dataset) -> str:
    """sha256 over every caption (JSON-quoted, so separators cannot collide) in cache row order."""
    return _hash_lines(json.dumps([r.image_id, list(r.captions)]) for r in dataset.records)


def normalise_source(source: Any) -> str:
    """Local teacher directories are recorded as absolute paths; Hub ids as given."""
    text = str(source)
    path = Path(text).expanduser()
    if path.exists():
        return str(path.resolve())
    return text


def teacher_identity(teacher, teacher_view: str = "teacher") -> dict[str, Any]:
    """What identifies the teacher side of a cache (the content fingerprint, not the path)."""
    return {
        "teacher_fingerprint": str(teacher.content_fingerprint()),
        "teacher_kind": str(teacher.kind),
        "teacher_view": str(teacher_view),
        "teacher_fingerprints": dict(teacher.fingerprints()),
        "logit_scale": float(teacher.logit_scale),
        "logit_bias": float(teacher.logit_bias),
        "embed_dim": int(teacher.embed_dim),
        "image_size": int(teacher.image_size),
        "image_mean": [float(x) for x in teacher.image_mean],
        "image_std": [float(x) for x in teacher.image_std],
        "max_length": int(getattr(teacher, "max_length", 64)),
    }


def teacher_provenance(teacher, teacher_view: str = "teacher") -> dict[str, Any]:
    """Recorded for people, not compared: where the teacher came from and what its files were."""
    describe = getattr(teacher, "describe_view", None)
    return _plain(
        {
            "teacher_source": normalise_source(teacher.source),
            "teacher_revision": getattr(teacher, "revision", None),
            "teacher_files": dict(teacher.content_files()),
            "teacher_max_num_patches": getattr(teacher, "max_num_patches", None),
            "teacher_view_detail": describe(teacher_view) if callable(describe) else str(teacher_view),
        }
    )


def request_identity(teacher, dataset, embed_dtype: str, teacher_view: str = "teacher") -> dict[str, Any]:
    identity = {
        "format_version": FORMAT_VERSION,
        **teacher_identity(teacher, teacher_view),
        "dataset_name": str(dataset.name),
        "split": str(dataset.split),
        "dataset_fingerprint": str(dataset.fingerprint()),
        "image_list_fingerprint": image_list_fingerprint(dataset),
        "captions_fingerprint": captions_fingerprint(dataset),
        "embed_dtype": embed_dtype,
    }
    return _plain(identity)


def request_fingerprint(identity: Mapping[str, Any]) -> str:
    """sha256 over every identity key: equal exactly when two builds are the same build."""
    payload = {key: _plain(identity.get(key)) for key in IDENTITY_KEYS}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _source_difference(want: str, found: Mapping[str, Any]) -> str | None:
    """An expected teacher given by path or Hub id: compare what its files hold with the cache's
    teacher (by content), falling back to the recorded source when its files are not here."""
    from tinysiglip.teacher.identity import combine, describe_difference, file_fingerprints, teacher_folder

    folder = teacher_folder(want, found.get("teacher_revision"))
    have_fp = found.get("teacher_fingerprint")
    if folder is not None and have_fp:
        files = file_fingerprints(folder)
        if combine(files) == have_fp:
            return None
        detail = describe_difference(files, found.get("teacher_files") or {})
        return (
            f"teacher: the teacher at {want!r} is not the one this cache was built from "
            f"({detail}; cache built from {found.get('teacher_source')!r})"
        )
    have = found.get("teacher_source")
    if normalise_source(want) != have:
        return f"teacher_source: expected {normalise_source(want)!r}, found {have!r}"
    return None


def diff_meta(expected: Mapping[str, Any], found: Mapping[str, Any]) -> list[str]:
    """One line per key of ``expected`` whose value ``found`` does not have.

    ``teacher_source``/``teacher_revision`` are provenance: skipped when ``expected`` names a
    ``teacher_fingerprint``; otherwise an expected source is compared by the content of its files."""
    lines = []
    by_fingerprint = "teacher_fingerprint" in expected
    for key, want in expected.items():
        want = _plain(want)
        if key == "teacher_files":  # detail for the teacher_fingerprint line, not a key of its own
            continue
        if key in PROVENANCE_KEYS:
            if by_fingerprint or want is None:
                continue
            if key == "teacher_source":
                difference = _source_difference(str(want), found)
                if difference:
                    lines.append(difference)
                continue
        if key not in found:
            lines.append(f"{key}: expected {want!r}, not recorded in the file")
            continue
        have = found[key]
        if have != want:
            if key == "teacher_fingerprint":
                from tinysiglip.teacher.identity import describe_difference

                detail = describe_difference(
                    expected.get("teacher_files") or {}, found.get("teacher_files") or {}
                )
                lines.append(
                    f"teacher_fingerprint: expected {want}, found {have} (another teacher: {detail}; "
                    f"cache built from {found.get('teacher_source')!r})"
                )
            else:
                lines.append(f"{key}: expected {want!r}, found {have!r}")
    return lines


# ----------------------------------------------------------------------------------------------
# checksums


def dataset_checksum(dataset, *, block_bytes: int = 64 << 20, inspect=None) -> str:
    """sha256 over a dataset's shape, dtype and values in row order (strings length-prefixed).
    ``inspect(block, first_row)`` sees every numeric block as it is hashed (one read for two checks)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([list(dataset.shape), str(dataset.dtype)]).encode())
    rows = dataset.shape[0] if dataset.shape else 0
    if dataset.dtype.kind == "O":  # variable-length strings
        step = 65536
        for start in range(0, rows, step):
            for value in dataset.asstr()[start : start + step]:
                data = value.encode("utf-8")
                digest.update(len(data).to_bytes(8, "little"))
                digest.update(data)
        return "sha256:" + digest.hexdigest()
    row_bytes = max(1, int(np.prod(dataset.shape[1:], dtype=np.int64)) * dataset.dtype.itemsize)
    step = max(1, block_bytes // row_bytes)
    for start in range(0, rows, step):
        block = np.ascontiguousarray(dataset[start : start + step])
        if inspect is not None:
            inspect(block, start)
        digest.update(block.astype(block.dtype.newbyteorder("<"), copy=False).tobytes())
    return "sha256:" + digest.hexdigest()


def checksum_and_nonfinite_rows(dataset) -> tuple[str, int, list[int]]:
    """(sha256 as ``dataset_checksum``, number of rows holding NaN/inf, the first few such rows)."""
    bad: list[int] = []
    count = 0

    def inspect(block: np.ndarray, start: int) -> None:
        nonlocal count
        rows = np.flatnonzero(~np.isfinite(block.reshape(len(block), -1)).all(axis=1))
        count += len(rows)
        bad.extend(int(start + r) for r in rows[: max(0, 5 - len(bad))])

    return dataset_checksum(dataset, inspect=inspect), count, bad


def expected_shapes(meta: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    n, m = int(meta["num_images"]), int(meta["num_captions"])
    d, s = int(meta["embed_dim"]), int(meta["image_size"])
    return {
        "pixels": (n, 3, s, s),
        "image_embeds": (n, d),
        "image_ids": (n,),
        "caption_offsets": (n + 1,),
        "token_ids": (m, int(meta["max_length"])),
        "text_embeds": (m, d),
        "caption_image_index": (m,),
        "captions": (m,),
        "token_ids_present": (int(meta["num_token_ids_present"]),),
        "pixel_sha256": (n, 32),
        "pixel_dhash": (n,),
    }


STUDENT_CACHE_KEYS = ("teacher_fingerprint", "teacher_view", "embed_dim", "image_size")


def student_cache_mismatches(training_record: Mapping[str, Any], meta: Mapping[str, Any]) -> list[str]:
    """Where a cache differs from the caches a student was trained on (its ``training_cache``
    record): another teacher, another view, another embedding width or image size."""
    lines = []
    for key in STUDENT_CACHE_KEYS:
        want, have = training_record.get(key), meta.get(key)
        if want is None:
            continue
        if want != have:
            extra = ""
            if key == "teacher_fingerprint":
                extra = (
                    f" (student trained on caches of {training_record.get('teacher_source')!r}, "
                    f"this cache is of {meta.get('teacher_source')!r})"
                )
            lines.append(f"{key}: student trained with {want!r}, cache has {have!r}{extra}")
    return lines
