"""Rows of a cache dataset read straight from the file's bytes (``np.memmap``), bypassing HDF5, with
every chunk's Fletcher-32 checksum verified as HDF5 would before its rows are used.

``build_cache`` allocates every dataset when it creates the file: ``pixels`` one image per chunk,
token ids and embeddings in chunks of ~16 kB of rows, each chunk followed by the 4-byte Fletcher-32
checksum HDF5's filter appends (format 2). A chunk is plain bytes at an address HDF5's chunk index
gives once, so a batch is one copy per row from the page cache into its output buffer plus a
vectorised checksum (``fletcher.py``), where h5py spends ~0.1 ms of bookkeeping per chunk besides
its own checksum. The page cache is shared by every process on a node, so several trials (and their
DataLoader workers) reading one cache hold it in memory once.

When checks happen (bench/RESULTS.md has the figures): a one-row chunk (an image) on every read,
computed over the copied rows themselves, so a check costs one checksum of the bytes used; a chunk of
several rows (token ids, embeddings) once per process before its first rows are used, because at
COCO's size a batch's 256 rows sit in 256 different 16 kB chunks and checking them on every read
would checksum 8-64x the bytes used. A chunk whose bytes fail raises ``DamagedChunks`` (a
``CacheError`` naming the file, the dataset and the rows) and none of its rows is returned.

A layout is only trusted when HDF5's own chunk index says so (every chunk present, row chunks, no
filter or Fletcher-32 alone, each stored at its full size) and the first and last rows read both
ways are equal; anything else (a compressed cache, a file written by another tool) is read through
h5py.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import h5py
import numpy as np
import torch

from tinysiglip.cache.fletcher import fletcher32, matches, stored_checksums
from tinysiglip.cache.format import CacheError

__all__ = ["DamagedChunks", "MappedRows", "batch_buffer", "damaged_rows"]

CHECKSUM_BYTES = 4  # what HDF5's Fletcher-32 filter appends to each chunk


class DamagedChunks(CacheError):
    """Rows of a dataset whose stored chunks fail their Fletcher-32 checksum."""

    def __init__(self, path: str | Path, dataset: str, rows: list[int]):
        self.path, self.dataset, self.rows = Path(path), dataset, sorted(set(int(r) for r in rows))
        shown = ", ".join(str(r) for r in self.rows[:10]) + (" ..." if len(self.rows) > 10 else "")
        super().__init__(
            f"teacher cache {self.path}: dataset {dataset!r}, row(s) {shown}: the stored chunk fails its "
            "Fletcher-32 checksum (its bytes changed since they were written). Check the whole file with "
            f"`tinysiglip cache verify {self.path}` and rebuild it."
        )


def _filters(dataset: h5py.Dataset) -> list[int]:
    plist = dataset.id.get_create_plist()
    return [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]


def _chunk_offsets(dataset: h5py.Dataset, stored_bytes: int) -> np.ndarray | None:
    """File address of each row chunk, in row order (None when a chunk is missing, skipped a
    filter or is stored at another size)."""
    count = -(-dataset.shape[0] // dataset.chunks[0])
    offsets = np.full(count, -1, dtype=np.int64)
    good = [True]

    def visit(info) -> None:
        if info.size != stored_bytes or info.filter_mask != 0:
            good[0] = False
        offsets[info.chunk_offset[0] // dataset.chunks[0]] = info.byte_offset

    try:
        dataset.id.chunk_iter(visit)  # one C loop (HDF5 >= 1.12.3 / 1.14)
    except (AttributeError, RuntimeError):
        for index in range(dataset.id.get_num_chunks()):
            visit(dataset.id.get_chunk_info(index))
    if not good[0] or (offsets < 0).any():
        return None
    return offsets


class MappedRows:
    """``rows -> array`` over a memory map of one dataset's bytes; picklable (each process maps the
    file itself, on first use). ``MappedRows.of(dataset)`` decides whether the layout allows it."""

    def __init__(
        self,
        path: str | Path,
        name: str,
        shape: tuple[int, ...],
        dtype,
        *,
        offset: int | None = None,
        chunk_rows: int = 1,
        chunk_offsets: np.ndarray | None = None,
        checked: bool = False,
    ):
        self.path = str(path)
        self.name = name
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.row_bytes = math.prod(self.shape[1:]) * self.dtype.itemsize
        self.offset = offset  # contiguous rows from there, or None for chunks
        self.chunk_rows = int(chunk_rows)
        self.chunk_offsets = chunk_offsets
        self.chunk_bytes = self.chunk_rows * self.row_bytes  # data only, without the checksum
        self.checked = bool(checked)
        self._map: np.ndarray | None = None
        self._verified: np.ndarray | None = None  # chunks of several rows checked in this process
        self._verified_pid: int | None = None

    @classmethod
    def of(cls, dataset: h5py.Dataset) -> MappedRows | None:
        """A map of ``dataset`` when its bytes can be read directly and agree with h5py's reads."""
        if dataset.dtype.kind not in "biuf" or dataset.ndim < 1 or dataset.shape[0] == 0:
            return None
        base = dataset.file.userblock_size or 0
        path, name, shape = dataset.file.filename, dataset.name.lstrip("/"), dataset.shape
        if dataset.chunks is None:
            offset = dataset.id.get_offset()
            if offset is None:
                return None
            mapped = cls(path, name, shape, dataset.dtype, offset=base + int(offset))
        else:
            if tuple(dataset.chunks[1:]) != tuple(shape[1:]):
                return None
            filters = _filters(dataset)
            if filters not in ([], [h5py.h5z.FILTER_FLETCHER32]):
                return None
            checked = bool(filters)
            chunk_rows = int(dataset.chunks[0])
            stored = chunk_rows * math.prod(shape[1:]) * dataset.dtype.itemsize + CHECKSUM_BYTES * checked
            offsets = _chunk_offsets(dataset, stored)
            if offsets is None:
                return None
            mapped = cls(
                path,
                name,
                shape,
                dataset.dtype,
                chunk_rows=chunk_rows,
                chunk_offsets=offsets + base,
                checked=checked,
            )
        ends = np.array([0, shape[0] - 1])
        try:
            through_h5py = dataset[ends]
        except OSError:  # a damaged end chunk: DamagedChunks names it when the map sees it too
            mapped.take(ends)
            return None
        return mapped if np.array_equal(mapped.take(ends), through_h5py) else None

    def _mapped(self) -> np.ndarray:
        if self._map is None:
            if self.offset is not None:
                self._map = np.memmap(
                    self.path, dtype=self.dtype, mode="r", offset=self.offset, shape=self.shape
                )
            else:
                self._map = np.memmap(self.path, dtype=np.uint8, mode="r").view(np.ndarray)
        return self._map

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_map"] = None
        state["_verified"] = state["_verified_pid"] = None
        return state

    def take(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``array[rows]`` (any order, repeats allowed; rows already checked), into ``out`` when given.
        Raises ``DamagedChunks``, returning nothing, when a chunk holding one of the rows fails its
        checksum. One-row chunks (pixels) are checked on every read, from the copies themselves;
        chunks of several rows (token ids, embeddings) once per process before their first use,
        since checking them on every read would checksum the whole chunk for each row it gives."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if self.offset is not None:
            # mode="clip": with the default "raise" numpy copies twice through a buffer
            return np.take(self._mapped(), rows, axis=0, out=out, mode="clip")
        if out is None:
            out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        if len(rows) == 0:
            return out
        chunks = rows // self.chunk_rows
        if self.checked and self.chunk_rows > 1:
            self._verify_once(chunks, rows)
        starts = self.chunk_offsets[chunks] + (rows % self.chunk_rows) * self.row_bytes
        flat, source, size = out.reshape(len(rows), -1).view(np.uint8), self._mapped(), self.row_bytes
        for k, start in enumerate(starts.tolist()):
            flat[k] = source[start : start + size]
        if self.checked and self.chunk_rows == 1:
            tails = source[(starts + size)[:, None] + np.arange(CHECKSUM_BYTES)]
            self._raise_unless_intact(flat, tails, chunks, rows)
        return out

    def _verify_once(self, chunks: np.ndarray, rows: np.ndarray) -> None:
        """Check the chunks among ``chunks`` not yet checked in this process, and remember them."""
        if self._verified_pid != os.getpid():
            self._verified = np.zeros(len(self.chunk_offsets), dtype=bool)
            self._verified_pid = os.getpid()
        todo = np.unique(chunks[~self._verified[chunks]])
        if len(todo) == 0:
            return
        source, size = self._mapped(), self.chunk_bytes + CHECKSUM_BYTES
        gathered = np.empty((len(todo), size), dtype=np.uint8)
        for k, start in enumerate(self.chunk_offsets[todo].tolist()):
            gathered[k] = source[start : start + size]
        self._raise_unless_intact(
            gathered[:, : self.chunk_bytes], gathered[:, self.chunk_bytes :], todo, rows
        )
        self._verified[todo] = True

    def _raise_unless_intact(self, data: np.ndarray, tails: np.ndarray, chunks: np.ndarray, rows) -> None:
        good = matches(fletcher32(data), stored_checksums(tails))
        if not good.all():
            bad = set(chunks[~good].tolist())
            raise DamagedChunks(
                self.path, self.name, [r for r in rows.tolist() if r // self.chunk_rows in bad]
            )


def damaged_rows(dataset: h5py.Dataset, rows: np.ndarray | None = None) -> list[int]:
    """Which of ``rows`` (default: all) sit in chunks that fail their Fletcher-32 checksum, found by
    reading the stored chunks themselves (``read_direct_chunk``): names what h5py's bare
    ``OSError`` does not. Empty for a dataset without the filter."""
    if dataset.chunks is None or h5py.h5z.FILTER_FLETCHER32 not in _filters(dataset):
        return []
    per_chunk = int(dataset.chunks[0])
    wanted = np.arange(dataset.shape[0]) if rows is None else np.unique(np.asarray(rows, dtype=np.int64))
    data_bytes = math.prod(dataset.chunks) * dataset.dtype.itemsize
    bad = []
    for first in np.unique(wanted // per_chunk * per_chunk).tolist():
        try:
            _, raw = dataset.id.read_direct_chunk((first,) + (0,) * (dataset.ndim - 1))
        except (OSError, KeyError, ValueError):  # the chunk cannot even be located
            bad.append(first)
            continue
        chunk = np.frombuffer(raw, dtype=np.uint8)
        if (
            len(chunk) != data_bytes + CHECKSUM_BYTES
            or not matches(fletcher32(chunk[None, :data_bytes]), stored_checksums(chunk[data_bytes:])).all()
        ):
            bad.append(first)
    bad_chunks = {b // per_chunk for b in bad}
    return [int(r) for r in wanted.tolist() if r // per_chunk in bad_chunks]


def batch_buffer(shape: tuple[int, ...], dtype: torch.dtype, *, pin_memory: bool = False) -> torch.Tensor:
    """An uninitialised tensor for a batch, allocated where it is going: in shared memory inside a
    DataLoader worker (sent to the main process without a copy, as default_collate does), in pinned
    memory (reused by torch's caching host allocator) when the batch goes to a GPU next, else by numpy."""
    if torch.utils.data.get_worker_info() is not None:
        template = torch.empty(0, dtype=dtype)
        storage = template._typed_storage()._new_shared(math.prod(shape), device=template.device)
        return template.new(storage).view(shape)
    if pin_memory and torch.cuda.is_available():
        return torch.empty(shape, dtype=dtype, pin_memory=True)
    # numpy asks the kernel for huge pages for large arrays: a fresh 50 MB batch is filled ~2x faster
    return torch.from_numpy(np.empty(shape, dtype=torch.empty(0, dtype=dtype).numpy().dtype))
