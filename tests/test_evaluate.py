"""Recall@K against a brute-force implementation of the published COCO convention."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tinysiglip.evaluate import format_metrics, recall_at_k, retrieval_metrics, retrieval_ranks


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


# ---------------------------------------------------------------------------------------------
# per-query ranks, and equality with the previous (two-product) implementation


def previous_retrieval_metrics(
    image_embeds, text_embeds, caption_image_index, ks=(1, 5, 10), chunk_size=1024
):
    """retrieval_metrics as of commit e8f13ee (one similarity product per direction), kept as the
    reference the one-product version must reproduce."""
    images = torch.nn.functional.normalize(torch.as_tensor(image_embeds, dtype=torch.float32), dim=-1)
    texts = torch.nn.functional.normalize(torch.as_tensor(text_embeds, dtype=torch.float32), dim=-1)
    owner = torch.as_tensor(caption_image_index, dtype=torch.long)
    num_images, num_texts = images.shape[0], texts.shape[0]
    text_ranks = torch.empty(num_texts, dtype=torch.long)
    for start in range(0, num_texts, chunk_size):
        sims = texts[start : start + chunk_size] @ images.T
        positive = sims[torch.arange(sims.shape[0]), owner[start : start + chunk_size]]
        text_ranks[start : start + chunk_size] = torch.count_nonzero(sims > positive[:, None], dim=1)
    by_owner = torch.argsort(owner, stable=True)
    bounds = torch.searchsorted(owner[by_owner], torch.arange(num_images + 1))
    image_ranks = torch.empty(num_images, dtype=torch.long)
    for start in range(0, num_images, chunk_size):
        end = min(start + chunk_size, num_images)
        sims = images[start:end] @ texts.T
        columns = by_owner[bounds[start] : bounds[end]]
        rows = owner[columns] - start
        best = torch.full((end - start,), float("-inf")).scatter_reduce(0, rows, sims[rows, columns], "amax")
        image_ranks[start:end] = torch.count_nonzero(sims > best[:, None], dim=1)
    out = {f"i2t_r{k}": 100.0 * float((image_ranks < k).double().mean()) for k in ks}
    out.update({f"t2i_r{k}": 100.0 * float((text_ranks < k).double().mean()) for k in ks})
    return out


def brute_force_ranks(images, texts, owner):
    """Ranks from the whole similarity matrix in float64 (exact for the tie cases below)."""
    images = images / np.linalg.norm(images, axis=1, keepdims=True)
    texts = texts / np.linalg.norm(texts, axis=1, keepdims=True)
    sims = images.astype(np.float64) @ texts.astype(np.float64).T
    image_ranks = np.array(
        [(sims[i] > sims[i, owner == i].max()).sum() for i in range(len(images))], dtype=np.int64
    )
    text_ranks = np.array([(sims[:, j] > sims[owner[j], j]).sum() for j in range(len(texts))], dtype=np.int64)
    return image_ranks, text_ranks


def tie_heavy_inputs(seed=0):
    """Unit vectors with four entries of +-0.5: every cosine is an exact multiple of 1/4 in float32,
    so many candidates tie with the positive; duplicated captions; 1 to 7 captions per image;
    captions not grouped by image."""
    rng = np.random.default_rng(seed)

    def unit_vectors(n):
        out = np.zeros((n, 8), dtype=np.float32)
        for row in out:
            row[rng.choice(8, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
        return out

    counts = rng.choice([1, 5, 5, 6, 7], size=30)
    owner = np.repeat(np.arange(30), counts)
    images = unit_vectors(30)
    texts = unit_vectors(len(owner))
    texts[::3] = images[owner[::3]]  # some captions equal to their image: exact ties with duplicates
    texts[1::7] = texts[0]  # duplicated captions across images
    shuffle = rng.permutation(len(owner))
    return images, texts[shuffle], owner[shuffle]


@pytest.mark.parametrize("chunk_size", [None, 1, 7, 40])
def test_ranks_are_exact_with_ties_and_ungrouped_captions(chunk_size):
    images, texts, owner = tie_heavy_inputs()
    image_ranks, text_ranks = retrieval_ranks(images, texts, owner, chunk_size=chunk_size)
    expected_images, expected_texts = brute_force_ranks(images, texts, owner)
    assert image_ranks.dtype == np.int64 and text_ranks.dtype == np.int64
    np.testing.assert_array_equal(image_ranks, expected_images)
    np.testing.assert_array_equal(text_ranks, expected_texts)
    assert (expected_texts > 0).any() and (expected_texts == 0).any()  # neither trivial nor hopeless
    metrics = retrieval_metrics(images, texts, owner, chunk_size=chunk_size)
    assert metrics == recall_at_k(expected_images, expected_texts)
    assert metrics == previous_retrieval_metrics(images, texts, owner, chunk_size=7)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_the_previous_implementation(seed):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(5, 8, (300,), generator=g)  # 5-7 captions per image
    owner = torch.repeat_interleave(torch.arange(300), counts)
    images = torch.randn(300, 64, generator=g)
    texts = images[owner] + 2.5 * torch.randn(len(owner), 64, generator=g)
    ours = retrieval_metrics(images, texts, owner, chunk_size=100)
    assert ours == previous_retrieval_metrics(images, texts, owner, chunk_size=100)
    assert ours == retrieval_metrics(images.numpy(), texts.numpy(), owner.numpy())
    assert 0 < ours["t2i_r1"] < 100


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_give_the_cpu_ranks():
    images, texts, owner = tie_heavy_inputs(seed=3)
    cpu = retrieval_ranks(images, texts, owner)
    gpu = retrieval_ranks(
        torch.from_numpy(images).cuda(), torch.from_numpy(texts).cuda(), torch.from_numpy(owner).cuda()
    )
    np.testing.assert_array_equal(cpu[0], gpu[0])
    np.testing.assert_array_equal(cpu[1], gpu[1])
