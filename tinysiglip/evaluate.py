"""Image-text retrieval Recall@K by the convention of published COCO numbers (and CLIP_benchmark).

* image→text (I2T) R@K: fraction of images for which ANY of their captions ranks in the top K texts;
* text→image (T2I) R@K: fraction of captions whose image ranks in the top K images.

``retrieval_ranks`` gives the rank of every query (how many candidates score strictly higher than
its best positive, so ties are resolved in favour of the positive, as a stable top-k that lists
positives first); ``retrieval_metrics`` is computed from them. Both need ONE similarity matrix,
computed block by block and never held whole:

* captions are grouped by image and cut into blocks of whole images (about ``chunk_size`` captions,
  at most 1024);
* a first pass computes only each block's "diagonal" tile (its captions x its own images: ~4% of
  the matrix at COCO 5k) to get every positive score: the caption's own image, and each image's
  best caption;
* the main pass computes each block's row of tiles once and counts, with two comparisons, the
  images above each caption's positive (T2I, along rows) and the captions above each image's best
  positive (I2T, along columns).

The diagonal tile is computed by the same call in both passes, so the positives are the very values
the candidates are compared with (GEMM results are deterministic for the same call on the same
inputs; the main pass checks it). Peak memory is one block plus the normalised image embeddings
(captions are converted and normalised a block at a time). The work
runs on the device of the embeddings (CUDA tensors stay on the GPU), in float32 without TF32.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["METRIC_KEYS", "format_metrics", "recall_at_k", "retrieval_metrics", "retrieval_ranks"]

logger = logging.getLogger(__name__)

METRIC_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")
# Blocks of at most 1024 captions and 2^24 similarities (64 MB of float32): 1024 x 5,000 at COCO 5k,
# 335 x 50,000 at 10x. Small enough that the diagonal pre-pass stays a few % of the work.
BLOCK_CAPTIONS = 1024
BLOCK_ELEMENTS = 1 << 24


def _as_tensor(values: np.ndarray | torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.detach().to(device, dtype)
    return torch.from_numpy(np.asarray(values)).to(device, dtype)


@contextlib.contextmanager
def _full_float32(device: torch.device) -> Iterator[None]:
    """No TF32 in the similarity products, whatever the training code set globally."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def _image_blocks(offsets: torch.Tensor, captions_per_block: int) -> list[tuple[int, int]]:
    """[first image, end image) of consecutive blocks of whole images, about ``captions_per_block``
    captions each (one image with more captions than that is a block of its own)."""
    bounds = offsets.cpu().numpy()
    num_images = len(bounds) - 1
    blocks, start = [], 0
    while start < num_images:
        end = int(np.searchsorted(bounds, bounds[start] + captions_per_block, side="right")) - 1
        end = min(max(end, start + 1), num_images)
        blocks.append((start, end))
        start = end
    return blocks


