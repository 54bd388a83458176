"""Loaders for the MS-COCO captions files and Karpathy's split file (``dataset_coco.json``).

Both read the real schemas (see ``shared/formats``) and produce the same ``CaptionDataset``; the
synthetic shapes dataset is written in these schemas too, so it goes through exactly this code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

from tinysiglip.data.records import CaptionDataset, DatasetError, ImageRecord, normalize_caption

logger = logging.getLogger(__name__)

KARPATHY_SPLITS = ("train", "restval", "val", "test")
"""Split names in Karpathy's file; asking for "train" also takes "restval" (the usual 113k train)."""


def _read_json(path: Path, what: str) -> tuple[Any, str]:
    """The parsed file and the sha256 of the very bytes parsed."""
    if not path.exists():
        raise DatasetError(f"{what} not found: {path}")
    if not path.is_file():
        raise DatasetError(f"{what} is not a file: {path}")
    try:
        raw = path.read_bytes()
        return json.loads(raw.decode("utf-8")), hashlib.sha256(raw).hexdigest()
    except json.JSONDecodeError as error:
        raise DatasetError(
            f"{what} {path} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})"
        ) from error
    except UnicodeDecodeError as error:
        raise DatasetError(f"{what} {path} is not UTF-8 text: {error}") from error


def _field(entry: Any, key: str, kind: type | tuple[type, ...], where: str, path: Path) -> Any:
    if not isinstance(entry, dict):
        raise DatasetError(f"{path}: {where} must be a JSON object, found {type(entry).__name__}")
    if key not in entry:
        raise DatasetError(f"{path}: {where} has no {key!r} field")
    value = entry[key]
    # bool is an int subclass; an id of `true` is a broken file, not image 1.
    if not isinstance(value, kind) or isinstance(value, bool):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DatasetError(
            f"{path}: {where}.{key} must be {expected}, found {type(value).__name__} ({value!r:.60})"
        )
    return value


def _top_level_list(data: Any, key: str, path: Path, schema: str) -> list:
    if not isinstance(data, dict):
        raise DatasetError(
            f"{path}: expected a JSON object at the top ({schema}), found {type(data).__name__}"
        )
    if key not in data:
        raise DatasetError(f"{path}: missing top-level {key!r} field; is this a {schema}?")
    if not isinstance(data[key], list):
        raise DatasetError(f"{path}: top-level {key!r} must be a list, found {type(data[key]).__name__}")
    return data[key]


def _split_from_file_name(path: Path) -> str:
    match = re.fullmatch(r"captions_(.+)\.json", path.name)
    return match.group(1) if match else path.stem


def _build_records(
    captions_by_id: dict[int, list[str]], path_by_id: dict[int, Path], source: Path
) -> list[ImageRecord]:
    records = []
    without_captions = 0
    for image_id in sorted(path_by_id):
        captions = tuple(c for c in (normalize_caption(c) for c in captions_by_id.get(image_id, ())) if c)
        if not captions:
            without_captions += 1
            continue
        records.append(ImageRecord(image_id=image_id, path=path_by_id[image_id], captions=captions))
    if without_captions:
        logger.warning("%s: dropped %d image(s) without any caption", source, without_captions)
    return records


def load_coco_captions(
    annotation_file: str | Path,
    image_root: str | Path,
    *,
    name: str = "coco",
    split: str | None = None,
) -> CaptionDataset:
    """Read a COCO captions file (``captions_train2017.json`` style): every caption of every image.

    ``split`` defaults to what the file name says (``captions_val2017.json`` -> ``"val2017"``).
    """
    annotation_file = Path(annotation_file).expanduser().absolute()
    image_root = Path(image_root).expanduser().absolute()
    data, sha256 = _read_json(annotation_file, "COCO captions file")
    schema = "COCO captions file (with 'images' and 'annotations')"
    images = _top_level_list(data, "images", annotation_file, schema)
    annotations = _top_level_list(data, "annotations", annotation_file, schema)

    path_by_id: dict[int, Path] = {}
    for index, image in enumerate(images):
        where = f"images[{index}]"
        image_id = _field(image, "id", int, where, annotation_file)
        file_name = _field(image, "file_name", str, where, annotation_file)
        if image_id in path_by_id:
            raise DatasetError(f"{annotation_file}: {where}.id = {image_id} appears twice in 'images'")
        path_by_id[image_id] = image_root / file_name

    captions_by_id: dict[int, list[str]] = {}
    empty: list[str] = []
    for index, annotation in enumerate(annotations):
        where = f"annotations[{index}]"
        image_id = _field(annotation, "image_id", int, where, annotation_file)
        caption = _field(annotation, "caption", str, where, annotation_file)
        if not caption.strip():
            empty.append(f"{where} (image {image_id})")
            continue
        if image_id not in path_by_id:
            raise DatasetError(
                f"{annotation_file}: {where}.image_id = {image_id} matches no entry of 'images' "
                "(wrong or truncated annotation file?)"
            )
        captions_by_id.setdefault(image_id, []).append(caption)
    if empty:  # every one at once, not one per run
        shown = ", ".join(empty[:10]) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
        raise DatasetError(
            f"{annotation_file}: {len(empty)} empty caption(s): {shown}; write those captions or delete "
            "those annotations"
        )

    return CaptionDataset(
        name=name,
        split=split if split is not None else _split_from_file_name(annotation_file),
        records=_build_records(captions_by_id, path_by_id, annotation_file),
        annotation_file=annotation_file,
        skipped=[],
        annotation_sha256=sha256,
    )


