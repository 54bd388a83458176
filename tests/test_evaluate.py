"""Recall@K against a brute-force implementation of the published COCO convention."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tinysiglip.evaluate import format_metrics, retrieval_metrics


def naive_recall(images, texts, owner, ks=(1, 5, 10)):
    images = images / np.linalg.norm(images, axis=1, keepdims=True)
    texts = texts / np.linalg.norm(texts, axis=1, keepdims=True)
    sims = images @ texts.T
    out = {}
    for k in ks:
        hits = 0
        for i in range(len(images)):
            order = sorted(range(len(texts)), key=lambda j: (-sims[i, j], owner[j] != i))
            hits += any(owner[j] == i for j in order[:k])
        out[f"i2t_r{k}"] = 100 * hits / len(images)
    for k in ks:
        hits = 0
        for j in range(len(texts)):
            order = sorted(range(len(images)), key=lambda i: (-sims[i, j], i != owner[j]))
            hits += owner[j] in order[:k]
        out[f"t2i_r{k}"] = 100 * hits / len(texts)
    return out


def test_matches_bruteforce_with_variable_captions_per_image():
    rng = np.random.default_rng(0)
    counts = [5, 5, 7, 6, 5, 5, 1, 5, 5, 5, 5, 5]
    owner = np.repeat(np.arange(len(counts)), counts)
    images = rng.normal(size=(len(counts), 8))
    texts = images[owner] + rng.normal(scale=1.2, size=(len(owner), 8))
    ours = retrieval_metrics(images, texts, owner, chunk_size=5)
    expected = naive_recall(images, texts, owner)
    assert ours == pytest.approx(expected)
    assert 0 < ours["i2t_r1"] < 100  # the case is neither trivial nor hopeless


def test_perfect_and_chance_cases():
    owner = np.repeat(np.arange(4), 5)
    images = np.eye(4, 6)
    assert retrieval_metrics(images, images[owner], owner)["t2i_r1"] == 100.0
    # Identical embeddings for all texts: ties count for the positive (stable top-k lists it first).
    flat = retrieval_metrics(images, np.ones((20, 6)), owner)
    assert flat["i2t_r1"] == 100.0


def test_accepts_torch_and_rejects_bad_index():
    images = torch.randn(3, 4)
    with pytest.raises(ValueError, match="outside"):
        retrieval_metrics(images, torch.randn(3, 4), torch.tensor([0, 1, 5]))
    with pytest.raises(ValueError, match="no caption"):
        retrieval_metrics(images, torch.randn(2, 4), torch.tensor([0, 1]))
    assert "image→text" in format_metrics(retrieval_metrics(images, torch.randn(3, 4), torch.arange(3)))
