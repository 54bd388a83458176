"""A synthetic captioned-image dataset written in the real COCO captions (and Karpathy) formats.

Images hold one or two coloured shapes on a plain or lightly noisy gray background, each shape at
one cell of a 3x3 grid. Every caption only states facts drawn in the image (shape, colour, size,
grid position, left/right/above/below between two shapes), and the facts combine, so retrieval has
hard negatives: the same shapes in other colours or places. Same seed and sizes -> same bytes.

Besides the COCO-like splits (train / val / test, also listed in the Karpathy-style file) the dataset
can hold a ``pretrain`` split: more images drawn from a random stream of their own, written as their
own COCO captions file and left out of the Karpathy file. It plays the web-scale corpus a real
teacher was trained on (SigLIP 2's WebLI): the local teachers learn from it, students never see it,
and it shares no image with train / val / test.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from tinysiglip.data.records import CaptionDataset, DatasetError

SPLITS = ("train", "val", "test")  # the COCO-like splits, in the Karpathy-style file
PRETRAIN = "pretrain"  # the teachers' own corpus: a COCO captions file, not in the Karpathy file
ALL_SPLITS = (*SPLITS, PRETRAIN)  # the index of a split picks its random stream and id block
DEFAULT_SIZES = {"train": 4000, "val": 300, "test": 300}
ID_BLOCK = 1_000_000  # image ids of split k are k*ID_BLOCK + 1 ...: disjoint whatever the sizes
JPEG_QUALITY = 92
SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered down: clean edges, exact background
MARKER = "shapes_dataset.json"

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (235, 205, 25),
    "green": (35, 155, 55),
    "blue": (35, 75, 215),
    "purple": (130, 45, 180),
    "pink": (240, 110, 190),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
SIZES = {"small": 0.22, "large": 0.42}  # radius as a fraction of a grid cell
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "center", "right")


def _position_words(row: int, column: int) -> tuple[str, str]:
    """(label, phrase) of a grid cell, e.g. ("top left", "in the top left corner")."""
    if row == 1 and column == 1:
        return "center", "in the center"
    if row == 1:
        return COLUMNS[column], f"on the {COLUMNS[column]}"
    if column == 1:
        return ROWS[row], f"at the {ROWS[row]}"
    label = f"{ROWS[row]} {COLUMNS[column]}"
    return label, f"in the {label} corner"


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    color: str
    size: str
    row: int
    column: int

    @property
    def label(self) -> str:
        return _position_words(self.row, self.column)[0]

    @property
    def where(self) -> str:
        return _position_words(self.row, self.column)[1]

    def noun(self, *, size: bool = True, color: bool = True) -> str:
        words = ([self.size] if size else []) + ([self.color] if color else []) + [self.shape]
        return " ".join(words)

    def to_json(self) -> dict:
        return {"shape": self.shape, "color": self.color, "size": self.size, "position": self.label}


def _article(phrase: str) -> str:
    return f"an {phrase}" if phrase[0] in "aeiou" else f"a {phrase}"


def _sentence(text: str, capitalise: bool) -> str:
    return f"{text[0].upper()}{text[1:]}." if capitalise else text


def _single_captions(obj: ShapeObject) -> list[str]:
    a = _article
    return [
        f"{a(obj.noun())} {obj.where}",
        f"{obj.label.replace(' ', '-')}: {a(obj.noun())}",
        f"there is {a(obj.noun(size=False))} {obj.where}",
        f"{obj.where} there is {a(obj.noun())}",
        f"a picture of a single {obj.size} {obj.shape} colored {obj.color}, {obj.where}",
        f"one {obj.color} {obj.shape}, {obj.size}, placed {obj.where}",
        f"{a(obj.noun(size=False))} on a gray background, {obj.where}",
        f"the only shape is {a(obj.noun())} {obj.where}",
    ]


def _relation(first: ShapeObject, second: ShapeObject) -> str | None:
    """A true spatial relation between two shapes sharing a row or a column, else None."""
    if first.row == second.row:
        return "to the left of" if first.column < second.column else "to the right of"
    if first.column == second.column:
        return "above" if first.row < second.row else "below"
    return None


def _pair_captions(first: ShapeObject, second: ShapeObject) -> list[str]:
    a = _article
    captions = [
        f"{a(first.noun())} {first.where} and {a(second.noun())} {second.where}",
        f"there is {a(second.noun())} {second.where} and {a(first.noun(size=False))} {first.where}",
        f"two shapes: {a(first.noun(size=False))} {first.where} and {a(second.noun(size=False))} {second.where}",
        f"{first.label.replace(' ', '-')}: {a(first.noun())}; {second.label.replace(' ', '-')}: {a(second.noun())}",
        f"{a(first.noun())} and {a(second.noun())}",
        f"{first.where} {a(first.noun(size=False))}, {second.where} {a(second.noun(size=False))}",
    ]
    relation = _relation(first, second)
    if relation is not None:
        captions.append(f"{a(first.noun())} {relation} {a(second.noun())}")
        inverse = {"to the left of": "to the right of", "to the right of": "to the left of"}
        inverse |= {"above": "below", "below": "above"}
        captions.append(f"{a(second.noun(size=False))} {inverse[relation]} {a(first.noun(size=False))}")
    return captions


def _sample_objects(rng: np.random.Generator) -> list[ShapeObject]:
    count = 1 if rng.random() < 0.5 else 2
    cells = rng.choice(9, size=count, replace=False)
    objects: list[ShapeObject] = []
    for cell in cells:
        while True:
            candidate = ShapeObject(
                shape=SHAPES[rng.integers(len(SHAPES))],
                color=list(COLORS)[rng.integers(len(COLORS))],
                size=list(SIZES)[rng.integers(len(SIZES))],
                row=int(cell) // 3,
                column=int(cell) % 3,
            )
            # two shapes differ in colour or kind, so "a red circle and a red circle" never occurs
            if not objects or (candidate.shape, candidate.color) != (objects[0].shape, objects[0].color):
                break
        objects.append(candidate)
    return sorted(objects, key=lambda o: (o.row, o.column))  # reading order: captions name top-left first


def _draw_shape(draw: ImageDraw.ImageDraw, obj: ShapeObject, cx: float, cy: float, r: float) -> None:
    fill = COLORS[obj.color]
    if obj.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif obj.shape == "square":
        h = r * 0.88
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
    elif obj.shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r * 0.8, cy), (cx, cy + r), (cx - r * 0.8, cy)], fill=fill)
    elif obj.shape == "cross":
        t = r * 0.34
        draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fill)
        draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fill)
    else:  # pragma: no cover - SHAPES and this function change together
        raise ValueError(obj.shape)


def _render(objects: list[ShapeObject], rng: np.random.Generator, image_size: int) -> Image.Image:
    gray = int(rng.integers(185, 236))
    background = np.full((image_size, image_size, 3), gray, dtype=np.int16)
    if rng.random() < 0.5:  # half the images get light pixel noise, half are plain
        background += rng.integers(-6, 7, size=background.shape, dtype=np.int16)
    base = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8), mode="RGB")
    big = base.resize((image_size * SUPERSAMPLE,) * 2, Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(big)
    cell = image_size * SUPERSAMPLE / 3
    for obj in objects:
        radius = SIZES[obj.size] * cell
        slack = max(0.0, cell / 2 - radius - 0.04 * cell)  # jitter, but stay inside the cell
        cx = (obj.column + 0.5) * cell + rng.uniform(-slack, slack)
        cy = (obj.row + 0.5) * cell + rng.uniform(-slack, slack)
        _draw_shape(draw, obj, cx, cy, radius)
    return big.resize((image_size, image_size), Image.Resampling.BOX)


@dataclass(frozen=True)
class ShapesPaths:
    root: Path
    image_root: Path  # root of the Karpathy file's filepath/filename (= root/images)
    annotation_files: dict[str, Path] = field(default_factory=dict)  # split -> captions_<split>.json
    image_roots: dict[str, Path] = field(default_factory=dict)  # split -> image folder of that file
    karpathy_file: Path | None = None

    def annotation_file(self, split: str) -> Path:
        if split not in self.annotation_files:
            raise DatasetError(f"the shapes dataset at {self.root} has no split {split!r}")
        return self.annotation_files[split]

    def load(self, split: str) -> CaptionDataset:
        """The split through the real COCO loader (name "shapes")."""
        from tinysiglip.data.coco import load_coco_captions

        return load_coco_captions(
            self.annotation_file(split), self.image_roots[split], name="shapes", split=split
        )


def _tokens(caption: str) -> list[str]:
    return "".join(ch if ch.isalnum() else " " for ch in caption.lower()).split()


def _check_sizes(sizes: dict[str, int] | None) -> dict[str, int]:
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    unknown = sorted(set(sizes) - set(ALL_SPLITS))
    if unknown:
        raise DatasetError(
            f"make_shapes: unknown split(s) {unknown} in sizes; valid: {', '.join(ALL_SPLITS)}"
        )
    for split, count in sizes.items():
        if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count < ID_BLOCK:
            raise DatasetError(
                f"make_shapes: sizes[{split!r}] must be an int in [0, {ID_BLOCK}), got {count!r}"
            )
    return {split: sizes[split] for split in ALL_SPLITS if sizes.get(split, 0) > 0}


def _prepare_out_dir(root: Path) -> None:
    """Write into an empty folder or over an earlier shapes dataset, never over anything else."""
    if root.exists() and any(root.iterdir()):
        if not (root / MARKER).is_file():
            raise DatasetError(
                f"make_shapes: {root} is not empty and holds no {MARKER}; choose an empty or new folder"
            )
        for stale in ("images", "annotations"):
            if (root / stale).is_dir():
                shutil.rmtree(root / stale)
        for stale in (MARKER, "dataset_shapes.json"):
            (root / stale).unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)


def make_shapes(
    out_dir: str | Path,
    *,
    seed: int = 0,
    sizes: dict[str, int] | None = None,
    image_size: int = 64,
) -> ShapesPaths:
    """Write the shapes dataset: ``images/<split>/*.jpg``, ``annotations/captions_<split>.json``
    (COCO captions schema) and ``dataset_shapes.json`` (Karpathy schema, all splits).

    Each split draws from its own random stream, so val/test do not change when train grows, and
    adding a ``pretrain`` split changes no byte of the other splits or of the Karpathy file.
    """
    if image_size < 24:
        raise DatasetError(f"make_shapes: image_size must be at least 24 pixels, got {image_size}")
    counts = _check_sizes(sizes)
    root = Path(out_dir).expanduser().absolute()
    _prepare_out_dir(root)
    image_root = root / "images"
    (root / "annotations").mkdir(parents=True, exist_ok=True)

    annotation_files: dict[str, Path] = {}
    image_roots: dict[str, Path] = {}
    karpathy_images: list[dict] = []
    sentence_id = 0
    for split_index, split in enumerate(ALL_SPLITS):
        if split not in counts:
            continue
        rng = np.random.default_rng([seed, split_index])
        split_dir = image_root / split
        split_dir.mkdir(parents=True, exist_ok=True)
        coco_images: list[dict] = []
        coco_annotations: list[dict] = []
        for index in range(counts[split]):
            image_id = split_index * ID_BLOCK + index + 1
            file_name = f"{image_id:012d}.jpg"
            objects = _sample_objects(rng)
            pool = _single_captions(objects[0]) if len(objects) == 1 else _pair_captions(*objects)
            how_many = 6 if rng.random() < 0.1 else 5  # like COCO, a few images have more than five
            chosen = sorted(rng.choice(len(pool), size=min(how_many, len(pool)), replace=False))
            captions = [_sentence(pool[i], capitalise=bool(rng.random() < 0.5)) for i in chosen]
            _render(objects, rng, image_size).save(
                split_dir / file_name, format="JPEG", quality=JPEG_QUALITY, subsampling=0
            )
            coco_images.append(
                {
                    "license": 0,
                    "file_name": file_name,
                    "height": image_size,
                    "width": image_size,
                    "id": image_id,
                    "objects": [obj.to_json() for obj in objects],  # not in COCO's schema: ground truth
                }
            )
            sentences = []
            for caption in captions:
                sentence_id += 1
                coco_annotations.append({"image_id": image_id, "id": sentence_id, "caption": caption})
                sentences.append(
                    {
                        "tokens": _tokens(caption),
                        "raw": caption,
                        "imgid": len(karpathy_images),
                        "sentid": sentence_id,
                    }
                )
            if split != PRETRAIN:  # the teachers' corpus is no part of the COCO-like Karpathy file
                karpathy_images.append(
                    {
                        "filepath": split,
                        "sentids": [s["sentid"] for s in sentences],
                        "filename": file_name,
                        "imgid": len(karpathy_images),
                        "split": split,
                        "sentences": sentences,
                        "cocoid": image_id,
                    }
                )
        annotation_file = root / "annotations" / f"captions_{split}.json"
        header = {
            "description": f"TinySigLIP synthetic shapes, seed {seed}, {image_size}px",
            "version": "1.0",
            "contributor": "tinysiglip make-shapes",
        }
        _write_json(
            annotation_file,
            {
                "info": header,
                "licenses": [],
                "type": "captions",
                "images": coco_images,
                "annotations": coco_annotations,
            },
        )
        annotation_files[split] = annotation_file
        image_roots[split] = split_dir

    karpathy_file = root / "dataset_shapes.json"
    _write_json(karpathy_file, {"images": karpathy_images, "dataset": "shapes"})
    _write_json(root / MARKER, {"seed": seed, "sizes": counts, "image_size": image_size, "format_version": 1})
    return ShapesPaths(
        root=root,
        image_root=image_root,
        annotation_files=annotation_files,
        image_roots=image_roots,
        karpathy_file=karpathy_file,
    )


def _write_json(path: Path, payload: dict) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, separators=(",", ":"))
        handle.write("\n")
