"""HDF5's Fletcher-32 chunk checksum, computed for many chunks at once in numpy.

The cache stores ``pixels``, ``token_ids`` and the embeddings with HDF5's Fletcher-32 filter
(issue 11 §4). ``mapped.py`` reads their chunks straight from the file's bytes, bypassing HDF5, so
it checks them itself, exactly as HDF5 would (``H5_checksum_fletcher32`` in H5checksum.c, the
filter in H5Zfletcher32.c):

* the chunk is summed as big-endian 16-bit words; an odd last byte is the high byte of a last word;
* ``sum1 = sum(w)`` and ``sum2 = sum of the running sum1``, both reduced modulo 65535 with an
  end-around carry, so a sum is 0 only for all-zero data and 1..65535 otherwise;
* the checksum ``sum2 << 16 | sum1`` follows the chunk's data as 4 little-endian bytes. HDF5 also
  accepts the value with the two bytes of each 16-bit half swapped (what HDF5 < 1.6.3 wrote on
  little-endian machines), and so does ``matches``.

In closed form, for n words w_0..w_{n-1}: ``sum1 = S1 = sum(w_j)`` and
``sum2 = S2 = sum((n - j) w_j) = n S1 - sum(j w_j)``, taken modulo 65535. The words are laid out as an (R, q) matrix,
q a multiple of 256 and R <= 256 rows, so that every partial sum of the matrix-vector products below
(rows in pieces of 256 words, columns of at most 256 rows) is an integer below 256 * 65535 < 2**24:
float32 BLAS computes them exactly in any order, at about the speed of a memory copy; then
``sum(j w_j) = q sum_b b rowsum_b + sum_k k colsum_k`` in int64.
"""

from __future__ import annotations

import numpy as np

__all__ = ["fletcher32", "matches", "stored_checksums"]

_PIECE = 256  # words per exact float32 partial sum (256 * 65535 < 2**24)
_GROUP_BYTES = 1 << 20  # chunks converted to float32 at a time: about what a core's L2 cache holds


def _shape(num_bytes: int) -> tuple[int, int, int]:
    """(words, words per matrix row q, rows R) for a chunk of ``num_bytes``."""
    words = (num_bytes + 1) // 2
    q = _PIECE * max(1, -(-words // (_PIECE * _PIECE)))
    return words, q, max(1, -(-words // q))


def _fold(residue: np.ndarray, nonzero: np.ndarray) -> np.ndarray:
    """A sum reduced as HDF5 reduces it (0 only when the sum is 0, else 1..65535), from the sum's
    residue modulo 65535 and whether the sum is nonzero."""
    return np.where(nonzero, np.where(residue == 0, 65535, residue), 0)


def fletcher32(chunks: np.ndarray) -> np.ndarray:
    """Fletcher-32 checksums of equal-sized chunks: (K, L) uint8 -> (K,) uint32, as HDF5 computes them."""
    chunks = np.asarray(chunks)
    if chunks.dtype != np.uint8 or chunks.ndim != 2:
        raise TypeError(
            f"fletcher32 expects a (chunks, bytes) uint8 array, got {chunks.dtype} {chunks.shape}"
        )
    count, num_bytes = chunks.shape
    words, q, rows = _shape(num_bytes)
    even = num_bytes - num_bytes % 2
    group = max(1, min(count, _GROUP_BYTES // max(1, 4 * rows * q)))
    # Zeros beyond the data add nothing to S1 or sum(j w_j); n below is the true word count.
    matrix = np.zeros((group, rows * q), dtype=np.float32)
    ones_piece = np.ones(_PIECE, dtype=np.float32)
    ones_rows = np.ones((1, rows), dtype=np.float32)
    row_weights = np.arange(rows, dtype=np.int64) * q
    column_weights = np.arange(q, dtype=np.int64)
    big_endian_words = chunks[:, :even].view(">u2")
    s1 = np.empty(count, dtype=np.int64)
    weighted = np.empty(count, dtype=np.int64)  # sum(j w_j) modulo 65535
    for start in range(0, count, group):
        g = min(group, count - start)
        block = matrix[:g]
        block[:, : even // 2] = big_endian_words[start : start + g]
        if num_bytes % 2:
            block[:, words - 1] = chunks[start : start + g, -1].astype(np.float32) * 256
        row_sums = (block.reshape(g, -1, _PIECE) @ ones_piece).astype(np.int64).reshape(g, rows, -1).sum(2)
        column_sums = np.matmul(ones_rows, block.reshape(g, rows, q)).astype(np.int64).reshape(g, q)
        s1[start : start + g] = row_sums.sum(1)
        # residues before the products: int64 holds them for any chunk size HDF5 allows (< 4 GB)
        weighted[start : start + g] = (
            (row_sums % 65535) @ (row_weights % 65535) + (column_sums % 65535) @ column_weights
        ) % 65535
    s2 = ((words % 65535) * (s1 % 65535) - weighted) % 65535
    nonzero = s1 != 0  # both sums are 0 exactly when every word is
    return ((_fold(s2, nonzero) << 16) | _fold(s1 % 65535, nonzero)).astype(np.uint32)


def stored_checksums(tails: np.ndarray) -> np.ndarray:
    """The checksums HDF5 stored after each chunk's data: (K, 4) uint8 -> (K,) uint32 (little-endian)."""
    return (
        np.ascontiguousarray(tails, dtype=np.uint8).reshape(-1, 4).view("<u4").reshape(-1).astype(np.uint32)
    )


def matches(computed: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """Per chunk: does the stored checksum match, in HDF5's byte order or its pre-1.6.3 one?"""
    computed = np.asarray(computed, dtype=np.uint32)
    swapped = ((computed & np.uint32(0x00FF00FF)) << np.uint32(8)) | (
        (computed >> np.uint32(8)) & np.uint32(0x00FF00FF)
    )
    return (stored == computed) | (stored == swapped)
