"""The synthetic shapes dataset: deterministic bytes, real schemas, captions true to the image."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from tinysiglip.data import (
    DatasetError,
    check_images,
    load_coco_captions,
    load_karpathy_split,
    make_shapes,
    open_rgb,
)
from tinysiglip.data.cli import register
from tinysiglip.data.shapes import COLORS, SIZES

SMALL = {"train": 40, "val": 12, "test": 12}


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    first = make_shapes(tmp_path / "a", seed=3, sizes=SMALL)
    second = make_shapes(tmp_path / "b", seed=3, sizes=SMALL)
    other = make_shapes(tmp_path / "c", seed=4, sizes=SMALL)
    hashes = _hashes(first.root)
    assert len(hashes) == sum(SMALL.values()) + 3 + 1 + 1  # images, captions files, Karpathy, marker
    assert hashes == _hashes(second.root)
    other_hashes = _hashes(other.root)
    assert hashes.keys() == other_hashes.keys()
    differing = [name for name in hashes if name.endswith(".jpg") and hashes[name] != other_hashes[name]]
    assert len(differing) > 0.9 * sum(SMALL.values())


def test_val_and_test_do_not_depend_on_train_size(tmp_path):
    small = make_shapes(tmp_path / "a", sizes={"train": 5, "val": 6, "test": 6})
    large = make_shapes(tmp_path / "b", sizes={"train": 25, "val": 6, "test": 6})
    a, b = _hashes(small.root), _hashes(large.root)
    assert all(a[k] == b[k] for k in a if k.startswith("images/val") or k.startswith("images/test"))


def test_pretrain_split_is_the_teachers_own_corpus(tmp_path):
    """The pretraining split changes no byte of the COCO-like splits, shares no image or id with
    them, is read by the COCO loader, and stays out of the Karpathy-style file."""
    without = make_shapes(tmp_path / "a", sizes=SMALL)
    with_pretrain = make_shapes(tmp_path / "b", sizes={**SMALL, "pretrain": 30})
    a, b = _hashes(without.root), _hashes(with_pretrain.root)
    assert {k: v for k, v in b.items() if "pretrain" not in k and k != "shapes_dataset.json"} == {
        k: v for k, v in a.items() if k != "shapes_dataset.json"
    }
    pretrain = with_pretrain.load("pretrain")
    assert pretrain.split == "pretrain" and len(pretrain.records) == 30
    assert all(len(r.captions) >= 5 for r in pretrain.records)
    others = [with_pretrain.load(split) for split in SMALL]
    other_ids = {r.image_id for d in others for r in d.records}
    assert not {r.image_id for r in pretrain.records} & other_ids
    other_images = {hashlib.sha256(r.path.read_bytes()).digest() for d in others for r in d.records}
    assert not {hashlib.sha256(r.path.read_bytes()).digest() for r in pretrain.records} & other_images
    karpathy = json.loads(with_pretrain.karpathy_file.read_text())
    assert {image["split"] for image in karpathy["images"]} == set(SMALL)
    assert json.loads((with_pretrain.root / "shapes_dataset.json").read_text())["sizes"]["pretrain"] == 30


def test_coco_round_trip_and_disjoint_ids(tmp_path):
    paths = make_shapes(tmp_path / "shapes", sizes=SMALL, image_size=48)
    ids = {}
    for split, count in SMALL.items():
        dataset = load_coco_captions(paths.annotation_files[split], paths.image_roots[split], name="shapes")
        assert dataset.split == split and len(dataset.records) == count
        assert all(len(r.captions) >= 5 for r in dataset.records)
        assert all(len(set(r.captions)) == len(r.captions) for r in dataset.records)
        assert check_images(dataset, skip_bad=False) is dataset
        image = open_rgb(dataset.records[0].path)
        assert image.size == (48, 48) and image.mode == "RGB"
        ids[split] = {r.image_id for r in dataset.records}
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    assert paths.load("val").name == "shapes"


def test_karpathy_round_trip_matches_coco_files(tmp_path):
    paths = make_shapes(tmp_path / "shapes", sizes=SMALL)
    for split in SMALL:
        from_karpathy = load_karpathy_split(paths.karpathy_file, paths.image_root, split, name="shapes")
        from_coco = paths.load(split)
        assert from_karpathy.records == from_coco.records


def test_captions_state_only_drawn_facts(tmp_path):
    paths = make_shapes(tmp_path / "shapes", sizes={"train": 60})
    data = json.loads(paths.annotation_files["train"].read_text())
    by_id: dict[int, list[str]] = {}
    for annotation in data["annotations"]:
        by_id.setdefault(annotation["image_id"], []).append(annotation["caption"].lower())
    counts = set()
    for image in data["images"]:
        objects = image["objects"]
        counts.add(len(objects))
        drawn_colors = {o["color"] for o in objects}
        drawn_shapes = {o["shape"] for o in objects}
        drawn_sizes = {o["size"] for o in objects}
        for caption in by_id[image["id"]]:
            words = set(
                caption.replace(",", " ").replace(".", " ").replace(":", " ").replace(";", " ").split()
            )
            assert words & set(COLORS) <= drawn_colors, caption
            assert words & set(SIZES) <= drawn_sizes, caption
            assert {
                w for w in words if w in {"circle", "square", "triangle", "diamond", "cross"}
            } <= drawn_shapes
            assert all(shape in caption for shape in drawn_shapes), caption
    assert counts == {1, 2}


def test_shape_colour_is_visible_in_pixels(tmp_path):
    paths = make_shapes(tmp_path / "shapes", sizes={"train": 30})
    data = json.loads(paths.annotation_files["train"].read_text())
    for image in data["images"]:
        pixels = np.asarray(open_rgb(paths.image_roots["train"] / image["file_name"]), dtype=int)
        for obj in image["objects"]:
            target = np.array(COLORS[obj["color"]])
            close = (np.abs(pixels - target).max(axis=-1) < 40).sum()
            assert close >= 20, (image["file_name"], obj)  # a small shape at 64 px is ~60 pixels


def test_refuses_foreign_non_empty_folder_and_rewrites_own(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep")
    with pytest.raises(DatasetError, match="not empty"):
        make_shapes(foreign, sizes=SMALL)
    paths = make_shapes(tmp_path / "shapes", sizes={"train": 10, "val": 3, "test": 3})
    again = make_shapes(tmp_path / "shapes", sizes={"train": 4, "val": 3, "test": 3})
    assert len(list((again.image_roots["train"]).iterdir())) == 4
    assert paths.root == again.root


def test_bad_sizes(tmp_path):
    with pytest.raises(DatasetError, match="unknown split.*valid: train, val, test, pretrain"):
        make_shapes(tmp_path / "x", sizes={"training": 3})
    with pytest.raises(DatasetError, match="sizes\\['val'\\]"):
        make_shapes(tmp_path / "x", sizes={"val": -1})


def test_cli_make_shapes(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="tinysiglip")
    register(parser.add_subparsers(dest="command"))
    out = tmp_path / "cli"
    args = parser.parse_args(
        [
            "make-shapes",
            "--out",
            str(out),
            "--seed",
            "1",
            "--train",
            "6",
            "--val",
            "2",
            "--test",
            "2",
            "--image-size",
            "32",
        ]
    )
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "captions_train.json" in printed and "dataset_shapes.json" in printed
    assert (
        len(load_coco_captions(out / "annotations" / "captions_val.json", out / "images" / "val").records)
        == 2
    )
