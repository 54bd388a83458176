"""Image-text retrieval Recall@K by the convention of published COCO numbers (and CLIP_benchmark).

* image→text (I2T) R@K: fraction of images for which ANY of their captions ranks in the top K texts;
* text→image (T2I) R@K: fraction of captions whose image ranks in the top K images.

Ranks are computed by counting, in chunks, how many candidates score strictly higher than the best
positive, so COCO 5k (5,000 × 25,010) never materialises the full similarity matrix at once and
ties are resolved in favour of the positive (the same as a stable top-k that lists positives first).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["METRIC_KEYS", "format_metrics", "retrieval_metrics"]

METRIC_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")


def _as_tensor(values: np.ndarray | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.detach().to("cpu", dtype)
    return torch.from_numpy(np.asarray(values)).to(dtype)


@torch.no_grad()
def retrieval_metrics(
    image_embeds: np.ndarray | torch.Tensor,
    text_embeds: np.ndarray | torch.Tensor,
    caption_image_index: np.ndarray | torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Recall@K (in percent) both ways; embeddings need not be normalised (cosine similarity is used)."""
    images = F.normalize(_as_tensor(image_embeds, torch.float32), dim=-1)
    texts = F.normalize(_as_tensor(text_embeds, torch.float32), dim=-1)
    owner = _as_tensor(caption_image_index, torch.long)
    num_images, num_texts = images.shape[0], texts.shape[0]
    if owner.shape != (num_texts,):
        raise ValueError(f"caption_image_index has shape {tuple(owner.shape)}, expected ({num_texts},)")
    if num_texts and (owner.min() < 0 or owner.max() >= num_images):
        raise ValueError("caption_image_index points outside the image embeddings")
    captions_per_image = torch.bincount(owner, minlength=num_images)
    if (captions_per_image == 0).any():
        missing = int((captions_per_image == 0).sum())
        raise ValueError(f"{missing} image(s) have no caption; I2T recall is undefined for them")

    # Blocks of about 64M similarities whatever the sizes (1024 images x 25k captions at COCO 5k).
    chunk_size = max(64, min(chunk_size, (1 << 26) // max(1, max(num_texts, num_images))))

    # T2I: rank of each caption's own image among all images.
    text_ranks = torch.empty(num_texts, dtype=torch.long)
    for start in range(0, num_texts, chunk_size):
        sims = texts[start : start + chunk_size] @ images.T
        rows = torch.arange(sims.shape[0])
        positive = sims[rows, owner[start : start + chunk_size]]
        text_ranks[start : start + chunk_size] = torch.count_nonzero(sims > positive[:, None], dim=1)

    # I2T: rank of each image's best-scoring caption among all captions. Captions sorted by owner give
    # each image block its caption columns without building a (block x captions) mask.
    by_owner = torch.argsort(owner, stable=True)
    bounds = torch.searchsorted(owner[by_owner], torch.arange(num_images + 1))
    image_ranks = torch.empty(num_images, dtype=torch.long)
    for start in range(0, num_images, chunk_size):
        end = min(start + chunk_size, num_images)
        sims = images[start:end] @ texts.T
        columns = by_owner[bounds[start] : bounds[end]]
        rows = owner[columns] - start
        best_positive = torch.full((end - start,), float("-inf")).scatter_reduce(
            0, rows, sims[rows, columns], reduce="amax"
        )
        image_ranks[start:end] = torch.count_nonzero(sims > best_positive[:, None], dim=1)

    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"i2t_r{k}"] = 100.0 * float((image_ranks < k).double().mean())
    for k in ks:
        metrics[f"t2i_r{k}"] = 100.0 * float((text_ranks < k).double().mean())
    return metrics


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
