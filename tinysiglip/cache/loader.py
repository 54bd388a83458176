"""The training DataLoader: whole batches read at once, workers that live across epochs.

``TrainBatches`` shuffles image rows per epoch and yields ``(epoch, rows)`` per batch, so the
dataset (``TrainPairs``) reads each batch with one gather per dataset and no per-item collation,
and DataLoader workers, which keep their own copy of the dataset for the whole run
(``persistent_workers``), still draw the captions of the right epoch. A given (seed, epoch) yields
the batches the previous per-epoch ``DataLoader(shuffle=True, generator=seed * 1_000_003 + epoch)``
yielded, so runs keep their data order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

__all__ = ["TrainBatches", "TrainLoader", "batches_on_device", "epoch_order"]


def epoch_order(num_items: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled item order of one epoch: a pure function of (seed, epoch)."""
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    # The per-epoch DataLoader this replaces drew its worker seed from the generator first.
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    return torch.randperm(int(num_items), generator=generator)


class TrainBatches(Sampler):
    """Batches of shuffled item indices for the epoch set with ``set_epoch``, as ``(epoch, rows)``;
    the last incomplete batch is dropped."""

    def __init__(self, num_items: int, batch_size: int, *, seed: int = 0):
        if batch_size < 1 or num_items < batch_size:
            raise ValueError(f"batch_size {batch_size} must be between 1 and the {num_items} items")
        self.num_items = int(num_items)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_items // self.batch_size

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        order = epoch_order(self.num_items, self.seed, self.epoch).numpy()
        for k in range(len(self)):
            yield self.epoch, order[k * self.batch_size : (k + 1) * self.batch_size]


class TrainLoader:
    """One DataLoader for a whole run over ``TrainPairs``; ``epoch(e)`` iterates epoch ``e``.

    ``num_workers`` processes read batches ahead (``prefetch_factor`` each) and persist across
    epochs; with none, the training process reads each batch itself, straight into pinned memory
    when ``pin_memory``. Pixels stay uint8 until the device (the training loop normalises there).
    """

    def __init__(
        self,
        pairs: Any,
        batch_size: int,
        *,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        prefetch_factor: int = 2,
    ):
        self.pairs = pairs
        self.batches = TrainBatches(len(pairs), batch_size, seed=seed)
        pin_memory = bool(pin_memory and torch.cuda.is_available())
        pairs.pin_memory = pin_memory and num_workers == 0  # workers fill shared memory instead
        workers = int(num_workers)
        self.loader = DataLoader(
            pairs,
            batch_size=None,  # the sampler yields whole batches; the dataset collates them
            sampler=self.batches,
            num_workers=workers,
            pin_memory=pin_memory,
            persistent_workers=workers > 0,
            prefetch_factor=prefetch_factor if workers > 0 else None,
            # only seeds the workers (the order comes from the sampler); keeps the global RNG untouched
            generator=torch.Generator().manual_seed(int(seed)),
        )

    def __len__(self) -> int:
        return len(self.batches)

    def epoch(self, epoch: int) -> Iterable[dict[str, torch.Tensor]]:
        self.batches.set_epoch(epoch)
        return self.loader


def batches_on_device(batches: Iterable[dict[str, Any]], device: torch.device) -> Iterator[dict[str, Any]]:
    """Each batch with its tensors already on ``device``, the next batch's copy under way meanwhile.

    On CUDA the host-to-device copies of batch k+1 run on a side stream while the step on batch k
    computes, and every copy is asynchronous, so the training loop never waits on a copy (a blocking
    ``.to(device)`` would stall the host until the GPU drained its queue, so that reading the next
    batch could not overlap the step). Elsewhere the batches pass through unchanged.
    """
    device = torch.device(device)
    if device.type != "cuda":
        yield from batches
        return
    side = torch.cuda.Stream(device)
    ahead: tuple[dict[str, Any], torch.cuda.Event] | None = None
    for batch in batches:
        with torch.cuda.stream(side):
            moved = {
                key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
                for key, value in batch.items()
            }
            copied = torch.cuda.Event()
            copied.record(side)
        if ahead is not None:
            yield _settle(*ahead, device)
        ahead = (moved, copied)
    if ahead is not None:
        yield _settle(*ahead, device)


def _settle(batch: dict[str, Any], copied: torch.cuda.Event, device: torch.device) -> dict[str, Any]:
    """Make the compute stream wait for ``batch``'s copies, and keep its memory until it is done."""
    current = torch.cuda.current_stream(device)
    current.wait_event(copied)
    for value in batch.values():
        if isinstance(value, torch.Tensor):
            value.record_stream(current)  # allocated on the side stream, used on this one
    return batch