class _Tiles:
    """Similarity tiles of one block of captions against a range of images, and counts over them,
    in buffers reused from block to block (a fresh 64 MB tile per block costs page faults)."""

    def __init__(self, elements: int, device: torch.device):
        self.scores = torch.empty(elements, device=device)
        self.mask = np.empty(elements, dtype=bool) if device.type == "cpu" else None

    def product(self, texts: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        out = self.scores[: texts.shape[0] * images.shape[0]].view(texts.shape[0], images.shape[0])
        return torch.mm(texts, images.T, out=out)

    def count_above(self, scores: torch.Tensor, thresholds: torch.Tensor, dim: int) -> torch.Tensor:
        """How many ``scores > thresholds`` (broadcast) along ``dim``, as int32. On the CPU through
        numpy views: its comparison and bool sum are 2-5x faster than torch's one-thread kernels."""
        if self.mask is None:
            return (scores > thresholds).sum(dim=dim, dtype=torch.int32)
        mask = self.mask[: scores.numel()].reshape(scores.shape)
        np.greater(scores.numpy(), thresholds.numpy(), out=mask)
        return torch.from_numpy(mask.sum(axis=dim, dtype=np.int32))


@torch.no_grad()
def retrieval_ranks(
    image_embeds: np.ndarray | torch.Tensor,
    text_embeds: np.ndarray | torch.Tensor,
    caption_image_index: np.ndarray | torch.Tensor,
    *,
    chunk_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-query ranks (0 = first), as int64 arrays on the CPU:

    * ``image_ranks[i]``: how many captions score strictly higher than image i's best caption
      (the rank of its first correct caption);
    * ``text_ranks[j]``: how many images score strictly higher than caption j's own image.

    Cosine similarity (embeddings need not be normalised). Runs on the device of ``image_embeds``;
    captions are converted and normalised a block at a time, so they may stay where they are
    (float16 numpy from a cache, say). ``chunk_size``: captions per block.
    """
    device = image_embeds.device if isinstance(image_embeds, torch.Tensor) else torch.device("cpu")
    images = F.normalize(_as_tensor(image_embeds, torch.float32, device), dim=-1)
    texts = (
        text_embeds if isinstance(text_embeds, torch.Tensor) else torch.from_numpy(np.asarray(text_embeds))
    )
    owner = _as_tensor(caption_image_index, torch.long, device)
    num_images, num_texts = images.shape[0], texts.shape[0]
    if owner.shape != (num_texts,):
        raise ValueError(f"caption_image_index has shape {tuple(owner.shape)}, expected ({num_texts},)")
    if num_texts and (owner.min() < 0 or owner.max() >= num_images):
        raise ValueError("caption_image_index points outside the image embeddings")
    captions_per_image = torch.bincount(owner, minlength=num_images)
    if (captions_per_image == 0).any():
        missing = int((captions_per_image == 0).sum())
        raise ValueError(f"{missing} image(s) have no caption; I2T recall is undefined for them")

    # Captions grouped by image (caches store them so; anything else is read in owner order).
    order = None
    if num_texts > 1 and bool((owner[1:] < owner[:-1]).any()):
        order = torch.argsort(owner, stable=True)
        owner = owner[order]
        order_at_texts = order.to(texts.device)
    offsets = torch.zeros(num_images + 1, dtype=torch.long, device=device)
    torch.cumsum(captions_per_image, 0, out=offsets[1:])
    if chunk_size is None:
        chunk_size = min(BLOCK_CAPTIONS, BLOCK_ELEMENTS // max(1, num_images))
    blocks = _image_blocks(offsets, max(1, int(chunk_size)))
    bounds = offsets.tolist()

    def text_block(c0: int, c1: int) -> torch.Tensor:
        rows = texts[c0:c1] if order is None else texts[order_at_texts[c0:c1]]
        return F.normalize(rows.to(device, torch.float32), dim=-1)

    def diagonal(first: int, end: int, block_texts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """A block's captions x its own images: (tile, positive score of each caption, best
        caption score of each image). The same call in both passes: the same values."""
        c0, c1 = bounds[first], bounds[end]
        tile = block_texts @ images[first:end].T
        local_owner = owner[c0:c1] - first
        positive = tile[torch.arange(c1 - c0, device=device), local_owner]
        best = torch.full((end - first,), float("-inf"), device=device)
        return tile, positive, best.scatter_reduce(0, local_owner, positive, reduce="amax")

    with _full_float32(device):
        best_positive = torch.empty(num_images, device=device)
        for first, end in blocks:
            best_positive[first:end] = diagonal(first, end, text_block(bounds[first], bounds[end]))[2]

        text_ranks = torch.zeros(num_texts, dtype=torch.int64, device=device)
        image_ranks = torch.zeros(num_images, dtype=torch.int64, device=device)
        tiles = _Tiles(max(bounds[e] - bounds[f] for f, e in blocks) * num_images, device)
        mismatched = 0
        for first, end in blocks:
            c0, c1 = bounds[first], bounds[end]
            block_texts = text_block(c0, c1)
            tile, positive, best = diagonal(first, end, block_texts)
            mismatched += int((best != best_positive[first:end]).sum())
            above = torch.zeros(c1 - c0, dtype=torch.int64, device=device)
            for a, b in ((first, end), (0, first), (end, num_images)):
                if a == b:
                    continue
                if (a, b) != (first, end):  # the diagonal tile is already there
                    tile = tiles.product(block_texts, images[a:b])
                above += tiles.count_above(tile, positive[:, None], dim=1)
                image_ranks[a:b] += tiles.count_above(tile, best_positive[None, a:b], dim=0)
            text_ranks[c0:c1] = above
    if mismatched:  # pragma: no cover - a BLAS that is not deterministic for repeated calls
        logger.warning(
            "retrieval_ranks: %d image positives differed between two identical similarity products; "
            "their I2T ranks may be off by candidates within float32 rounding of the positive",
            mismatched,
        )
    if order is not None:
        text_ranks = torch.empty_like(text_ranks).scatter_(0, order, text_ranks)
    return image_ranks.cpu().numpy(), text_ranks.cpu().numpy()


def recall_at_k(
    image_ranks: np.ndarray, text_ranks: np.ndarray, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@K in percent from per-query ranks (``retrieval_ranks``)."""
    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"i2t_r{k}"] = 100.0 * float(np.mean(np.asarray(image_ranks) < k))
    for k in ks:
        metrics[f"t2i_r{k}"] = 100.0 * float(np.mean(np.asarray(text_ranks) < k))
    return metrics


def retrieval_metrics(
    image_embeds: np.ndarray | torch.Tensor,
    text_embeds: np.ndarray | torch.Tensor,
    caption_image_index: np.ndarray | torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Recall@K (in percent) both ways; embeddings need not be normalised (cosine similarity is used)."""
    image_ranks, text_ranks = retrieval_ranks(
        image_embeds, text_embeds, caption_image_index, chunk_size=chunk_size
    )
    return recall_at_k(image_ranks, text_ranks, ks)


def format_metrics(metrics: dict[str, float], title: str = "") -> str:
    """A readable two-row table of Recall@K."""
    ks = sorted({int(key.split("_r")[1]) for key in metrics if key.startswith(("i2t_r", "t2i_r"))})
    header = "         " + "".join(f"  R@{k:<5}" for k in ks)
    lines = [title] if title else []
    lines.append(header)
    for direction, label in (("i2t", "image→text"), ("t2i", "text→image")):
        cells = "".join(f"  {metrics[f'{direction}_r{k}']:6.2f}" for k in ks)
        lines.append(f"{label:>10}{cells}")
    return "\n".join(lines)
