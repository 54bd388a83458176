"""Read a teacher cache: ``open_cache`` (validated metadata, lazy arrays) and torch Datasets.

Every Dataset here is picklable and opens its own read-only h5py handle (or memory map) lazily in
the process that reads it (an h5py handle must never cross a fork), so it works with any number of
DataLoader workers. Rows are read a batch at a time: straight from the file's bytes, each chunk's
Fletcher-32 checksum verified in numpy (``mapped.py``: what build_cache writes), else with one sorted
h5py read per dataset. A chunk that fails its checksum either way is a ``CacheError`` naming the
file, the dataset, the rows and the fix. ``TrainPairs[(epoch, rows)]`` returns a whole collated batch (what ``loader.py`` feeds
``run_training``); ``__getitems__`` serves DataLoaders that collate items themselves.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from tinysiglip.cache.format import (
    DATASETS,
    FORMAT_NAME,
    FORMAT_VERSION,
    CacheError,
    dataset_checksum,
    diff_meta,
    expected_shapes,
    partial_path,
    read_attrs,
)
from tinysiglip.cache.integrity import damaged, damaged_chunks, rebuild_command, unreadable, verify_embeddings
from tinysiglip.cache.mapped import DamagedChunks, MappedRows, batch_buffer, damaged_rows

# Chunk cache per open dataset: a few pixel chunks (one image each) plus contiguous reads.
DEFAULT_RDCC_NBYTES = 16 << 20
DEFAULT_RDCC_NSLOTS = 10007
BUILD_HINT = "rerun `tinysiglip cache build ...` with the same arguments"


def pixels_to_float(
    pixels_uint8: torch.Tensor | np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """uint8 (B, 3, H, W) or (3, H, W) -> float32 ``(x / 255 - mean) / std``, on the input's device.

    Rescale then normalise, in float32, the order the SigLIP image processor uses.
    """
    if not isinstance(pixels_uint8, torch.Tensor):
        pixels_uint8 = torch.from_numpy(np.ascontiguousarray(pixels_uint8))
    if pixels_uint8.dtype != torch.uint8:
        raise TypeError(f"pixels_to_float expects uint8 pixels, got {pixels_uint8.dtype}")
    x = pixels_uint8.to(torch.float32) * (1.0 / 255.0)
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    return (x - mean_t) / std_t


def _open_h5(path: Path, **kwargs) -> h5py.File:
    """Open read-only, turning h5py's errors into CacheErrors that name the file and the fix."""
    if not path.exists():
        partial = partial_path(path)
        if partial.exists():
            raise CacheError(
                f"teacher cache {path} does not exist; {partial} is an incomplete build: "
                f"{BUILD_HINT} to resume it"
            )
        raise CacheError(f"teacher cache {path} does not exist; build it with `tinysiglip cache build`")
    if path.is_dir():
        raise CacheError(f"teacher cache {path} is a directory, not an HDF5 file")
    try:
        return h5py.File(path, "r", **kwargs)
    except OSError as error:
        text = str(error)
        if "truncated" in text:
            what = "is truncated (an interrupted copy or a full disk?)"
        elif "signature" in text:
            what = "is not an HDF5 file"
        else:
            what = "cannot be read as HDF5"
        raise CacheError(
            f"teacher cache {path} {what}: {text}. Delete it and rebuild it ({BUILD_HINT})."
        ) from error