def load_karpathy_split(
    split_file: str | Path,
    image_root: str | Path,
    split: str,
    *,
    name: str = "coco",
) -> CaptionDataset:
    """Read one split of Karpathy's ``dataset_coco.json`` (the split behind the "COCO 5k" test set).

    Image paths are ``image_root/filepath/filename`` (``image_root/filename`` when the record has no
    ``filepath``); ``image_id`` is ``cocoid`` (``imgid`` when absent). ``"train"`` includes
    ``"restval"``; ask for ``"restval"`` to get only those.
    """
    if split not in KARPATHY_SPLITS:
        raise DatasetError(
            f"unknown Karpathy split {split!r}; valid splits are {', '.join(KARPATHY_SPLITS)} "
            "('train' includes 'restval')"
        )
    wanted = {"train", "restval"} if split == "train" else {split}
    split_file = Path(split_file).expanduser().absolute()
    image_root = Path(image_root).expanduser().absolute()
    data, sha256 = _read_json(split_file, "Karpathy split file")
    images = _top_level_list(data, "images", split_file, "Karpathy split file (dataset_coco.json)")

    path_by_id: dict[int, Path] = {}
    captions_by_id: dict[int, list[str]] = {}
    for index, image in enumerate(images):
        where = f"images[{index}]"
        image_split = _field(image, "split", str, where, split_file)
        if image_split not in KARPATHY_SPLITS:
            raise DatasetError(
                f"{split_file}: {where}.split = {image_split!r} is not one of {', '.join(KARPATHY_SPLITS)}"
            )
        if image_split not in wanted:
            continue
        file_name = _field(image, "filename", str, where, split_file)
        id_key = "cocoid" if "cocoid" in image else "imgid"
        if id_key not in image:
            raise DatasetError(f"{split_file}: {where} has neither a 'cocoid' nor an 'imgid' field")
        image_id = _field(image, id_key, int, where, split_file)
        folder = image.get("filepath")
        if folder is not None and not isinstance(folder, str):
            raise DatasetError(f"{split_file}: {where}.filepath must be a string, found {folder!r:.60}")
        if image_id in path_by_id:
            raise DatasetError(f"{split_file}: {where}.{id_key} = {image_id} appears twice")
        path_by_id[image_id] = image_root / folder / file_name if folder else image_root / file_name
        sentences = _field(image, "sentences", list, where, split_file)
        captions_by_id[image_id] = [
            _field(sentence, "raw", str, f"{where}.sentences[{s}]", split_file)
            for s, sentence in enumerate(sentences)
        ]

    return CaptionDataset(
        name=name,
        split=split,
        records=_build_records(captions_by_id, path_by_id, split_file),
        annotation_file=split_file,
        skipped=[],
        annotation_sha256=sha256,
    )


def karpathy_image_ids(split_file: str | Path, splits: tuple[str, ...] = ("val", "test")) -> set[int]:
    """COCO image ids (``cocoid``, else ``imgid``) of the given splits of Karpathy's file, e.g. to
    leave the 5k test images out of a ``captions_train2017.json`` train cache."""
    unknown = [s for s in splits if s not in KARPATHY_SPLITS]
    if unknown:
        raise DatasetError(
            f"unknown Karpathy split(s) {unknown}; valid splits are {', '.join(KARPATHY_SPLITS)}"
        )
    split_file = Path(split_file).expanduser().absolute()
    data, _ = _read_json(split_file, "Karpathy split file")
    images = _top_level_list(data, "images", split_file, "Karpathy split file (dataset_coco.json)")
    ids = set()
    for index, image in enumerate(images):
        where = f"images[{index}]"
        if _field(image, "split", str, where, split_file) in splits:
            id_key = "cocoid" if isinstance(image, dict) and "cocoid" in image else "imgid"
            ids.add(_field(image, id_key, int, where, split_file))
    return ids


def read_image_id_list(path: str | Path) -> set[int]:
    """Image ids from a file: a JSON list of ints, or one id per line (``#`` starts a comment)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"image id list not found: {path}")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise DatasetError(f"{path} is not a valid JSON list of image ids ({error.msg})") from error
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise DatasetError(f"{path}: every entry of the JSON list must be an integer image id")
        return set(values)
    ids = set()
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            ids.add(int(line))
        except ValueError:
            raise DatasetError(f"{path}, line {number}: {line!r} is not an integer image id") from None
    return ids
