"""Rows of a cache dataset read straight from the file's bytes (``np.memmap``), bypassing HDF5.

``build_cache`` allocates every dataset when it creates the file: ``pixels`` as one unfiltered
chunk per image, the embeddings and token ids contiguous. Their rows are plain bytes at addresses
HDF5's chunk index gives once, so a batch is one copy per row from the page cache into its output
buffer: about the speed of a memory copy, where HDF5 spends ~0.1 ms per chunk in its own
bookkeeping. The page cache is shared by every process on a node, so several trials (and their
DataLoader workers) reading one cache hold it in memory once.

A layout is only trusted when HDF5's own chunk index says so (every chunk present, unfiltered,
full size) and the first and last rows read both ways are equal; anything else (a
compressed cache, a file written by another tool) is read through h5py as before.
"""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import torch

__all__ = ["MappedRows", "batch_buffer", "byte_layout"]


def _chunk_offsets(dataset: h5py.Dataset) -> np.ndarray | None:
    """File address of each one-row chunk, in row order (None when a chunk is missing or filtered)."""
    rows = dataset.shape[0]
    offsets = np.full(rows, -1, dtype=np.int64)
    row_bytes = math.prod(dataset.shape[1:]) * dataset.dtype.itemsize
    good = [True]

    def visit(info) -> None:
        if info.size != row_bytes or info.filter_mask != 0:
            good[0] = False
        offsets[info.chunk_offset[0]] = info.byte_offset

    try:
        dataset.id.chunk_iter(visit)  # one C loop (HDF5 >= 1.12.3 / 1.14)
    except (AttributeError, RuntimeError):
        for index in range(dataset.id.get_num_chunks()):
            visit(dataset.id.get_chunk_info(index))
    if not good[0] or (offsets < 0).any():
        return None
    return offsets


def byte_layout(dataset: h5py.Dataset) -> tuple[int, int] | np.ndarray | None:
    """Where the rows' plain bytes are in the file: ``(offset of row 0, bytes per row)`` for a
    contiguous dataset, the file offset of every row for one unfiltered chunk per row (HDF5
    interleaves its chunk index with the chunks, so they are not evenly spaced), None otherwise."""
    if dataset.dtype.kind not in "biuf" or dataset.ndim < 1 or dataset.shape[0] == 0:
        return None
    base = dataset.file.userblock_size or 0
    if dataset.chunks is None:
        offset = dataset.id.get_offset()
        row_bytes = math.prod(dataset.shape[1:]) * dataset.dtype.itemsize
        return None if offset is None else (base + int(offset), row_bytes)
    if tuple(dataset.chunks) != (1, *dataset.shape[1:]):
        return None
    if dataset.id.get_create_plist().get_nfilters() != 0:
        return None
    offsets = _chunk_offsets(dataset)
    return None if offsets is None else offsets + base


class MappedRows:
    """``rows -> array`` over a memory map of one dataset's bytes; picklable (each process maps the
    file itself, on first use)."""

    def __init__(self, path: str | Path, shape: tuple[int, ...], dtype, layout: tuple[int, int] | np.ndarray):
        self.path = str(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.row_bytes = math.prod(self.shape[1:]) * self.dtype.itemsize
        self.offset = int(layout[0]) if isinstance(layout, tuple) else None  # contiguous rows
        self.row_offsets = layout if isinstance(layout, np.ndarray) else None  # one chunk per row
        self._map: np.ndarray | None = None

    @classmethod
    def of(cls, dataset: h5py.Dataset) -> MappedRows | None:
        """A map of ``dataset`` when its bytes can be read directly and agree with h5py."""
        layout = byte_layout(dataset)
        if layout is None:
            return None
        mapped = cls(dataset.file.filename, dataset.shape, dataset.dtype, layout)
        ends = np.array([0, dataset.shape[0] - 1])
        if not np.array_equal(mapped.take(ends), dataset[ends]):
            return None
        return mapped

    def _mapped(self) -> np.ndarray:
        if self._map is None:
            if self.row_offsets is None:
                self._map = np.memmap(
                    self.path, dtype=self.dtype, mode="r", offset=self.offset, shape=self.shape
                )
            else:
                self._map = np.memmap(self.path, dtype=np.uint8, mode="r").view(np.ndarray)
        return self._map

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_map"] = None
        return state

    def take(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``array[rows]`` (any order, repeats allowed; rows already checked), into ``out`` when given."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.row_offsets is None:
            # mode="clip": with the default "raise" numpy copies twice through a buffer
            return np.take(self._mapped(), rows, axis=0, out=out, mode="clip")
        if out is None:
            out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        flat, source, size = out.reshape(len(rows), -1).view(np.uint8), self._mapped(), self.row_bytes
        for k, start in enumerate(self.row_offsets[rows].tolist()):
            flat[k] = source[start : start + size]
        return out


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