class TeacherCache:
    """A validated teacher cache. Metadata is read at open; arrays are read when asked for."""

    def __init__(self, path: str | Path, meta: Mapping[str, Any]):
        self.path = Path(path)
        self.meta: dict[str, Any] = dict(meta)
        self.num_images = int(meta["num_images"])
        self.num_captions = int(meta["num_captions"])
        self.embed_dim = int(meta["embed_dim"])
        self.image_size = int(meta["image_size"])
        self.max_length = int(meta["max_length"])
        self.logit_scale = float(meta["logit_scale"])
        self.logit_bias = float(meta["logit_bias"])
        self.image_mean = tuple(float(x) for x in meta["image_mean"])
        self.image_std = tuple(float(x) for x in meta["image_std"])
        self.embed_dtype = str(meta["embed_dtype"])
        self._handle: h5py.File | None = None
        self._pid: int | None = None
        self._token_ids_present: np.ndarray | None = None

    # -- handle -------------------------------------------------------------------------------
    def _h5(self) -> h5py.File:
        if self._handle is None or self._pid != os.getpid():
            self._handle = _open_h5(self.path)
            self._pid = os.getpid()
        return self._handle

    def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = None
        self._pid = None

    def __enter__(self) -> TeacherCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_pid"] = None
        return state

    def __repr__(self) -> str:
        return (
            f"TeacherCache({str(self.path)!r}, teacher={self.meta.get('teacher_source')!r}, "
            f"dataset={self.meta.get('dataset_name')}/{self.meta.get('split')}, images={self.num_images}, "
            f"captions={self.num_captions}, embed_dim={self.embed_dim}, image_size={self.image_size})"
        )

    # -- arrays -------------------------------------------------------------------------------
    @property
    def token_ids_present(self) -> np.ndarray:
        if self._token_ids_present is None:
            self._token_ids_present = self._h5()["token_ids_present"][:].astype(np.int64)
        return self._token_ids_present

    def _read(self, name: str, rows: Sequence[int] | np.ndarray | slice | None = None) -> np.ndarray:
        """``dataset[rows]`` (all rows when None) through h5py; a chunk failing its Fletcher-32 check
        is reported with the file, the dataset, the rows and the fix, not as h5py's bare OSError."""
        dataset = self._h5()[name]
        try:
            if rows is None:
                return dataset[:]
            if isinstance(rows, slice):
                return dataset[rows]
            return _read_rows(dataset, np.asarray(rows, dtype=np.int64))
        except OSError as error:
            where = None if rows is None else np.arange(dataset.shape[0])[rows]
            raise unreadable(self.path, self.meta, dataset, where, error) from error

    def image_embeds(self) -> np.ndarray:
        """(N, D) float32 teacher image embeddings (not normalised)."""
        return self._read("image_embeds").astype(np.float32)

    def text_embeds(self) -> np.ndarray:
        """(M, D) float32 teacher text embeddings (not normalised)."""
        return self._read("text_embeds").astype(np.float32)

    def caption_image_index(self) -> np.ndarray:
        return self._h5()["caption_image_index"][:].astype(np.int64)

    def caption_offsets(self) -> np.ndarray:
        return self._h5()["caption_offsets"][:].astype(np.int64)

    def image_ids(self) -> np.ndarray:
        return self._h5()["image_ids"][:].astype(np.int64)

    def pixel_sha256(self) -> np.ndarray:
        """(N, 32) uint8: sha256 of each stored image (for the leakage check)."""
        return self._h5()["pixel_sha256"][:]

    def pixel_dhash(self) -> np.ndarray:
        """(N,) uint64: difference hash of each stored image (near-duplicate search)."""
        return self._h5()["pixel_dhash"][:].astype(np.uint64)

    def training_record(self) -> dict[str, Any]:
        """What a student trained on this cache records, so that ``eval`` can refuse caches of
        another teacher, image size or embedding width."""
        keys = ("teacher_fingerprint", "teacher_kind", "teacher_view", "embed_dim", "image_size")
        return {
            "path": str(self.path),
            **{key: self.meta.get(key) for key in keys},
            "teacher_source": self.meta.get("teacher_source"),
            "dataset_name": self.meta.get("dataset_name"),
            "request_fingerprint": self.meta.get("request_fingerprint"),
        }

    def token_ids(self) -> np.ndarray:
        """(M, L) int64 teacher token ids."""
        return self._read("token_ids").astype(np.int64)

    def captions(self) -> list[str]:
        return list(self._h5()["captions"].asstr()[:])

    def pixels(self, indices: Sequence[int] | slice | None = None) -> np.ndarray:
        """uint8 (B, 3, H, W) pixels of the given image rows (all rows when None)."""
        return self._read("pixels", indices)

    def teacher_logits(self, image_rows: Sequence[int], caption_rows: Sequence[int]) -> torch.Tensor:
        """The teacher's logits (logit_scale * cos + logit_bias) between some images and captions."""
        images = torch.from_numpy(self._read("image_embeds", np.asarray(image_rows)).astype(np.float32))
        texts = torch.from_numpy(self._read("text_embeds", np.asarray(caption_rows)).astype(np.float32))
        images = torch.nn.functional.normalize(images, dim=-1)
        texts = torch.nn.functional.normalize(texts, dim=-1)
        return self.logit_scale * images @ texts.T + self.logit_bias

    def verify(self) -> dict[str, str]:
        """Re-hash every dataset and compare with the stored checksums; returns the checksums."""
        stored = self.meta.get("checksums") or {}
        handle = self._h5()
        bad = []
        for name in DATASETS:
            want = stored.get(name)
            try:
                have = dataset_checksum(handle[name])
            except OSError as error:  # a chunk failed its Fletcher-32 check
                rows = damaged_rows(handle[name])
                where = f"row(s) {rows[:10]}{' ...' if len(rows) > 10 else ''}" if rows else "a chunk"
                bad.append(f"{name}: {where} fail(s) the Fletcher-32 chunk checksum ({error})")
                continue
            if want != have:
                bad.append(f"{name}: stored {want}, computed {have}")
        if bad:
            raise CacheError(
                f"teacher cache {self.path} failed verification (its contents changed since it was "
                "written):\n  " + "\n  ".join(bad) + f"\nDelete it and rebuild it ({BUILD_HINT})."
            )
        return dict(stored)


