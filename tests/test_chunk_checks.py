"""Fletcher-32 chunk checks on both read paths (issue 11 §4 with issue 12's memory-mapped reads).

The numpy checksum equals HDF5's (a line-by-line transcription of H5_checksum_fletcher32, and the
values HDF5 itself stored in real files: odd lengths, edge chunks, several dtypes); a flipped byte
is refused by h5py and by the memory-mapped reader alike, and both say which file, dataset and
rows, and what to do."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from tinysiglip.cache import CacheError, TrainPairs, open_cache
from tinysiglip.cache.fletcher import fletcher32, matches, stored_checksums
from tinysiglip.cache.mapped import DamagedChunks, MappedRows, damaged_rows


def hdf5_fletcher32(data: bytes) -> int:
    """H5_checksum_fletcher32 (H5checksum.c), transcribed loop for loop."""
    words, sum1, sum2, i = len(data) // 2, 0, 0, 0
    while words:
        block = min(words, 360)
        words -= block
        for _ in range(block):
            sum1 += (data[i] << 8) | data[i + 1]
            i += 2
            sum2 += sum1
        sum1 = (sum1 & 0xFFFF) + (sum1 >> 16)
        sum2 = (sum2 & 0xFFFF) + (sum2 >> 16)
    if len(data) % 2:
        sum1 += data[i] << 8
        sum2 += sum1
        sum1 = (sum1 & 0xFFFF) + (sum1 >> 16)
        sum2 = (sum2 & 0xFFFF) + (sum2 >> 16)
    sum1 = (sum1 & 0xFFFF) + (sum1 >> 16)
    sum2 = (sum2 & 0xFFFF) + (sum2 >> 16)
    return (sum2 << 16) | sum1


@pytest.mark.parametrize("num_bytes", [1, 2, 3, 7, 512, 1023, 16_384, 65_537, 3 * 64 * 64, 263_170])
def test_numpy_checksum_equals_hdf5s_loop(num_bytes):
    rng = np.random.default_rng(num_bytes)
    chunks = np.concatenate(
        [
            rng.integers(0, 256, (3, num_bytes), dtype=np.uint8),
            np.zeros((1, num_bytes), np.uint8),  # sums stay 0
            np.full((1, num_bytes), 255, np.uint8),  # every word 0xFFFF: sums are multiples of 65535
        ]
    )
    assert fletcher32(chunks).tolist() == [hdf5_fletcher32(bytes(c)) for c in chunks]


def test_numpy_checksum_of_a_chunk_too_large_for_int64_products():
    """A 48 MB chunk of mostly 0xFF bytes (25M words: sum2 itself > 2**63), against running sums."""
    rng = np.random.default_rng(7)
    chunk = np.full((1, 50_331_650), 255, dtype=np.uint8)
    chunk[0, rng.integers(0, chunk.size, 1000)] = rng.integers(0, 256, 1000, dtype=np.uint8)
    words = chunk[0].view(">u2").astype(np.uint64)
    running = np.cumsum(words)  # sum1 after each word, exact (< 2**40)
    sum1 = int(running[-1]) % 65535 or 65535
    sum2 = int((running % 65535).sum()) % 65535 or 65535
    assert fletcher32(chunk)[0] == (sum2 << 16) | sum1


def _write(path: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "pixels": rng.integers(0, 256, (5, 3, 8, 8), dtype=np.uint8),  # one image per chunk
        "token_ids": rng.integers(0, 256_000, (10, 7), dtype=np.int32),  # 4 rows per chunk, edge chunk
        "odd": rng.integers(0, 256, (7, 5), dtype=np.uint8),  # 15-byte chunks: an odd last byte
        "embeds": rng.standard_normal((9, 6)).astype(np.float16),
    }
    chunks = {"pixels": (1, 3, 8, 8), "token_ids": (4, 7), "odd": (3, 5), "embeds": (4, 6)}
    with h5py.File(path, "w") as handle:
        for name, data in arrays.items():
            handle.create_dataset(name, data=data, chunks=chunks[name], fletcher32=True)
    return arrays


def _chunks(path: Path, name: str) -> list:
    with h5py.File(path, "r") as handle:
        found = []
        handle[name].id.chunk_iter(found.append)
    return found


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as raw:
        raw.seek(offset)
        byte = raw.read(1)[0]
        raw.seek(offset)
        raw.write(bytes([byte ^ 0x01]))


def test_numpy_checksum_equals_what_hdf5_stored(tmp_path):
    path = tmp_path / "f.h5"
    _write(path)
    blob = np.fromfile(path, dtype=np.uint8)
    for name in ("pixels", "token_ids", "odd", "embeds"):
        for info in _chunks(path, name):
            raw = blob[info.byte_offset : info.byte_offset + info.size]
            assert fletcher32(raw[None, :-4])[0] == stored_checksums(raw[-4:])[0], (name, info.chunk_offset)


@pytest.mark.parametrize("name", ["pixels", "token_ids", "odd", "embeds"])
def test_a_flipped_byte_is_refused_by_h5py_and_by_the_map(tmp_path, name):
    path = tmp_path / "f.h5"
    arrays = _write(path)
    with h5py.File(path, "r") as handle:
        mapped = MappedRows.of(handle[name])
        per_chunk = handle[name].chunks[0]
    assert mapped is not None and mapped.checked
    np.testing.assert_array_equal(mapped.take(np.arange(len(arrays[name]))), arrays[name])

    second = _chunks(path, name)[1]  # rows per_chunk .. 2 * per_chunk - 1
    _flip(path, second.byte_offset + 5)
    damaged = list(range(per_chunk, min(2 * per_chunk, len(arrays[name]))))
    with h5py.File(path, "r") as handle:
        with pytest.raises(OSError):
            handle[name][per_chunk]
        assert damaged_rows(handle[name]) == damaged
        assert damaged_rows(handle[name], [0, per_chunk, per_chunk]) == [per_chunk]
        np.testing.assert_array_equal(handle[name][0], arrays[name][0])
    mapped = MappedRows.of(h5py.File(path, "r")[name])  # rows 0 and the last are intact
    with pytest.raises(DamagedChunks, match=rf"dataset '{name}', row\(s\) {per_chunk}\b") as error:
        mapped.take(np.array([0, per_chunk]))
    assert error.value.rows == [per_chunk] and str(path) in str(error.value)
    assert "tinysiglip cache verify" in str(error.value)
    np.testing.assert_array_equal(mapped.take(np.array([0])), arrays[name][:1])


def test_a_flipped_checksum_byte_is_refused_and_the_pre_163_order_accepted(tmp_path):
    """The 4 stored bytes are part of the check: a flip there fails too; the byte order HDF5 < 1.6.3
    wrote (the two bytes of each 16-bit half swapped) passes in HDF5 and here."""
    path = tmp_path / "f.h5"
    arrays = _write(path)
    first, second = _chunks(path, "pixels")[:2]
    blob = np.fromfile(path, dtype=np.uint8)
    tail = blob[first.byte_offset + first.size - 4 : first.byte_offset + first.size]
    with open(path, "r+b") as raw:  # chunk 0: the old byte order
        raw.seek(first.byte_offset + first.size - 4)
        raw.write(bytes(tail[[1, 0, 3, 2]]))
    _flip(path, second.byte_offset + second.size - 1)  # chunk 1: a damaged checksum
    with h5py.File(path, "r") as handle:
        np.testing.assert_array_equal(handle["pixels"][0], arrays["pixels"][0])
        with pytest.raises(OSError):
            handle["pixels"][1]
        mapped = MappedRows.of(handle["pixels"])
    np.testing.assert_array_equal(mapped.take(np.array([0, 2])), arrays["pixels"][[0, 2]])
    with pytest.raises(DamagedChunks):
        mapped.take(np.array([1]))
    computed = fletcher32(arrays["pixels"][:1].reshape(1, -1))
    assert matches(computed, stored_checksums(tail[[1, 0, 3, 2]])).all()


@pytest.fixture()
def damaged_copy(tiny_caches, tmp_path):
    """A copy of the tiny train cache with a flipped byte in pixel row 7 and one in the second chunk
    of token ids; returns (path, first row of that chunk, rows per chunk)."""
    path = tmp_path / "train.h5"
    shutil.copy(tiny_caches["train"], path)
    with h5py.File(path, "r") as handle:
        pixel_chunk = handle["pixels"].id.get_chunk_info_by_coord((7, 0, 0, 0))
        token_rows = handle["token_ids"].chunks[0]
        assert handle["token_ids"].shape[0] > 2 * token_rows  # the last chunk stays intact
        token_chunk = handle["token_ids"].id.get_chunk_info_by_coord((token_rows, 0))
    _flip(path, pixel_chunk.byte_offset + 100)
    _flip(path, token_chunk.byte_offset + 3)
    return path, token_rows


@pytest.mark.parametrize("mapped", [True, False], ids=["memory-mapped", "h5py"])
def test_training_reads_refuse_damaged_chunks_on_both_paths(damaged_copy, mapped):
    path, token_rows = damaged_copy
    pairs = TrainPairs(path)
    assert pairs.memory_mapped["pixels"] and pairs.memory_mapped["token_ids"]
    if not mapped:
        pairs._mapped = {name: None for name in pairs._mapped}
    pairs.read_batch([6, 8], epoch=0)  # intact chunks read fine
    with pytest.raises(CacheError) as error:
        pairs.read_batch([6, 7, 8], epoch=0)
    message = str(error.value)
    assert str(path) in message and "dataset 'pixels', row(s) 7:" in message and "Fletcher-32" in message
    assert f"tinysiglip cache verify {path}" in message and "Rebuild it: rm " in message
    image = int(np.searchsorted(pairs.caption_offsets, token_rows + 1, side="right")) - 1
    caption = int(pairs.caption_rows([image], 0)[0])
    assert token_rows <= caption < 2 * token_rows  # its caption sits in the damaged chunk
    with pytest.raises(CacheError, match=rf"dataset 'token_ids', row\(s\) {caption}:"):
        pairs.read_batch([image], epoch=0)


def test_whole_table_reads_name_the_damaged_rows(damaged_copy):
    path, token_rows = damaged_copy
    cache = open_cache(path)
    first = ", ".join(str(token_rows + k) for k in range(3))
    with pytest.raises(CacheError, match=rf"dataset 'token_ids', row\(s\) {first}") as error:
        cache.token_ids()
    assert token_rows <= 10 or f"({token_rows} rows)" in str(error.value)  # every row of the chunk
    with pytest.raises(CacheError, match=r"dataset 'pixels', row\(s\) 7:"):
        cache.pixels([3, 7])
    np.testing.assert_array_equal(cache.pixels([3]), TrainPairs(path).read_batch([3])["pixels"].numpy())
    with pytest.raises(CacheError, match=r"pixels: row\(s\) \[7\] fail\(s\) the Fletcher-32"):
        open_cache(path, verify=True)


def test_images_are_checked_on_every_read_and_row_tables_once_per_process(tmp_path, monkeypatch):
    import tinysiglip.cache.mapped as mapped_module

    path = tmp_path / "f.h5"
    arrays = _write(path)
    checked_bytes = []

    def counting(chunks):
        checked_bytes.append(chunks.size)
        return fletcher32(chunks)

    monkeypatch.setattr(mapped_module, "fletcher32", counting)
    with h5py.File(path, "r") as handle:
        pixels, tokens = MappedRows.of(handle["pixels"]), MappedRows.of(handle["token_ids"])
    checked_bytes.clear()
    for _ in range(2):
        np.testing.assert_array_equal(pixels.take(np.array([1, 3])), arrays["pixels"][[1, 3]])
    assert checked_bytes == [2 * 3 * 8 * 8] * 2  # the two images, each time
    checked_bytes.clear()
    assert tokens._verified is not None and tokens._verified.tolist() == [True, False, True]
    # (MappedRows.of read rows 0 and 9: chunks 0 and 2 are checked)
    for _ in range(2):
        np.testing.assert_array_equal(tokens.take(np.array([1, 5, 9, 6])), arrays["token_ids"][[1, 5, 9, 6]])
    assert checked_bytes == [4 * 7 * 4]  # chunk 1 (rows 4-7, whole) when first used, then no more
    assert pickle.loads(pickle.dumps(tokens))._verified is None  # another process checks for itself
