"""The training loop end to end on tiny caches: determinism, resume, pruning stop, divergence, export."""

from __future__ import annotations

import json

import pytest
import torch

from tinysiglip.train import ConfigError, load_config_file, resolve_config, run_training


def tiny_config(caches, **sections):
    config = {
        "data": {
            "train_cache": str(caches["train"]),
            "val_cache": str(caches["val"]),
            "test_cache": str(caches["test"]),
        },
        "student": {"name": "test_tiny"},
        "optim": {"batch_size": 16, "lr": 1e-3},
        "train": {"epochs": 2, "threads": 1},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    return config


def test_same_seed_same_metrics_and_everything_recorded(tiny_caches, tmp_path):
    events = []
    first = run_training(tiny_config(tiny_caches), run_dir=tmp_path / "a", report=events.append)
    second = run_training(tiny_config(tiny_caches), run_dir=tmp_path / "b")
    assert first["status"] == "complete" and first["error"] is None
    assert first["val_metrics"] == second["val_metrics"]
    assert first["test_metrics"] == second["test_metrics"]
    assert [e["epoch"] for e in events] == [1, 2]
    assert set(events[0]["metrics"]) >= {
        "i2t_r1",
        "i2t_r5",
        "i2t_r10",
        "t2i_r1",
        "t2i_r5",
        "t2i_r10",
        "mean_r1",
    }
    assert events[0]["objective"] == events[0]["metrics"]["mean_r1"]
    counts = first["param_counts"]
    assert counts["total"] == counts["image_tower"] + counts["text_tower"] + counts["heads"] > 0
    assert first["config"]["student"]["name"] == "test_tiny"  # resolved config travels with the result
    saved = json.loads((tmp_path / "a" / "result.json").read_text())
    assert saved["test_metrics"] == first["test_metrics"]


def test_other_seed_gives_other_run(tiny_caches, tmp_path):
    a = run_training(tiny_config(tiny_caches, train={"epochs": 1}), run_dir=tmp_path / "a")
    b = run_training(tiny_config(tiny_caches, train={"epochs": 1, "seed": 1}), run_dir=tmp_path / "b")
    assert a["val_history"][0]["loss"] != b["val_history"][0]["loss"]


def test_stopped_run_resumes_to_the_same_result(tiny_caches, tmp_path):
    config = tiny_config(tiny_caches, train={"epochs": 3})
    straight = run_training(config, run_dir=tmp_path / "straight")

    stopped = run_training(config, run_dir=tmp_path / "resumed", report=lambda event: event["epoch"] == 1)
    assert stopped["status"] == "stopped" and stopped["epochs_done"] == 1
    resumed = run_training(config, run_dir=tmp_path / "resumed")
    assert resumed["resumed_from_epoch"] == 1
    assert resumed["status"] == "complete" and resumed["epochs_done"] == 3
    assert resumed["val_metrics"] == straight["val_metrics"]
    assert resumed["val_history"][-1]["loss"] == pytest.approx(straight["val_history"][-1]["loss"], rel=1e-6)


def test_checkpoint_of_another_config_is_refused(tiny_caches, tmp_path):
    run_training(tiny_config(tiny_caches, train={"epochs": 1}), run_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match="different config"):
        run_training(
            tiny_config(tiny_caches, optim={"lr": 5e-4}, train={"epochs": 2}), run_dir=tmp_path / "run"
        )


def test_non_finite_loss_ends_the_run_with_a_status(tiny_caches, tmp_path, monkeypatch):
    import tinysiglip.losses as losses

    monkeypatch.setattr(losses, "feature_loss", lambda *args: torch.tensor(float("nan")))
    result = run_training(tiny_config(tiny_caches), run_dir=tmp_path / "nan")
    assert result["status"] == "diverged"
    assert "non-finite loss at step 0" in result["error"]


def test_switched_off_losses_are_not_computed(tiny_caches, tmp_path, monkeypatch):
    import tinysiglip.losses as losses

    def forbidden(*args):
        raise AssertionError("a switched-off loss was computed")

    monkeypatch.setattr(losses, "feature_loss", forbidden)
    monkeypatch.setattr(losses, "affinity_loss", forbidden)
    config = tiny_config(tiny_caches, loss={"feat": 0, "affinity": 0}, train={"epochs": 1})
    result = run_training(config, run_dir=tmp_path / "a1")
    assert result["status"] == "complete"
    assert set(result["val_history"][0]["terms"]) == {"contrast_loss"}


def test_exported_student_embeds_new_images_and_captions(tiny_caches, tiny_teacher_dir, tmp_path):
    from PIL import Image

    from tinysiglip.students import TinySigLIP

    config = tiny_config(
        tiny_caches, train={"epochs": 1}, teacher={"source": str(tiny_teacher_dir("siglip"))}
    )
    run_training(config, run_dir=tmp_path / "run")
    model = TinySigLIP.from_pretrained(tmp_path / "run" / "student")
    texts = model.encode_texts(["a red circle in the top left", "A BLUE square"])
    images = model.encode_images([Image.new("RGB", (40, 50), "red")])
    assert texts.shape == (2, model.embed_dim) and images.shape == (1, model.embed_dim)
    assert torch.allclose(texts.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="optim.lrr.*did you mean 'optim.lr'"):
        resolve_config({"optim": {"lrr": 1}})
    with pytest.raises(ConfigError, match="loss"):
        resolve_config({"loss": {"feat": -1}})
    path = tmp_path / "run.yaml"
    path.write_text("train: {epochs: 2}\n")
    assert load_config_file(path, ["loss.feat=0", "optim.lr=1e-3"])["loss"]["feat"] == 0
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config_file(path, ["nonsense"])
    with pytest.raises(ConfigError, match="data.train_cache is required"):
        run_training({}, run_dir=tmp_path / "x")
