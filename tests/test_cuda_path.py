"""The CUDA path of training: an indexed device for the memory cap, batches copied ahead to the GPU.

The first two tests run anywhere; the last one needs a GPU (run it on one with
``pytest tests/test_cuda_path.py``) and is skipped elsewhere.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.test_train import tiny_config
from tinysiglip.cache import TrainLoader, TrainPairs, batches_on_device
from tinysiglip.train import _set_up_device, run_training


def test_a_bare_cuda_device_gets_an_index_for_the_memory_cap(monkeypatch):
    """torch refuses ``set_per_process_memory_fraction(f, torch.device("cuda"))``: every trial of a
    sweep with fractional GPUs crashed on a real GPU until the device carried its index."""
    from torch.cuda._utils import _get_device_index

    caps = []

    def strict_cap(fraction, device=None):
        caps.append((fraction, _get_device_index(device)))  # raises on a device without an index

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", strict_cap)
    for name in ("auto", "cuda"):
        train = {"device": name, "threads": 0, "gpu_memory_fraction": 0.25, "precision": "auto"}
        device, bf16 = _set_up_device(train)
        assert device == torch.device("cuda", 0) and bf16
    assert caps == [(0.25, 0), (0.25, 0)]


def test_batches_pass_through_unchanged_off_the_gpu(tiny_caches):
    loader = TrainLoader(TrainPairs(tiny_caches["train"], seed=0), 16, seed=0)
    direct = list(loader.epoch(0))
    moved = list(batches_on_device(loader.epoch(0), torch.device("cpu")))
    assert len(moved) == len(direct) == 96 // 16
    for a, b in zip(direct, moved, strict=True):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_a_gpu_share_with_batches_copied_ahead(tiny_caches, tmp_path):
    loader = TrainLoader(TrainPairs(tiny_caches["train"], seed=0), 16, seed=0, pin_memory=True)
    host = list(loader.epoch(1))
    on_gpu = list(batches_on_device(loader.epoch(1), torch.device("cuda")))
    assert len(on_gpu) == len(host)
    for a, b in zip(host, on_gpu, strict=True):
        assert all(b[key].is_cuda and torch.equal(a[key], b[key].cpu()) for key in a)
    config = tiny_config(tiny_caches, train={"epochs": 2, "device": "cuda", "gpu_memory_fraction": 0.25})
    result = run_training(config, run_dir=tmp_path / "gpu")
    assert result["status"] == "complete", result
    assert result["device"].startswith("cuda") and result["epochs_done"] == 2
    assert all(math.isfinite(value) for value in result["val_metrics"].values())
