"""COCO captions / Karpathy loaders and image checks, on fixtures written in the real schemas."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinysiglip.data import (
    BadImageError,
    CaptionDataset,
    DatasetError,
    check_images,
    load_coco_captions,
    load_karpathy_split,
    open_rgb,
)
from tinysiglip.errors import TinySigLIPError

SEVEN_CAPTIONS = [
    "A man is in a kitchen making pizzas.",
    "Man in apron standing on front of oven with pans and bakeware",
    "A baker is working in the kitchen rolling dough.",
    "A person standing by a stove in a kitchen.",
    "A table with pies being made and a person standing near a wall with pots and pans hanging on the wall.",
    "  A   baker\tat work \n in a kitchen. ",
    "Pizza dough on a table.",
]


def _write_images(root: Path) -> dict[int, str]:
    """One file per awkward PIL mode; returns image_id -> file name (id 5 is never written)."""
    root.mkdir(parents=True, exist_ok=True)
    gradient = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (16, 1))  # 16 x 32
    Image.fromarray(gradient, mode="L").save(root / "000000000001.jpg")
    Image.new("CMYK", (32, 16), (0, 255, 255, 0)).save(root / "000000000002.jpg")  # red in CMYK
    palette = Image.new("P", (32, 16), 0)
    palette.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    palette.paste(1, (0, 0, 16, 16))
    palette.save(root / "000000000003.png", transparency=0)  # index 0 transparent
    rgba = Image.new("RGBA", (32, 16), (0, 0, 255, 255))
    rgba.paste((0, 0, 0, 0), (16, 0, 32, 16))
    rgba.save(root / "000000000004.png")
    Image.new("RGB", (40, 30), (10, 20, 30)).save(root / "000000000006.jpg")  # the 7-caption image
    return {
        1: "000000000001.jpg",
        2: "000000000002.jpg",
        3: "000000000003.png",
        4: "000000000004.png",
        5: "000000000005.jpg",  # missing on disk
        6: "000000000006.jpg",
        7: "000000000007.jpg",  # no caption: dropped by the loader
    }


@pytest.fixture()
def coco_world(tmp_path: Path) -> tuple[Path, Path]:
    image_root = tmp_path / "val2017"
    files = _write_images(image_root)
    images = [
        {
            "license": 4,
            "file_name": name,
            "coco_url": f"http://images.cocodataset.org/val2017/{name}",
            "height": 16,
            "width": 32,
            "date_captured": "2013-11-14 17:02:52",
            "flickr_url": "http://farm7.staticflickr.com/x.jpg",
            "id": image_id,
        }
        for image_id, name in reversed(files.items())  # not sorted on purpose
    ]
    annotations = []
    for image_id in (1, 2, 3, 4, 5):
        for k in range(5):
            annotations.append(
                {"image_id": image_id, "id": 100 * image_id + k, "caption": f"image {image_id} caption {k}"}
            )
    for k, caption in enumerate(SEVEN_CAPTIONS):
        annotations.append({"image_id": 6, "id": 600 + k, "caption": caption})
    data = {
        "info": {"description": "COCO 2017 Dataset", "version": "1.0", "year": 2017},
        "licenses": [
            {"url": "http://creativecommons.org/licenses/by/2.0/", "id": 4, "name": "Attribution License"}
        ],
        "type": "captions",
        "images": images,
        "annotations": annotations,
    }
    annotation_file = tmp_path / "annotations" / "captions_val2017.json"
    annotation_file.parent.mkdir()
    annotation_file.write_text(json.dumps(data, indent=1))
    return annotation_file, image_root


def _karpathy_record(
    imgid: int, cocoid: int | None, split: str, filepath: str | None, filename: str, n: int
) -> dict:
    sentences = [
        {"tokens": ["a", "man", str(k)], "raw": f"A man  {k}. ", "imgid": imgid, "sentid": 1000 * imgid + k}
        for k in range(n)
    ]
    record = {
        "filepath": filepath,
        "sentids": [s["sentid"] for s in sentences],
        "filename": filename,
        "imgid": imgid,
        "split": split,
        "sentences": sentences,
        "cocoid": cocoid,
    }
    if filepath is None:
        del record["filepath"]
    if cocoid is None:
        del record["cocoid"]
    return record


@pytest.fixture()
def karpathy_file(tmp_path: Path) -> Path:
    images = [
        _karpathy_record(0, 391895, "test", "val2014", "COCO_val2014_000000391895.jpg", 5),
        _karpathy_record(1, 522418, "train", "train2014", "COCO_train2014_000000522418.jpg", 5),
        _karpathy_record(2, 184613, "restval", "val2014", "COCO_val2014_000000184613.jpg", 6),
        _karpathy_record(3, 318219, "val", "val2014", "COCO_val2014_000000318219.jpg", 5),
        _karpathy_record(4, None, "train", None, "no_folder.jpg", 5),
    ]
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path


# ---------------------------------------------------------------- COCO captions


def test_coco_groups_all_captions_sorted_by_id(coco_world):
    annotation_file, image_root = coco_world
    dataset = load_coco_captions(annotation_file, image_root)
    assert isinstance(dataset, CaptionDataset)
    assert dataset.name == "coco" and dataset.split == "val2017"
    assert [r.image_id for r in dataset.records] == [1, 2, 3, 4, 5, 6]  # 7 has no caption
    seven = dataset.records[-1]
    assert len(seven.captions) == 7
    assert dataset.num_captions == 5 * 5 + 7
    assert seven.path == image_root.absolute() / "000000000006.jpg" and seven.path.is_absolute()
    assert dataset.skipped == []


def test_coco_whitespace_normalised_case_kept(coco_world):
    dataset = load_coco_captions(*coco_world)
    captions = dataset.records[-1].captions
    assert "A baker at work in a kitchen." in captions
    assert all(c == " ".join(c.split()) for r in dataset.records for c in r.captions)
    assert captions[0] == "A man is in a kitchen making pizzas."


def test_coco_name_and_split_override(coco_world):
    dataset = load_coco_captions(*coco_world, name="mine", split="val")
    assert (dataset.name, dataset.split) == ("mine", "val")


def test_fingerprint_tracks_file_bytes_and_records(coco_world):
    annotation_file, image_root = coco_world
    dataset = load_coco_captions(annotation_file, image_root)
    again = load_coco_captions(annotation_file, image_root)
    assert dataset.fingerprint() == again.fingerprint() and len(dataset.fingerprint()) == 64
    fewer = CaptionDataset(dataset.name, dataset.split, dataset.records[:-1], annotation_file)
    assert fewer.fingerprint() != dataset.fingerprint()
    loaded_before = dataset.fingerprint()
    annotation_file.write_text(annotation_file.read_text() + "\n")
    assert load_coco_captions(annotation_file, image_root).fingerprint() != loaded_before
    assert dataset.fingerprint() == loaded_before  # what was loaded, not what is on disk now
    unhashed = CaptionDataset(dataset.name, dataset.split, dataset.records, annotation_file)
    assert unhashed.fingerprint() != loaded_before  # no digest: hashes the file as it is now


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.pop("annotations"), "'annotations'"),
        (lambda d: d["images"][0].pop("file_name"), "images[0] has no 'file_name'"),
        (lambda d: d["images"][1].__setitem__("id", "7"), "images[1].id must be int"),
        (lambda d: d["annotations"][3].pop("caption"), "annotations[3] has no 'caption'"),
        (lambda d: d["annotations"][2].__setitem__("image_id", 999), "annotations[2].image_id = 999"),
    ],
)
def test_coco_schema_errors_name_file_and_field(coco_world, mutate, expected):
    annotation_file, image_root = coco_world
    data = json.loads(annotation_file.read_text())
    mutate(data)
    annotation_file.write_text(json.dumps(data))
    with pytest.raises(DatasetError) as info:
        load_coco_captions(annotation_file, image_root)
    assert expected in str(info.value) and str(annotation_file) in str(info.value)
    assert isinstance(info.value, TinySigLIPError)


def test_coco_missing_file_and_bad_json(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_coco_captions(tmp_path / "captions_nope.json", tmp_path)
    broken = tmp_path / "captions_broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(DatasetError, match=r"not valid JSON \(line 1"):
        load_coco_captions(broken, tmp_path)
    listed = tmp_path / "captions_list.json"
    listed.write_text("[]")
    with pytest.raises(DatasetError, match="JSON object"):
        load_coco_captions(listed, tmp_path)


def test_coco_real_excerpt_parses(tmp_path):
    excerpt = Path("/work/shared/formats/coco_captions_val2017_excerpt.json")
    if not excerpt.exists():
        pytest.skip("shared format excerpts not present")
    dataset = load_coco_captions(excerpt, tmp_path / "val2017", split="val2017")
    assert [(r.image_id, len(r.captions)) for r in dataset.records] == [(37777, 5), (397133, 5), (431896, 7)]
    assert dataset.records[0].path == (tmp_path / "val2017" / "000000037777.jpg").absolute()


# ---------------------------------------------------------------- Karpathy split


def test_karpathy_train_includes_restval(karpathy_file, tmp_path):
    train = load_karpathy_split(karpathy_file, tmp_path / "coco", "train")
    assert [r.image_id for r in train.records] == sorted([522418, 184613, 4])
    assert train.split == "train" and train.name == "coco"
    restval = load_karpathy_split(karpathy_file, tmp_path / "coco", "restval")
    assert [r.image_id for r in restval.records] == [184613]
    assert len(restval.records[0].captions) == 6
    test = load_karpathy_split(karpathy_file, tmp_path / "coco", "test")
    record = test.records[0]
    assert record.image_id == 391895
    assert record.path == (tmp_path / "coco" / "val2014" / "COCO_val2014_000000391895.jpg").absolute()
    assert record.captions[0] == "A man 0."  # raw, whitespace-normalised


def test_karpathy_missing_filepath_and_cocoid(karpathy_file, tmp_path):
    train = load_karpathy_split(karpathy_file, tmp_path, "train")
    record = next(r for r in train.records if r.image_id == 4)  # imgid fallback
    assert record.path == tmp_path.absolute() / "no_folder.jpg"


def test_karpathy_unknown_split_lists_valid(karpathy_file, tmp_path):
    with pytest.raises(DatasetError) as info:
        load_karpathy_split(karpathy_file, tmp_path, "validation")
    for name in ("train", "restval", "val", "test"):
        assert name in str(info.value)


def test_karpathy_real_first_record_parses(tmp_path):
    excerpt = Path("/work/shared/formats/karpathy_dataset_coco_first_record.json")
    if not excerpt.exists():
        pytest.skip("shared format excerpts not present")
    dataset = load_karpathy_split(excerpt, tmp_path, "test")
    assert dataset.records[0].image_id == 391895 and len(dataset.records[0].captions) == 5


# ---------------------------------------------------------------- images


def test_open_rgb_converts_awkward_modes(coco_world):
    _, root = coco_world
    gray = open_rgb(root / "000000000001.jpg")
    assert gray.mode == "RGB" and gray.size == (32, 16)
    r, g, b = gray.getpixel((31, 0))
    assert r == g == b and r > 200
    cmyk = open_rgb(root / "000000000002.jpg")
    r, g, b = cmyk.getpixel((5, 5))
    assert cmyk.mode == "RGB" and r > 200 and g < 60 and b < 60
    palette = open_rgb(root / "000000000003.png")
    assert palette.mode == "RGB"
    assert palette.getpixel((4, 4)) == (0, 200, 0) and palette.getpixel((24, 4)) == (255, 255, 255)
    rgba = open_rgb(root / "000000000004.png")
    assert rgba.getpixel((4, 4)) == (0, 0, 255) and rgba.getpixel((24, 4)) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_open_rgb_high_bit_depth_grayscale(tmp_path, mode):
    if mode == "F":
        image = Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32), mode="F")
        path = tmp_path / "f.tiff"
    else:
        image = Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).convert(mode)
        path = tmp_path / f"{mode.replace(';', '')}.png" if mode == "I;16" else tmp_path / "i.tiff"
    image.save(path)
    rgb = open_rgb(path)
    assert rgb.mode == "RGB"
    assert 120 <= rgb.getpixel((0, 0))[0] <= 135  # mid-gray, not clipped to white


def test_open_rgb_missing_and_corrupt(tmp_path):
    with pytest.raises(BadImageError, match="not found"):
        open_rgb(tmp_path / "nope.jpg")
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(BadImageError, match="junk.jpg"):
        open_rgb(junk)
    good = tmp_path / "good.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(BadImageError, match="truncated.jpg"):
        open_rgb(truncated)


def test_check_images_raises_listing_every_bad_path(coco_world):
    annotation_file, image_root = coco_world
    (image_root / "000000000004.png").write_bytes(b"garbage")
    dataset = load_coco_captions(annotation_file, image_root)
    with pytest.raises(BadImageError) as info:
        check_images(dataset, skip_bad=False)
    message = str(info.value)
    assert "000000000005.jpg" in message and "000000000004.png" in message
    assert "2 of 6 images" in message and "000000000006.jpg" not in message


def test_check_images_skip_mode_counts_and_logs(coco_world, caplog):
    dataset = load_coco_captions(*coco_world)
    with caplog.at_level(logging.WARNING):
        checked = check_images(dataset, skip_bad=True)
    assert [r.image_id for r in checked.records] == [1, 2, 3, 4, 6]
    assert [(p.name, "not found" in reason) for p, reason in checked.skipped] == [("000000000005.jpg", True)]
    assert "skipping 1 of 6" in caplog.text
    assert dataset.skipped == [] and len(dataset.records) == 6  # the input is left alone
    assert checked.fingerprint() != dataset.fingerprint()
    assert check_images(checked, skip_bad=False) is checked


def test_check_images_many_bad_lists_first_twenty(tmp_path):
    images = [{"id": i, "file_name": f"{i:03d}.jpg"} for i in range(1, 31)]
    annotations = [{"image_id": i, "id": i, "caption": "x"} for i in range(1, 31)]
    annotation_file = tmp_path / "captions_x.json"
    annotation_file.write_text(json.dumps({"images": images, "annotations": annotations}))
    dataset = load_coco_captions(annotation_file, tmp_path)
    with pytest.raises(BadImageError) as info:
        check_images(dataset, skip_bad=False, workers=1)
    assert "... and 10 more" in str(info.value) and "020.jpg" in str(info.value)
    assert "021.jpg" not in str(info.value)


def test_coco_empty_captions_are_named_all_at_once(coco_world):
    annotation_file, image_root = coco_world
    data = json.loads(annotation_file.read_text())
    data["annotations"][3]["caption"] = "  \n "
    data["annotations"][5]["caption"] = ""
    annotation_file.write_text(json.dumps(data))
    with pytest.raises(
        TinySigLIPError, match=r"2 empty caption\(s\): annotations\[3\] \(image \d+\), annotations\[5\]"
    ):
        load_coco_captions(annotation_file, image_root)
