"""Train/test leakage: train, eval and the sweep refuse a train cache that holds evaluation images (by id
and by identical stored pixels), near-duplicates are reported, the override is recorded, and
``cache build --exclude-karpathy / --exclude-ids`` builds the clean train set in one flag."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from types import SimpleNamespace

import pytest
from PIL import Image

from tinysiglip.cache import LeakageError, build_cache, check_leakage, open_cache
from tinysiglip.cli import main
from tinysiglip.data import ImageRecord, load_coco_captions, make_shapes
from tinysiglip.teacher import load_teacher
from tinysiglip.teacher.standins import write_coco_captions, write_photos
from tinysiglip.teacher.tiny import caption_words, save_tiny_teacher

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Shapes train/val/test, a tiny teacher, clean caches, and a train cache holding every val image."""
    root = tmp_path_factory.mktemp("leakage")
    shapes = make_shapes(root / "shapes", seed=0, sizes={"train": 40, "val": 8, "test": 8}, image_size=32)
    splits = {split: shapes.load(split) for split in ("train", "val", "test")}
    words = caption_words(c for r in splits["train"].records for c in r.captions)
    teacher = load_teacher(save_tiny_teacher(root / "teacher", vocab_words=words, image_size=32))
    caches = {
        split: build_cache(teacher, data, root / f"{split}.h5", batch_size=16, progress=False)
        for split, data in splits.items()
    }
    leaky = replace(
        splits["train"],
        records=sorted(splits["train"].records + splits["val"].records, key=lambda r: r.image_id),
    )
    caches["leaky"] = build_cache(teacher, leaky, root / "leaky.h5", batch_size=16, progress=False)
    return {"root": root, "shapes": shapes, "splits": splits, "teacher": teacher, "caches": caches}


def test_shared_ids_are_refused_with_count_and_ids(world):
    caches = world["caches"]
    val_ids = sorted(r.image_id for r in world["splits"]["val"].records)
    with pytest.raises(LeakageError) as error:
        check_leakage(caches["leaky"], {"val": caches["val"], "test": caches["test"]})
    message = str(error.value)
    assert "train/test leakage" in message and str(caches["leaky"]) in message
    assert f"val ({caches['val']}): 8 of 8 images are in the train cache" in message
    assert "8 by image id (e.g. " + ", ".join(map(str, val_ids[:5])) + ", ...)" in message
    assert "8 by identical stored pixels" in message and "\n  test (" not in message
    assert "--exclude-karpathy" in message and "data.allow_leakage: true" in message
    report = check_leakage(caches["leaky"], {"val": caches["val"], "test": caches["test"]}, allow=True)
    record = report.as_record()
    assert record["allowed"] and record["leaked"]
    assert record["splits"]["val"]["leaked"] == 8 and record["splits"]["test"]["leaked"] == 0
    assert not check_leakage(caches["train"], {"val": caches["val"], "test": caches["test"]}).leaked


def test_identical_pixels_under_another_id_are_refused(world, tmp_path):
    """The same picture as another file and id (COCO 2014 vs 2017 names): caught by the pixel hash."""
    val_record = world["splits"]["val"].records[0]
    copy = tmp_path / "renamed.jpg"
    shutil.copy(val_record.path, copy)
    train = world["splits"]["train"]
    extra = ImageRecord(image_id=999_999, path=copy, captions=("a copy",))
    dataset = replace(train, records=train.records + [extra])
    out = build_cache(world["teacher"], dataset, tmp_path / "train.h5", batch_size=16, progress=False)
    with pytest.raises(
        LeakageError, match=rf"1 by identical stored pixels \(e\.g\. {val_record.image_id} = train 999999\)"
    ):
        check_leakage(out, {"val": world["caches"]["val"]})


