"""Build the teacher cache: one teacher pass over a split, resumable, completed atomically.

Before anything else, every image is opened and fully decoded (in parallel); bad files stop the build
with their count, the first 20 and the path of the full list, before the teacher is loaded and before
any file is written (``--skip-bad-images`` leaves them out instead, recorded in the metadata).

The build writes ``<out>.partial``. Every dataset is allocated in full when the partial file is
created (no chunk is allocated later, and rewriting a chunk keeps its address), so a batch only writes
raw data, then commits its progress (``images_done``) in place and flushes: a process killed at any
point leaves a file whose rows ``< images_done`` are final. A rerun with the same request continues
from there and overwrites whatever lies beyond; a partial file of another request is replaced when it
holds no finished image, and otherwise named with the command that removes it. When every image is
done, checksums are stored, ``complete`` is set, the file is fsynced and renamed to ``<out>`` with
``os.replace``.

Teacher view (``teacher_view``): the stored image embedding is the teacher's own view of the image by
default (its processor on the original file: for NaFlex teachers the aspect ratio is kept, within the
processor's ``max_num_patches``), while the student reads the stored square; ``"student"`` stores the
teacher's embedding of the square instead. Fixed-resolution teachers see the square either way.
"""

from __future__ import annotations

import logging
import os
import shlex
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from tinysiglip.cache.files import (
    bad_images_report_path,
    check_free_space,
    drop_if_empty,
    fsync,
    fsync_dir,
    read_identity_of,
    usable_partial,
)
from tinysiglip.cache.format import (
    CHECKED_DATASETS,
    DATASETS,
    EMBED_DTYPES,
    FORMAT_NAME,
    CacheError,
    dataset_checksum,
    diff_meta,
    package_version,
    partial_path,
    request_fingerprint,
    request_identity,
    teacher_provenance,
    write_attrs,
)
from tinysiglip.cache.leakage import pixel_dhash, pixel_sha256

logger = logging.getLogger(__name__)

TOKENIZE_BLOCK = 4096
PROBE_MIN_COSINE = 0.99
CHUNK_BYTES = 16 << 10  # row chunks of token ids and embeddings: small random reads stay cheap
TEACHER_VIEWS = ("teacher", "student")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _resolve_teacher(teacher: Any, device: str):
    if isinstance(teacher, (str, Path)):
        from tinysiglip.teacher import load_teacher

        return load_teacher(teacher, device=device)
    return teacher


