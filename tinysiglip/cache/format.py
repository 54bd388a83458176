"""The teacher cache's on-disk format: dataset names and shapes, metadata attributes, checksums.

One HDF5 file per (teacher, dataset split). Datasets at the root:

==========================  ==========================  ============================================
name                        shape / dtype               meaning
==========================  ==========================  ============================================
``pixels``                  (N, 3, H, W) uint8          ``teacher.resize_to_uint8(open_rgb(path))``;
                                                        one image per chunk
``image_embeds``            (N, D) float16 | float32    ``teacher.embed_pixels(pixels)`` (not normalised)
``image_ids``               (N,) int64                  dataset image ids, in dataset order
``caption_offsets``         (N + 1,) int64              captions of image i are rows
                                                        ``caption_offsets[i]:caption_offsets[i + 1]``
``token_ids``               (M, L) int32                ``teacher.tokenize(captions)`` (L = 64)
``text_embeds``             (M, D) float16 | float32    ``teacher.embed_token_ids(token_ids)``
``caption_image_index``     (M,) int64                  image row of each caption
``captions``                (M,) UTF-8 strings          the captions as the dataset gave them
``token_ids_present``       (K,) int64                  sorted set of token ids in ``token_ids``
==========================  ==========================  ============================================

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
FORMAT_VERSION = 1
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
)

# What makes two builds the same build: when any of these differs, an existing cache (or partial
# build) is not what was asked for.
IDENTITY_KEYS = (
    "format_version",
    "teacher_source",
    "teacher_revision",
    "teacher_kind",
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


def teacher_identity(teacher) -> dict[str, Any]:
    return {
        "teacher_source": normalise_source(teacher.source),
        "teacher_revision": getattr(teacher, "revision", None),
        "teacher_kind": str(teacher.kind),
        "teacher_fingerprints": dict(teacher.fingerprints()),
        "logit_scale": float(teacher.logit_scale),
        "logit_bias": float(teacher.logit_bias),
        "embed_dim": int(teacher.embed_dim),
        "image_size": int(teacher.image_size),
        "image_mean": [float(x) for x in teacher.image_mean],
        "image_std": [float(x) for x in teacher.image_std],
        "max_length": int(getattr(teacher, "max_length", 64)),
    }


def request_identity(teacher, dataset, embed_dtype: str) -> dict[str, Any]:
    identity = {
        "format_version": FORMAT_VERSION,
        **teacher_identity(teacher),
        "dataset_name": str(dataset.name),
        "split": str(dataset.split),
        "dataset_fingerprint": str(dataset.fingerprint()),
        "image_list_fingerprint": image_list_fingerprint(dataset),
        "captions_fingerprint": captions_fingerprint(dataset),
        "embed_dtype": embed_dtype,
    }
    return _plain(identity)


def diff_meta(expected: Mapping[str, Any], found: Mapping[str, Any]) -> list[str]:
    """One line per key of ``expected`` whose value ``found`` does not have."""
    lines = []
    for key, want in expected.items():
        want = _plain(want)
        if key not in found:
            lines.append(f"{key}: expected {want!r}, not recorded in the file")
            continue
        have = found[key]
        if key in ("teacher_source",) and isinstance(want, str):
            want = normalise_source(want)
        if have != want:
            lines.append(f"{key}: expected {want!r}, found {have!r}")
    return lines


# ----------------------------------------------------------------------------------------------
# checksums


def dataset_checksum(dataset, *, block_bytes: int = 64 << 20) -> str:
    """sha256 over a dataset's shape, dtype and values in row order (strings length-prefixed)."""
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
        digest.update(block.astype(block.dtype.newbyteorder("<"), copy=False).tobytes())
    return "sha256:" + digest.hexdigest()


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
    }