def test_reencoded_copy_is_reported_as_near_duplicate_not_refused(tmp_path):
    teacher = load_teacher(save_tiny_teacher(tmp_path / "teacher", image_size=32))
    photos = write_photos(tmp_path / "val", [(640, 427), (375, 500), (500, 333)], seed=3)
    val = load_coco_captions(write_coco_captions(tmp_path / "captions_val.json", photos), tmp_path / "val")
    train_photos = write_photos(tmp_path / "train", [(640, 480), (480, 640)], seed=4, first_id=100)
    reencoded = tmp_path / "train" / "000000000777.jpg"
    Image.open(photos[1]).save(reencoded, quality=70)  # the same photo, another JPEG, another id
    train_photos[777] = reencoded
    train = load_coco_captions(
        write_coco_captions(tmp_path / "captions_train.json", train_photos), tmp_path / "train"
    )
    caches = {
        name: build_cache(teacher, data, tmp_path / f"{name}.h5", batch_size=8, progress=False)
        for name, data in (("train", train), ("val", val))
    }
    report = check_leakage(caches["train"], {"val": caches["val"]})
    assert not report.leaked
    assert report.as_record()["splits"]["val"]["near_duplicates"] == 1
    assert "1 of 3 images are near-duplicates of train images (e.g. 1 ~ train 777)" in report.describe_near()


def test_train_refuses_leakage_and_records_the_override(world, tmp_path):
    from tinysiglip.train import run_training

    caches = world["caches"]
    config = {
        "data": {
            "train_cache": str(caches["leaky"]),
            "val_cache": str(caches["val"]),
            "test_cache": str(caches["test"]),
        },
        "student": {"name": "test_tiny"},
        "optim": {"batch_size": 16},
        "train": {"epochs": 1, "threads": 1},
    }
    with pytest.raises(LeakageError, match="8 of 8 images"):
        run_training(config, run_dir=tmp_path / "refused")
    assert not (tmp_path / "refused" / "checkpoint").exists()
    config["data"]["allow_leakage"] = True
    result = run_training(config, run_dir=tmp_path / "allowed")
    assert result["status"] == "complete"
    assert result["config"]["data"]["allow_leakage"] is True
    assert result["leakage"]["allowed"] and result["leakage"]["splits"]["val"]["leaked"] == 8
    saved = json.loads((tmp_path / "allowed" / "result.json").read_text())
    assert saved["leakage"]["leaked"] is True


def test_sweep_refuses_leaky_caches_unless_a_cell_allows_it(world):
    from tinysiglip.sweep.caches import check_study_caches

    caches = world["caches"]
    paths = {
        ("t", "shapes", "train"): caches["leaky"],
        ("t", "shapes", "val"): caches["val"],
        ("t", "shapes", "test"): caches["test"],
    }
    cell = SimpleNamespace(teacher="t", dataset="shapes", base_config={})
    with pytest.raises(LeakageError, match="set data.allow_leakage: true in the study's defaults"):
        check_study_caches(SimpleNamespace(cells=[cell]), paths, {}, echo=lambda *a, **k: None)
    printed = []
    allowed = SimpleNamespace(teacher="t", dataset="shapes", base_config={"data": {"allow_leakage": True}})
    check_study_caches(SimpleNamespace(cells=[allowed]), paths, {}, echo=printed.append)
    assert "leakage ALLOWED" in printed[0]


def test_cache_build_excludes_karpathy_val_and_test(world, tmp_path, capsys):
    """``captions_*.json`` holding the Karpathy val/test images (as train2017 does) minus them: one flag."""
    shapes = world["shapes"]
    everything = {"images": [], "annotations": []}
    for split in ("train", "val", "test"):
        data = json.loads(shapes.annotation_file(split).read_text())
        for image in data["images"]:
            image["file_name"] = f"{split}/{image['file_name']}"
        everything["images"] += data["images"]
        everything["annotations"] += data["annotations"]
    captions = tmp_path / "captions_train2017.json"
    captions.write_text(json.dumps(everything))
    ids_file = tmp_path / "more.txt"
    ids_file.write_text(f"# one id per line\n{world['splits']['train'].records[0].image_id}\n")
    out = tmp_path / "train.h5"
    argv = ["cache", "build", "--teacher", str(world["root"] / "teacher"), "--coco-captions", str(captions)]
    argv += ["--images", str(shapes.image_root), "--name", "shapes", "--split", "train", "--out", str(out)]
    argv += ["--exclude-karpathy", str(shapes.karpathy_file), "--exclude-ids", str(ids_file), "--no-progress"]
    assert main(argv) == 0
    assert "left out 17 image(s)" in capsys.readouterr().out
    cache = open_cache(out)
    assert cache.num_images == 39
    assert cache.meta["excluded_images"]["count"] == 17
    assert "build_command" not in cache.meta or "--exclude-karpathy" in cache.meta["build_command"]
    assert not check_leakage(out, {"val": world["caches"]["val"], "test": world["caches"]["test"]}).leaked
