"""`tinysiglip eval`: accepts what its help says, refuses caches the student does not belong to (another
teacher, view, size or width; images of its training cache), and fails cleanly on bad input."""

from __future__ import annotations

import json
import shutil

import pytest

from tinysiglip.cache import build_cache, open_cache
from tinysiglip.cli import main
from tinysiglip.data import load_coco_captions
from tinysiglip.teacher.tiny import save_tiny_teacher
from tinysiglip.train import run_training

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def trained(tiny_caches, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("eval_run")
    config = {
        "data": {
            key: str(tiny_caches[split]) for key, split in (("train_cache", "train"), ("val_cache", "val"))
        },
        "student": {"name": "test_tiny"},
        "optim": {"batch_size": 16},
        "train": {"epochs": 1, "threads": 1},
    }
    result = run_training(config, run_dir=run_dir)
    assert result["status"] == "complete"
    return run_dir


def _metrics(capsys) -> str:
    return [line for line in capsys.readouterr().out.splitlines() if "R@1" in line or "I2T" in line][-1]


def test_run_dir_student_and_checkpoint_forms_all_work(trained, tiny_caches, capsys, tmp_path):
    outputs = []
    for form in (trained, trained / "student", trained / "checkpoint"):
        out = tmp_path / f"{form.name}.json"
        assert (
            main(["eval", "--student", str(form), "--cache", str(tiny_caches["test"]), "--json", str(out)])
            == 0
        )
        outputs.append(json.loads(out.read_text()))
    assert outputs[0]["i2t_r1"] == outputs[1]["i2t_r1"] == outputs[2]["i2t_r1"]
    record = outputs[0]["checks"]["training_cache"]
    assert record["teacher_fingerprint"] == open_cache(tiny_caches["train"]).meta["teacher_fingerprint"]
    assert record["embed_dim"] == 32 and record["image_size"] == 32 and record["teacher_view"] == "teacher"
    assert outputs[0]["checks"]["leakage"]["leaked"] is False


def test_cache_of_another_teacher_is_refused_unless_overridden(trained, tiny_caches, tmp_path, capsys):
    other = save_tiny_teacher(tmp_path / "other_teacher", seed=7)  # same width and size, other weights
    test = open_cache(tiny_caches["test"])
    dataset = load_coco_captions(
        test.meta["annotation_file"],
        str(test.meta["annotation_file"]).replace("annotations/captions_test.json", "images/test"),
        name="shapes",
        split="test",
    )
    cache = build_cache(str(other), dataset, tmp_path / "other.h5", batch_size=16, progress=False)
    argv = ["eval", "--student", str(trained), "--cache", str(cache)]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "is not a cache the student" in error and "teacher_fingerprint: student trained with" in error
    assert "--allow-cache-mismatch" in error
    out = tmp_path / "m.json"
    assert main(argv + ["--allow-cache-mismatch", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["checks"]["cache_mismatches"]


def test_eval_on_training_images_is_refused(trained, tiny_caches, capsys):
    argv = ["eval", "--student", str(trained), "--cache", str(tiny_caches["train"])]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "train/test leakage" in error and "96 of 96 images" in error and "pass --allow-leakage" in error
    assert main(argv + ["--allow-leakage"]) == 0


def test_bad_input_gets_clean_errors(trained, tiny_caches, tmp_path, capsys):
    cache = str(tiny_caches["test"])
    cases = {
        ("--student", str(tmp_path / "nope")): "no such folder",
        ("--student", str(tmp_path)): "not a student folder",
        ("--student", str(trained), "--device", "banana"): "is not a torch device",
        ("--student", str(trained), "--json", "/proc/nope/out.json"): "cannot write a file there",
    }
    for args, expected in cases.items():
        assert main(["eval", *args, "--cache", cache]) == 2, args
        error = capsys.readouterr().err
        assert error.startswith("error: ") and expected in error and "Traceback" not in error, error
    old = tmp_path / "old_checkpoint"
    shutil.copytree(trained / "checkpoint", old)
    (old / "student_config.json").unlink()
    assert main(["eval", "--student", str(old), "--cache", cache]) == 2
    assert "written before checkpoints recorded" in capsys.readouterr().err
    (old / "student_config.json").write_text("{ not json")
    assert main(["eval", "--student", str(old), "--cache", cache]) == 2
    assert "student_config.json: not valid JSON" in capsys.readouterr().err
