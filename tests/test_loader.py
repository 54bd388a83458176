"""The training data path: memory-mapped reads equal h5py's, whole-batch reads, and TrainLoader
(persistent workers) yields the batches the per-epoch DataLoader yielded before it."""

from __future__ import annotations

import os
import shutil

import h5py
import numpy as np
import pytest
import torch

from tinysiglip.cache import CachedCaptions, CachedImages, TrainLoader, TrainPairs
from tinysiglip.cache.loader import epoch_order
from tinysiglip.cache.mapped import MappedRows

pytest.importorskip("transformers")

KEYS = ("pixels", "input_ids", "teacher_image_embed", "teacher_text_embed", "image_index", "caption_index")


@pytest.fixture(scope="module")
def train_cache(tiny_caches):
    return tiny_caches["train"]


def test_memory_maps_read_what_h5py_reads(train_cache):
    assert all(TrainPairs(train_cache).memory_mapped.values())
    assert CachedImages(train_cache).memory_mapped == {"pixels": True}
    assert CachedCaptions(train_cache).memory_mapped == {"token_ids": True}
    rows = np.array([5, 0, 95, 5, 41, 17])  # any order, repeats, both ends
    with h5py.File(train_cache, "r") as handle:
        for name in ("pixels", "token_ids", "image_embeds", "text_embeds"):
            dataset = handle[name]
            mapped = MappedRows.of(dataset)
            assert mapped is not None, name
            np.testing.assert_array_equal(mapped.take(rows), dataset[:][rows], err_msg=name)
            out = np.empty((len(rows), *dataset.shape[1:]), dtype=dataset.dtype)
            assert mapped.take(rows, out) is out


def test_compressed_pixels_fall_back_to_h5py_with_the_same_batches(train_cache, tmp_path):
    copy = tmp_path / "compressed.h5"
    shutil.copy(train_cache, copy)
    with h5py.File(copy, "r+") as handle:
        pixels = handle["pixels"][:]
        del handle["pixels"]
        handle.create_dataset("pixels", data=pixels, chunks=(1, *pixels.shape[1:]), compression="gzip")
    fallback, mapped = TrainPairs(copy), TrainPairs(train_cache)
    assert fallback.memory_mapped["pixels"] is False and fallback.memory_mapped["text_embeds"] is True
    rows = np.array([3, 3, 90, 0, 12])
    want, got = mapped.read_batch(rows, epoch=4), fallback.read_batch(rows, epoch=4)
    for key in KEYS:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)


def test_batch_reads_equal_item_reads(train_cache):
    pairs = TrainPairs(train_cache, seed=3)
    pairs.set_epoch(2)
    rows = [7, 2, 19, 2, 0]
    batch = pairs[(2, np.array(rows))]
    assert batch["pixels"].shape == (5, 3, 32, 32) and batch["pixels"].dtype == torch.uint8
    assert batch["input_ids"].dtype == torch.int64 and batch["teacher_text_embed"].dtype == torch.float32
    for k, row in enumerate(rows):
        item = pairs[row]
        for key in KEYS:
            torch.testing.assert_close(batch[key][k], item[key], rtol=0, atol=0)
    assert pairs.read_batch(rows, epoch=5)["caption_index"].tolist() == pairs.caption_rows(rows, 5).tolist()


def previous_epoch_batches(pairs: TrainPairs, batch_size: int, seed: int, epoch: int) -> list[dict]:
    """What run_training iterated before TrainLoader: a DataLoader built per epoch."""
    pairs.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(
        pairs,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch),
    )
    return list(loader)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_yields_the_previous_batches_in_every_epoch(train_cache, workers):
    seed, batch_size = 5, 16
    loader = TrainLoader(TrainPairs(train_cache, seed=seed), batch_size, seed=seed, num_workers=workers)
    reference = TrainPairs(train_cache, seed=seed)
    assert len(loader) == 96 // 16
    for epoch in (0, 1, 2, 1):  # workers keep their dataset copy: the epoch must travel with the rows
        got = list(loader.epoch(epoch))
        want = previous_epoch_batches(reference, batch_size, seed, epoch)
        assert len(got) == len(want) == 6
        for a, b in zip(got, want):
            for key in KEYS:
                torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert not torch.equal(epoch_order(96, seed, 0), epoch_order(96, seed, 1))


class PidPairs(TrainPairs):
    """TrainPairs that also says which process read the batch."""

    def read_batch(self, image_rows, epoch=None):
        batch = super().read_batch(image_rows, epoch)
        batch["pid"] = torch.full((len(batch["image_index"]),), os.getpid())
        return batch


def test_workers_persist_across_epochs(train_cache):
    loader = TrainLoader(PidPairs(train_cache), 16, num_workers=2)
    pids = [{int(b["pid"][0]) for b in loader.epoch(epoch)} for epoch in range(3)]
    assert pids[0] == pids[1] == pids[2] and os.getpid() not in pids[0] and len(pids[0]) == 2


def test_loader_refuses_a_batch_larger_than_the_cache(train_cache):
    with pytest.raises(ValueError, match="batch_size"):
        TrainLoader(TrainPairs(train_cache), 97)
