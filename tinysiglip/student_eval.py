"""A student evaluated on a teacher cache: its embeddings of every image and caption, Recall@K both ways,
and the per-query ranks behind them (what final runs store for the paired bootstrap).

Used by training (validation every few epochs, test at the end), ``tinysiglip eval`` and the cost
forecast; it knows nothing of training itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinysiglip.evaluate import recall_at_k, retrieval_ranks

__all__ = ["encode_cache", "evaluate_student", "evaluate_student_ranks", "pixel_normaliser"]


def pixel_normaliser(cache, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 cache pixels → the teacher's normalised float input, on ``device``."""
    from tinysiglip.cache import pixels_to_float

    def normalise(pixels: torch.Tensor) -> torch.Tensor:
        return pixels_to_float(pixels.to(device, non_blocking=True), cache.image_mean, cache.image_std)

    return normalise


@torch.no_grad()
def encode_cache(
    model: torch.nn.Module,
    cache_path: str | Path,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    autocast: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Student embeddings of every image and caption of a cache (for retrieval evaluation)."""
    from tinysiglip.cache import CachedCaptions, CachedImages, open_cache

    device = torch.device(device)
    cache = open_cache(cache_path)
    normalise = pixel_normaliser(cache, device)
    was_training = model.training
    model.eval()
    image_parts, text_parts = [], []
    loader_images = torch.utils.data.DataLoader(CachedImages(cache_path), batch_size=batch_size)
    loader_texts = torch.utils.data.DataLoader(CachedCaptions(cache_path), batch_size=batch_size * 4)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        for batch in loader_images:
            image_parts.append(model.encode_image(normalise(batch["pixels"])).float().cpu())
        for batch in loader_texts:
            text_parts.append(model.encode_text(batch["input_ids"].to(device)).float().cpu())
    model.train(was_training)
    return torch.cat(image_parts), torch.cat(text_parts), cache.caption_image_index()


def evaluate_student(model: torch.nn.Module, cache_path: str | Path, **kwargs: Any) -> dict[str, float]:
    """Recall@1/5/10 both ways on a cache, plus ``mean_r1`` (the default objective)."""
    return evaluate_student_ranks(model, cache_path, **kwargs)[0]


def evaluate_student_ranks(
    model: torch.nn.Module, cache_path: str | Path, **kwargs: Any
) -> tuple[dict[str, float], dict[str, list[int]]]:
    """``evaluate_student``'s metrics and the per-query ranks they come from (one similarity product):
    ``{"image_ranks", "text_ranks", "caption_image"}`` as lists, for the paired bootstrap."""
    images, texts, owner = encode_cache(model, cache_path, **kwargs)
    device = kwargs.get("device", "cpu")  # the similarity products run there (seconds on a CPU)
    image_ranks, text_ranks = retrieval_ranks(images.to(device), texts.to(device), owner)
    metrics = recall_at_k(image_ranks, text_ranks)
    metrics["mean_r1"] = (metrics["i2t_r1"] + metrics["t2i_r1"]) / 2
    ranks = {
        "image_ranks": image_ranks.tolist(),
        "text_ranks": text_ranks.tolist(),
        "caption_image": np.asarray(owner).tolist(),
    }
    return metrics, ranks