def _read_rows(dataset: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """dataset[rows] for any order and repeats, as one increasing-index h5py read (the fallback of
    ``mapped.py``: HDF5 checks each chunk's Fletcher-32 checksum as it reads it)."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if rows.size == 0:
        return np.empty((0,) + dataset.shape[1:], dtype=dataset.dtype)
    unique, inverse = np.unique(rows, return_inverse=True)
    if dataset.chunks is not None and dataset.chunks[0] == 1:
        # One row per chunk (pixels): HDF5's multi-hyperslab selections over many chunks are
        # ~40x slower than reading the chunks one by one.
        block = np.empty((unique.size,) + dataset.shape[1:], dtype=dataset.dtype)
        for k, row in enumerate(unique.tolist()):
            block[k] = dataset[row]
    elif unique.size == 1:
        block = dataset[int(unique[0]) : int(unique[0]) + 1]
    elif unique[-1] - unique[0] + 1 == unique.size:  # a contiguous run: one hyperslab
        block = dataset[int(unique[0]) : int(unique[-1]) + 1]
    else:
        block = dataset[unique]
    return block[inverse.reshape(-1)]


def read_meta(path: str | Path) -> dict[str, Any]:
    """Metadata of a cache or partial build, without checking that it is complete."""
    path = Path(path)
    with _open_h5(path) as handle:
        return read_attrs(handle.attrs)


def open_cache(
    path: str | Path,
    *,
    expect: Mapping[str, Any] | None = None,
    verify: bool = False,
    check_embeddings: bool = True,
) -> TeacherCache:
    """Open a teacher cache after checking that it is complete, of this format, has every dataset
    at the recorded size, holds embeddings that match their stored checksums and are finite
    (``check_embeddings``; once per file and process), and (``expect``) was built from what the
    caller expects: keys such as ``teacher_fingerprint``, ``teacher_source`` (compared by the content
    of its files), ``dataset_fingerprint``, ``split``, ``image_size``, ``embed_dim``,
    ``teacher_view`` are compared with the metadata and every difference is reported.
    ``verify=True`` also re-hashes every dataset against the stored checksums (``cache verify``).
    Pixels and token ids are checked chunk by chunk (Fletcher-32) whenever they are read."""
    path = Path(path)
    with _open_h5(path) as handle:
        meta = read_attrs(handle.attrs)
        if meta.get("format") != FORMAT_NAME:
            raise CacheError(
                f"{path} is an HDF5 file but not a tinysiglip teacher cache (format attribute "
                f"{meta.get('format')!r}). Check the path."
            )
        version = meta.get("format_version")
        if isinstance(version, int) and version < FORMAT_VERSION:
            raise CacheError(
                f"teacher cache {path} has format version {version}, written by tinysiglip "
                f"{meta.get('tinysiglip_version', '?')}: it has no per-chunk checksums, no per-image hashes "
                "for the leakage check, and names its teacher by path rather than content, so it cannot "
                f"be trusted. Rebuild it (format {FORMAT_VERSION}): {rebuild_command(path, meta)}"
            )
        if version != FORMAT_VERSION:
            raise CacheError(
                f"teacher cache {path} has format version {version!r}; this tinysiglip "
                f"({meta.get('tinysiglip_version', '?')} wrote it) reads version {FORMAT_VERSION}. "
                "Rebuild it with this version of tinysiglip (delete it first)."
            )
        if not meta.get("complete"):
            done, total = meta.get("images_done", "?"), meta.get("num_images", "?")
            raise CacheError(
                f"teacher cache {path} is incomplete ({done} of {total} images done, complete flag not "
                f"set): {BUILD_HINT} to finish it."
            )
        try:
            shapes = expected_shapes(meta)
        except KeyError as error:
            raise CacheError(
                f"teacher cache {path}: metadata lacks {error}; delete it and rebuild it"
            ) from error
        problems = []
        for name, shape in shapes.items():
            if name not in handle:
                problems.append(f"dataset {name!r} is missing")
            elif tuple(handle[name].shape) != shape:
                problems.append(f"dataset {name!r} has shape {tuple(handle[name].shape)}, expected {shape}")
        if problems:
            raise damaged(path, meta, problems)
        if check_embeddings:
            verify_embeddings(path, handle, meta)
    if expect:
        differences = diff_meta(dict(expect), meta)
        if differences:
            raise CacheError(
                f"teacher cache {path} was built for something else than expected:\n  "
                + "\n  ".join(differences)
                + "\nBuild a cache for this teacher and dataset (another --out path), or point to the right one."
            )
    cache = TeacherCache(path, meta)
    if verify:
        try:
            cache.verify()
        finally:
            cache.close()
    return cache


# ----------------------------------------------------------------------------------------------
# torch Datasets


class _CacheDataset(Dataset):
    """Picklable base: remembers the path, opens its own handle in whichever process reads."""

    _mapped_names: tuple[str, ...] = ()

    def __init__(self, path: str | Path, *, rdcc_nbytes: int = DEFAULT_RDCC_NBYTES):
        self.cache = open_cache(path)
        self.cache.close()
        self.path = self.cache.path
        self.rdcc_nbytes = int(rdcc_nbytes)
        self._handle: h5py.File | None = None
        self._pid: int | None = None
        self._datasets: dict[str, h5py.Dataset] = {}
        with h5py.File(self.path, "r") as handle:
            try:
                self._mapped = {name: MappedRows.of(handle[name]) for name in self._mapped_names}
            except DamagedChunks as error:  # a damaged first or last row
                raise damaged_chunks(self.path, self.cache.meta, error.dataset, error.rows) from error

    @property
    def memory_mapped(self) -> dict[str, bool]:
        """Which datasets are read straight from the file's bytes (the others go through h5py)."""
        return {name: mapped is not None for name, mapped in self._mapped.items()}

    def _h5(self) -> h5py.File:
        if self._handle is None or self._pid != os.getpid():
            self._handle = _open_h5(self.path, rdcc_nbytes=self.rdcc_nbytes, rdcc_nslots=DEFAULT_RDCC_NSLOTS)
            self._pid = os.getpid()
            self._datasets = {}
        return self._handle

    def _rows(self, name: str, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows of a dataset (checked indices, any order), into ``out`` when given: from the memory
        map when there is one, else ``_read_rows`` with the h5py object (a lookup costs ~0.1 ms)
        kept per handle."""
        mapped = self._mapped.get(name)
        if mapped is not None:
            try:
                return mapped.take(rows, out)
            except DamagedChunks as error:
                raise damaged_chunks(self.path, self.cache.meta, name, error.rows) from error
        handle = self._h5()
        dataset = self._datasets.get(name)
        if dataset is None:
            dataset = self._datasets[name] = handle[name]
        try:
            block = _read_rows(dataset, rows)
        except OSError as error:
            raise unreadable(self.path, self.cache.meta, dataset, rows, error) from error
        if out is None:
            return block
        out[...] = block
        return out

    def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = None
        self._pid = None
        self._datasets = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_pid"] = None
        state["_datasets"] = {}
        return state

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:  # pragma: no cover
        raise NotImplementedError


def _check_index(index: np.ndarray, length: int) -> np.ndarray:
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    if index.size and (index.min() < -length or index.max() >= length):
        raise IndexError(f"index out of range for a dataset of length {length}")
    return np.where(index < 0, index + length, index)


def _mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a fixed, platform-independent hash of uint64 values."""
    z = values.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z


def draw_caption_offsets(seed: int, epoch: int, image_rows: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Which caption (0..count-1) each image gets in this epoch; a pure function of (seed, epoch, row)."""
    with np.errstate(over="ignore"):
        key = _mix64(np.array([seed], dtype=np.int64).astype(np.uint64))
        key = _mix64(key ^ np.array([epoch], dtype=np.int64).astype(np.uint64))
        h = _mix64(np.asarray(image_rows, dtype=np.int64).astype(np.uint64) ^ key)
    return (h % np.asarray(counts, dtype=np.uint64)).astype(np.int64)


_TRAIN_KEYS = (
    "pixels",
    "input_ids",
    "teacher_image_embed",
    "teacher_text_embed",
    "image_index",
    "caption_index",
)


class TrainPairs(_CacheDataset):
    """Item i = image row i with ONE of its captions, drawn from (seed, epoch, i). Items::

        {"pixels": uint8 (3, H, W), "input_ids": int64 (L,), "teacher_image_embed": float32 (D,),
         "teacher_text_embed": float32 (D,), "image_index": int64 (), "caption_index": int64 ()}

    ``pairs[(epoch, rows)]`` is the whole batch of those rows for that epoch, collated (the same keys
    with a leading batch dimension), read in one pass per dataset into buffers allocated where the
    batch goes (shared memory in a DataLoader worker, pinned memory when ``pin_memory`` is set).
    The epoch travels with the rows, so persistent workers draw the right captions
    (``tinysiglip.cache.loader``). ``pairs[i]`` and ``__getitems__`` use the epoch of ``set_epoch``.

    ``embeddings_in_memory=True`` loads both embedding tables once per process when they cannot be
    memory-mapped (a memory-mapped table already lives in the page cache, shared between processes).
    """

    _mapped_names = ("pixels", "token_ids", "image_embeds", "text_embeds")

    def __init__(
        self,
        path: str | Path,
        *,
        seed: int = 0,
        embeddings_in_memory: bool = False,
        rdcc_nbytes: int = DEFAULT_RDCC_NBYTES,
        pin_memory: bool = False,
    ):
        super().__init__(path, rdcc_nbytes=rdcc_nbytes)
        self.seed = int(seed)
        self.epoch = 0
        self.embeddings_in_memory = bool(embeddings_in_memory)
        self.pin_memory = bool(pin_memory)
        with h5py.File(self.path, "r") as handle:
            self.caption_offsets = handle["caption_offsets"][:].astype(np.int64)
        self.caption_counts = np.diff(self.caption_offsets)
        self._tables: dict[str, np.ndarray] = {}

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_tables"] = {}  # reloaded by the process that needs them
        return state

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.cache.num_images

    def caption_rows(self, image_rows: Sequence[int] | np.ndarray, epoch: int | None = None) -> np.ndarray:
        """The caption row drawn for each image row in ``epoch`` (default: the current epoch)."""
        rows = np.asarray(image_rows, dtype=np.int64)
        epoch = self.epoch if epoch is None else int(epoch)
        return self.caption_offsets[rows] + draw_caption_offsets(
            self.seed, epoch, rows, self.caption_counts[rows]
        )

    def _embedding_rows(self, name: str, rows: np.ndarray, out: np.ndarray) -> None:
        table = self._tables.get(name)
        if table is None and self.embeddings_in_memory and self._mapped.get(name) is None:
            dataset = self._h5()[name]
            try:
                table = self._tables[name] = dataset[:]
            except OSError as error:
                raise unreadable(self.path, self.cache.meta, dataset, None, error) from error
        out[...] = table[rows] if table is not None else self._rows(name, rows)

    def read_batch(
        self, image_rows: Sequence[int] | np.ndarray, epoch: int | None = None
    ) -> dict[str, torch.Tensor]:
        """The collated batch of ``image_rows`` (in that order) with their captions of ``epoch``."""
        image_rows = _check_index(np.asarray(image_rows), len(self))
        caption_rows = self.caption_rows(image_rows, epoch)
        n, size, dim = len(image_rows), self.cache.image_size, self.cache.embed_dim
        pin = self.pin_memory
        pixels = batch_buffer((n, 3, size, size), torch.uint8, pin_memory=pin)
        input_ids = batch_buffer((n, self.cache.max_length), torch.int64, pin_memory=pin)
        image_vectors = batch_buffer((n, dim), torch.float32, pin_memory=pin)
        text_vectors = batch_buffer((n, dim), torch.float32, pin_memory=pin)
        self._rows("pixels", image_rows, out=pixels.numpy())
        input_ids.numpy()[...] = self._rows("token_ids", caption_rows)
        self._embedding_rows("image_embeds", image_rows, image_vectors.numpy())
        self._embedding_rows("text_embeds", caption_rows, text_vectors.numpy())
        columns = (
            pixels,
            input_ids,
            image_vectors,
            text_vectors,
            torch.from_numpy(image_rows),
            torch.from_numpy(caption_rows),
        )
        return dict(zip(_TRAIN_KEYS, columns))

    def __getitem__(self, index):
        if isinstance(index, tuple):  # (epoch, rows) from tinysiglip.cache.loader.TrainBatches
            epoch, rows = index
            return self.read_batch(rows, epoch)
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        batch = self.read_batch(indices)
        columns = [batch[key].unbind(0) for key in _TRAIN_KEYS]
        return [dict(zip(_TRAIN_KEYS, item)) for item in zip(*columns)]


class CachedImages(_CacheDataset):
    """Every cached image once, in row order: ``{"pixels": uint8 (3, H, W), "image_index": int64 ()}``."""

    _mapped_names = ("pixels",)

    def __len__(self) -> int:
        return self.cache.num_images

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        rows = _check_index(np.asarray(indices), len(self))
        pixels = torch.from_numpy(self._rows("pixels", rows))
        index = torch.from_numpy(rows)
        return [{"pixels": p, "image_index": i} for p, i in zip(pixels.unbind(0), index.unbind(0))]


class CachedCaptions(_CacheDataset):
    """Every cached caption once, in row order:
    ``{"input_ids": int64 (L,), "caption_index": int64 (), "image_index": int64 ()}``."""

    _mapped_names = ("token_ids",)

    def __init__(self, path: str | Path, *, rdcc_nbytes: int = DEFAULT_RDCC_NBYTES):
        super().__init__(path, rdcc_nbytes=rdcc_nbytes)
        with h5py.File(self.path, "r") as handle:
            self.caption_image_index = handle["caption_image_index"][:].astype(np.int64)

    def __len__(self) -> int:
        return self.cache.num_captions

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        rows = _check_index(np.asarray(indices), len(self))
        input_ids = torch.from_numpy(self._rows("token_ids", rows).astype(np.int64))
        caption_index = torch.from_numpy(rows)
        image_index = torch.from_numpy(self.caption_image_index[rows])
        return [
            {"input_ids": t, "caption_index": c, "image_index": i}
            for t, c, i in zip(input_ids.unbind(0), caption_index.unbind(0), image_index.unbind(0))
        ]