def _row_chunks(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * itemsize)
    return (max(1, min(int(shape[0]), CHUNK_BYTES // row_bytes)), *shape[1:])


def _create_preallocated(
    group: h5py.Group, name: str, shape: tuple[int, ...], dtype, chunks=None
) -> h5py.Dataset:
    """A dataset whose storage is allocated now and never filled: later writes touch raw data only.
    Datasets of ``CHECKED_DATASETS`` are chunked (rows, by ``_row_chunks`` unless given) with the
    Fletcher-32 filter, whose fixed-size checksum keeps every rewritten chunk at its address."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    if name in CHECKED_DATASETS:
        chunks = chunks or _row_chunks(shape, np.dtype(dtype).itemsize)
    if chunks is not None:
        dcpl.set_chunk(tuple(int(c) for c in chunks))
    if name in CHECKED_DATASETS:
        dcpl.set_fletcher32()
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    dcpl.set_obj_track_times(False)
    space = h5py.h5s.create_simple(tuple(int(s) for s in shape))
    type_id = h5py.h5t.py_create(np.dtype(dtype), logical=True)
    dataset_id = h5py.h5d.create(group.id, name.encode(), type_id, space, dcpl=dcpl)
    return h5py.Dataset(dataset_id)


def _check_arguments(dataset, batch_size: int, embed_dtype: str, teacher_view: str) -> None:
    if embed_dtype not in EMBED_DTYPES:
        raise CacheError(f"embed_dtype must be one of {', '.join(EMBED_DTYPES)}, got {embed_dtype!r}")
    if teacher_view not in TEACHER_VIEWS:
        raise CacheError(f"teacher_view must be one of {', '.join(TEACHER_VIEWS)}, got {teacher_view!r}")
    if int(batch_size) < 1:
        raise CacheError(f"batch_size must be >= 1, got {batch_size}")
    if not dataset.records:
        raise CacheError(f"dataset {dataset.name}/{dataset.split} ({dataset.annotation_file}) has no images")
    empty = [r.image_id for r in dataset.records if not r.captions]
    if empty:
        raise CacheError(
            f"dataset {dataset.name}/{dataset.split}: {len(empty)} image(s) have no caption "
            f"(first image_id {empty[0]}); the loaders drop those, so this dataset was built by hand"
        )


def _decode(teacher, path: Path) -> np.ndarray:
    from tinysiglip.data import open_rgb

    pixels = np.asarray(teacher.resize_to_uint8(open_rgb(path)), dtype=np.uint8)
    size = int(teacher.image_size)
    if pixels.shape != (3, size, size):
        raise CacheError(
            f"teacher.resize_to_uint8 returned shape {pixels.shape} for {path}, expected (3, {size}, {size})"
        )
    return pixels


def default_decode_workers(device: str) -> int:
    """Decode threads when the caller does not say: every core this process may use when the teacher
    runs on a GPU (a COCO photo costs a core ~5-10 ms to decode and resize; SigLIP 2 Large on an H100
    embeds ~1,400 images/s with their captions: bench/RESULTS.md), at most 4 beside a CPU teacher,
    which needs the cores itself."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores if str(device).startswith("cuda") else min(4, cores)


def _decoded_batches(
    teacher, paths: list[Path], start: int, batch_size: int, workers: int
) -> Iterator[tuple[int, int, np.ndarray]]:
    """(first row, end row, uint8 pixels) per batch; decoding runs ahead in a thread pool while the
    caller runs the teacher (PIL decoders and resizers and torch's resize release the GIL). Two
    batches are always queued, so the pool never waits for the caller: the build runs at the speed
    of the slower of decoding and the teacher."""
    bounds = [(a, min(a + batch_size, len(paths))) for a in range(start, len(paths), batch_size)]
    if workers <= 0:
        for a, b in bounds:
            yield a, b, np.stack([_decode(teacher, paths[i]) for i in range(a, b)])
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cache-decode") as pool:
        pending: deque[tuple[int, int, list[Future]]] = deque()
        next_bound = 0

        def submit_next() -> None:
            nonlocal next_bound
            a, b = bounds[next_bound]
            pending.append((a, b, [pool.submit(_decode, teacher, paths[i]) for i in range(a, b)]))
            next_bound += 1

        try:
            while next_bound < len(bounds) and next_bound < 2:
                submit_next()
            while pending:
                a, b, futures = pending.popleft()
                if next_bound < len(bounds):
                    submit_next()  # keep one batch decoding while the teacher runs
                yield a, b, np.stack([future.result() for future in futures])
        finally:
            for _, _, futures in pending:
                for future in futures:
                    future.cancel()


def _run_ahead(
    job: Callable[[int], Any], bounds: list[tuple[int, int]], workers: int
) -> Iterator[tuple[int, int, list]]:
    """(a, b, [job(i) for i in a..b]) per batch, the next batch running in a thread pool meanwhile."""
    if workers <= 0:
        for a, b in bounds:
            yield a, b, [job(i) for i in range(a, b)]
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cache-view") as pool:
        pending: deque[tuple[int, int, list[Future]]] = deque()
        for a, b in bounds[:2]:
            pending.append((a, b, [pool.submit(job, i) for i in range(a, b)]))
        queued = len(pending)
        try:
            while pending:
                a, b, futures = pending.popleft()
                if queued < len(bounds):
                    c, d = bounds[queued]
                    pending.append((c, d, [pool.submit(job, i) for i in range(c, d)]))
                    queued += 1
                yield a, b, [future.result() for future in futures]
        finally:
            for _, _, futures in pending:
                for future in futures:
                    future.cancel()


def _to_numpy(tensor: torch.Tensor, dtype: str) -> np.ndarray:
    return tensor.detach().to("cpu", torch.float32).numpy().astype(dtype)


def _checked_embeddings(out: np.ndarray, rows: int, what: str, ids: Any = None) -> np.ndarray:
    if out.ndim != 2 or out.shape[0] != rows:
        raise CacheError(f"the teacher returned {what} of shape {tuple(out.shape)}, expected ({rows}, D)")
    bad = ~np.isfinite(out).all(axis=1)
    if bad.any():
        where = list(np.asarray(ids)[bad][:5]) if ids is not None else list(np.flatnonzero(bad)[:5])
        raise CacheError(
            f"the teacher returned non-finite {what} for {int(bad.sum())} row(s) (e.g. {where}); "
            "nothing was written for them. A float16 overflow? Rebuild with --embed-dtype float32; "
            "otherwise the teacher's weights are damaged."
        )
    return out


def _embed_pixels(teacher, pixels: np.ndarray, dtype: str) -> np.ndarray:
    with torch.inference_mode():
        embeds = teacher.embed_pixels(torch.from_numpy(pixels))
    return _checked_embeddings(_to_numpy(embeds, dtype), len(pixels), "image embeddings")


def _embed_views(teacher, inputs: list, dtype: str) -> np.ndarray:
    with torch.inference_mode():
        embeds = teacher.embed_view_inputs(inputs)
    return _checked_embeddings(_to_numpy(embeds, dtype), len(inputs), "image embeddings")


def _embed_tokens(teacher, token_ids: np.ndarray, dtype: str, batch_size: int) -> np.ndarray:
    parts = []
    with torch.inference_mode():
        for start in range(0, len(token_ids), batch_size):
            ids = torch.from_numpy(token_ids[start : start + batch_size].astype(np.int64))
            parts.append(_to_numpy(teacher.embed_token_ids(ids), dtype))
    out = np.concatenate(parts) if parts else np.zeros((0, int(teacher.embed_dim)), dtype)
    return _checked_embeddings(out, len(token_ids), "text embeddings")


def _uses_original_images(teacher, teacher_view: str) -> bool:
    views_differ = getattr(teacher, "views_differ", None)
    return teacher_view == "teacher" and callable(views_differ) and bool(views_differ())


def _probe_weights(teacher, handle: h5py.File, teacher_view: str, first_image: Path) -> str | None:
    """The fingerprint covers the teacher's files, not a teacher changed in memory: embed the first
    cached image again (in the stored view) and compare."""
    if int(handle.attrs.get("images_done", 0)) < 1:
        return None
    stored = handle["image_embeds"][0:1].astype(np.float32)
    if _uses_original_images(teacher, teacher_view):
        from tinysiglip.data import open_rgb

        fresh = _embed_views(teacher, [teacher.view_inputs(open_rgb(first_image))], "float32")
    else:
        fresh = _embed_pixels(teacher, handle["pixels"][0:1], "float32")
    denom = float(np.linalg.norm(stored) * np.linalg.norm(fresh)) or 1.0
    cosine = float((stored * fresh).sum()) / denom
    if cosine < PROBE_MIN_COSINE:
        return (
            f"teacher weights: the teacher's embedding of cached image 0 differs from the stored one "
            f"(cosine {cosine:.4f}); the teacher was changed since this file was written"
        )
    return None


def _optional_int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, np.integer)) else None


def _teacher_facts(teacher) -> dict[str, Any]:
    """Metadata about the teacher that is not identity: token ids, vocabulary, parameter counts."""
    special = getattr(teacher, "special_token_ids", None)
    tokenizer = getattr(teacher, "tokenizer", None)
    model = getattr(teacher, "model", None)
    text_config = getattr(getattr(model, "config", None), "text_config", None)
    teacher_params = {}
    if model is not None:  # for the report's Params column: the teacher row costs no extra load
        for part in ("vision_model", "text_model"):
            tower = getattr(model, part, None)
            if tower is not None:
                teacher_params[part.removesuffix("_model")] = sum(p.numel() for p in tower.parameters())
        teacher_params["total"] = sum(p.numel() for p in model.parameters())
    return {
        "special_token_ids": [int(t) for t in special()] if callable(special) else [],
        "pad_token_id": _optional_int(getattr(tokenizer, "pad_token_id", None)),
        "eos_token_id": _optional_int(getattr(tokenizer, "eos_token_id", None)),
        "teacher_vocab_size": _optional_int(getattr(text_config, "vocab_size", None)),
        "teacher_params": teacher_params,
    }


def _initialise(
    handle: h5py.File, teacher, dataset, identity: dict, batch_size: int, notes: Mapping[str, Any]
) -> None:
    """Write everything known before the teacher pass: ids, offsets, captions, token ids."""
    records = dataset.records
    n = len(records)
    counts = np.array([len(r.captions) for r in records], dtype=np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    m = int(offsets[-1])
    size, dim, length = int(teacher.image_size), int(teacher.embed_dim), int(identity["max_length"])
    embed_dtype = identity["embed_dtype"]

    captions = [c for r in records for c in r.captions]
    token_ids = np.empty((m, length), dtype=np.int32)
    for start in range(0, m, TOKENIZE_BLOCK):
        ids = teacher.tokenize(captions[start : start + TOKENIZE_BLOCK])
        ids = np.asarray(ids.cpu().numpy() if isinstance(ids, torch.Tensor) else ids)
        if ids.shape[1:] != (length,):
            raise CacheError(f"teacher.tokenize returned shape {ids.shape}, expected (B, {length})")
        token_ids[start : start + len(ids)] = ids
    present = np.unique(token_ids).astype(np.int64)

    _create_preallocated(handle, "pixels", (n, 3, size, size), np.uint8, chunks=(1, 3, size, size))
    _create_preallocated(handle, "image_embeds", (n, dim), embed_dtype)
    _create_preallocated(handle, "text_embeds", (m, dim), embed_dtype)
    _create_preallocated(handle, "pixel_sha256", (n, 32), np.uint8)
    _create_preallocated(handle, "pixel_dhash", (n,), np.uint64)
    handle.create_dataset(
        "token_ids", data=token_ids, chunks=_row_chunks(token_ids.shape, 4), fletcher32=True
    )
    handle.create_dataset("image_ids", data=np.array([r.image_id for r in records], dtype=np.int64))
    handle.create_dataset("caption_offsets", data=offsets)
    handle.create_dataset("caption_image_index", data=np.repeat(np.arange(n, dtype=np.int64), counts))
    handle.create_dataset("captions", data=captions, dtype=h5py.string_dtype("utf-8"))
    handle.create_dataset("token_ids_present", data=present)

    write_attrs(
        handle.attrs,
        {
            "format": FORMAT_NAME,
            **identity,
            "request_fingerprint": request_fingerprint(identity),
            **teacher_provenance(teacher, identity["teacher_view"]),
            **_teacher_facts(teacher),
            **dict(notes),
            "annotation_file": str(dataset.annotation_file),
            "skipped_images": [[str(p), str(reason)] for p, reason in dataset.skipped],
            "excluded_images": getattr(dataset, "excluded", None),
            "num_skipped_images": len(dataset.skipped),
            "num_images": n,
            "num_captions": m,
            "num_token_ids_present": len(present),
            "checked_datasets": {name: "fletcher32" for name in CHECKED_DATASETS},
            "dtypes": {
                "pixels": "uint8",
                "image_embeds": embed_dtype,
                "text_embeds": embed_dtype,
                "image_ids": "int64",
                "caption_offsets": "int64",
                "token_ids": "int32",
                "caption_image_index": "int64",
                "captions": "utf-8",
                "token_ids_present": "int64",
                "pixel_sha256": "uint8",
                "pixel_dhash": "uint64",
            },
            "tinysiglip_version": package_version(),
            "created_at": _now(),
            "batch_size": int(batch_size),
            "build_seconds": 0.0,
            "images_done": 0,
            "complete": False,
            "initialised": False,
        },
    )
    handle.flush()  # everything above reaches the file before it is declared usable
    handle.attrs.modify("initialised", True)
    handle.flush()


def _finalise(handle: h5py.File) -> None:
    checksums = {name: dataset_checksum(handle[name]) for name in DATASETS}
    sizes = {name: list(handle[name].shape) for name in DATASETS}
    write_attrs(handle.attrs, {"checksums": checksums, "sizes": sizes, "completed_at": _now()})
    handle.attrs.modify("complete", True)
    handle.flush()


def _existing_complete(out: Path, teacher, identity: dict, teacher_view: str, first_image: Path) -> None:
    """Raise unless ``out`` is a complete cache of exactly this request."""
    meta, readable = read_identity_of(out)
    if not readable or not meta.get("complete"):
        raise CacheError(
            f"{out} exists but is not a complete teacher cache (unreadable or unfinished). "
            f"Delete it (`rm {shlex.quote(str(out))}`) or choose another output path."
        )
    differences = diff_meta({**identity, "teacher_files": teacher.content_files()}, meta)
    if not differences:
        with h5py.File(out, "r") as handle:
            probe = _probe_weights(teacher, handle, teacher_view, first_image)
        if probe:
            differences.append(probe)
    if differences:
        raise CacheError(
            f"{out} already exists but was built for a different request:\n  "
            + "\n  ".join(differences)
            + f"\nDelete it (`rm {shlex.quote(str(out))}`) or choose another output path."
        )


def build_cache(
    teacher,
    dataset,
    out_path: str | Path,
    *,
    batch_size: int = 64,
    embed_dtype: str = "float16",
    device: str = "cpu",
    progress: bool = True,
    num_workers: int | None = None,
    teacher_view: str = "teacher",
    notes: Mapping[str, Any] | None = None,
) -> Path:
    """Run the teacher once over ``dataset`` and store pixels, token ids and embeddings in ``out_path``.

    ``teacher`` is a ``Teacher`` or a source for ``load_teacher`` (loaded on ``device`` after every
    image was checked). Resumable: rerunning after an interruption continues from the last committed
    batch. An existing complete cache built for the same request is returned as is; one built for
    another request (teacher, dataset, view, dtype, ...) is an error naming every difference.
    ``teacher_view``: "teacher" (default) or "student", see the module doc. ``notes``: extra
    metadata (e.g. ``build_command``, ``excluded_images``). ``num_workers`` image-decoding threads
    (default ``default_decode_workers(device)``; 0 decodes inline).
    """
    from tqdm.auto import tqdm

    from tinysiglip.data import check_images

    out = Path(out_path)
    _check_arguments(dataset, batch_size, embed_dtype, teacher_view)
    if not out.exists() and not getattr(dataset, "images_checked", False):
        dataset = check_images(dataset, skip_bad=False, report_path=bad_images_report_path(out))
    teacher = _resolve_teacher(teacher, device)
    workers = (
        default_decode_workers(getattr(teacher, "device", device))
        if num_workers is None
        else int(num_workers)
    )
    identity = request_identity(teacher, dataset, embed_dtype, teacher_view)
    first_image = Path(dataset.records[0].path)

    if out.exists():
        _existing_complete(out, teacher, identity, teacher_view, first_image)
        logger.info("teacher cache %s is already complete for this request", out)
        return out

    partial = partial_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    resume = usable_partial(partial, identity)
    if not resume:
        check_free_space(out.parent, len(dataset.records), dataset.num_captions, identity)
    started = time.monotonic()
    try:
        _run_build(
            partial,
            out,
            teacher,
            dataset,
            identity,
            resume,
            int(batch_size),
            workers,
            notes or {},
            progress,
            tqdm,
        )
    except BaseException:
        drop_if_empty(partial)
        raise
    if not partial.exists():  # pragma: no cover - _run_build either finishes it or raises
        raise CacheError(f"{partial} vanished during the build")
    fsync(partial)
    os.replace(partial, out)
    fsync_dir(out.parent)
    logger.info("teacher cache written: %s (%.1fs)", out, time.monotonic() - started)
    return out


def _run_build(
    partial: Path,
    out: Path,
    teacher,
    dataset,
    identity: dict,
    resume: bool,
    batch_size: int,
    workers: int,
    notes: Mapping[str, Any],
    progress: bool,
    tqdm,
) -> None:
    started = time.monotonic()
    embed_dtype = identity["embed_dtype"]
    teacher_view = identity["teacher_view"]
    paths = [Path(r.path) for r in dataset.records]
    with h5py.File(partial, "r+" if resume else "w", libver=("earliest", "v110")) as handle:
        if resume:
            probe = _probe_weights(teacher, handle, teacher_view, paths[0])
            if probe:
                raise CacheError(
                    f"{partial} is an unfinished build of a different teacher:\n  {probe}\n"
                    f"Remove it to start over: `rm {shlex.quote(str(partial))}`"
                )
        else:
            _initialise(handle, teacher, dataset, identity, batch_size, notes)
        n = int(handle.attrs["num_images"])
        done = int(handle.attrs["images_done"])
        if done:
            logger.info("resuming %s at image %d of %d", partial, done, n)
        offsets = handle["caption_offsets"][:]
        token_ids = handle["token_ids"]
        build_seconds = float(handle.attrs.get("build_seconds", 0.0))
        views = None
        if _uses_original_images(teacher, teacher_view):
            from tinysiglip.data import open_rgb

            bounds = [(a, min(a + batch_size, n)) for a in range(done, n, batch_size)]
            views = _run_ahead(lambda i: teacher.view_inputs(open_rgb(paths[i])), bounds, workers)
        bar = tqdm(total=n, initial=done, unit="img", desc=f"teacher cache {out.name}", disable=not progress)
        try:
            for a, b, pixels in _decoded_batches(teacher, paths, done, batch_size, workers):
                if views is not None:
                    view_a, view_b, inputs = next(views)
                    assert (view_a, view_b) == (a, b), "teacher-view batches out of step with pixel batches"
                    image_embeds = _embed_views(teacher, inputs, embed_dtype)
                else:
                    image_embeds = _embed_pixels(teacher, pixels, embed_dtype)
                c0, c1 = int(offsets[a]), int(offsets[b])
                text_embeds = _embed_tokens(teacher, token_ids[c0:c1], embed_dtype, batch_size)
                handle["pixels"][a:b] = pixels
                handle["image_embeds"][a:b] = image_embeds
                handle["text_embeds"][c0:c1] = text_embeds
                handle["pixel_sha256"][a:b] = pixel_sha256(pixels)
                handle["pixel_dhash"][a:b] = pixel_dhash(pixels)
                handle.flush()  # rows first, then the counter that declares them final
                handle.attrs.modify("build_seconds", build_seconds + time.monotonic() - started)
                handle.attrs.modify("images_done", b)
                handle.flush()
                bar.update(b - a)
        except Exception as error:
            from tinysiglip.data import BadImageError

            if isinstance(error, BadImageError):  # changed on disk after the check
                raise CacheError(
                    f"{error}\nThe cache build stopped; finished images are kept in {partial}. Fix the image "
                    "and rerun, or rerun with --skip-bad-images (that changes the image list: remove the "
                    f"partial build first, `rm {shlex.quote(str(partial))}`)."
                ) from error
            raise
        finally:
            bar.close()
            if views is not None:
                views.close()
        if int(handle.attrs["images_done"]) != n:  # pragma: no cover - the loop covers every row
            raise CacheError(f"{partial}: build ended at image {handle.attrs['images_done']} of {n}")
        _finalise(handle)
