"""The local world: synthetic data, locally trained teachers and their caches, built once and reused.

Machines without the Hugging Face Hub or COCO still run every study through the very same code path
(``--local``): the synthetic shapes dataset is written in the COCO captions format and read by the
COCO loader; the teachers are ``SiglipModel`` checkpoints saved with ``save_pretrained`` and loaded by
``AutoModel``/``AutoProcessor``; the caches are built by ``tinysiglip cache build``'s code.

Three teacher sizes stand in for SigLIP 2 Base / Large / So400m so that the scaling study keeps its
teacher axis. Like SigLIP 2 (trained on WebLI, evaluated on COCO), the teachers learn from a
pretraining split that no student sees, longer than any local student trains, so the students work
below a teacher they cannot catch up with at the demo's budget, as in the real setting.
Layout under the root (``$TINYSIGLIP_LOCAL_WORLD``, default ``.tinysiglip/local_world``)::

    <root>/<size>/shapes/                    synthetic dataset (COCO + Karpathy files, JPEGs; the
                                             pretrain split has its own COCO file only)
    <root>/<size>/teachers/local-m/          Hugging Face checkpoint + processor
    <root>/<size>/caches/local-m/test.h5     HDF5 teacher caches per split (source.json: what they
                                             were built from; caches of another teacher are rebuilt)

``size`` is ``default`` (the demo) or ``tiny`` (the smallest budget, used by the test suite).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinysiglip.errors import TinySigLIPError

SPLITS = ("train", "val", "test")
PRETRAIN = "pretrain"  # the teachers' own corpus (the stand-in for WebLI); students never see it

# Teacher sizes; every name maps to LocalTeacherConfig overrides.
LOCAL_TEACHERS: dict[str, dict[str, Any]] = {
    "local-s": {"hidden": 64, "vision_layers": 2, "text_layers": 1, "heads": 2},
    "local-m": {},  # LocalTeacherConfig defaults
    "local-l": {"hidden": 192, "vision_layers": 4, "text_layers": 3, "heads": 6},
}


@dataclass(frozen=True)
class WorldSize:
    """How big the world's data and teacher training are."""

    name: str
    sizes: dict[str, int]  # train / val / test (the students' COCO) and pretrain (the teachers' corpus)
    teacher_steps: int | None = None  # None: LocalTeacherConfig default
    image_size: int = 64
    teacher_overrides: dict[str, Any] = field(default_factory=dict)


# The default world has the real setting's shape: its teachers learn from a corpus five times the
# students' training split (SigLIP 2 from WebLI, students from COCO) for 1,200 steps of 128 pairs, 13x
# the pairs of a demo final run (3 epochs of 4,000 images), so no student catches up at the demo's
# budget. 1,000 test images keep bootstrap intervals of the A study's differences near +-1 R@1 point.
WORLD_SIZES = {
    "default": WorldSize(
        "default", {"train": 4000, "val": 300, "test": 1000, "pretrain": 20000}, teacher_steps=1200
    ),
    "tiny": WorldSize("tiny", {"train": 512, "val": 96, "test": 96, "pretrain": 1024}, teacher_steps=120),
}

_LOCK = threading.Lock()


class LocalWorldError(TinySigLIPError):
    """The local world cannot be made as asked."""


def default_root() -> Path:
    # Absolute: cache paths go into trial configs, and Ray runs each trial in a folder of its own.
    return Path(os.environ.get("TINYSIGLIP_LOCAL_WORLD", ".tinysiglip/local_world")).expanduser().absolute()


def default_size() -> str:
    return os.environ.get("TINYSIGLIP_LOCAL_WORLD_SIZE", "default")


@dataclass
class LocalWorld:
    """Paths of one local world; everything is made on first use and reused afterwards."""

    root: Path
    size: WorldSize
    progress: bool = True
    _teacher_dirs: dict[str, Path] = field(default_factory=dict, repr=False)

    @property
    def base(self) -> Path:
        return self.root / self.size.name

    @property
    def shapes_dir(self) -> Path:
        return self.base / "shapes"

    def dataset(self, split: str):
        """The synthetic dataset's split, read by the real COCO captions loader (written if missing)."""
        from tinysiglip.data import load_coco_captions, make_shapes

        with _LOCK:
            if self._written_shapes() != self._shapes_recipe():  # missing, or written by another version
                if self.progress:
                    print(
                        f"[local world] writing the synthetic shapes dataset to {self.shapes_dir}", flush=True
                    )
                make_shapes(self.shapes_dir, seed=0, sizes=self.size.sizes, image_size=self.size.image_size)
        annotation = self.shapes_dir / "annotations" / f"captions_{split}.json"
        return load_coco_captions(annotation, self.shapes_dir / "images" / split, name="shapes", split=split)

    def _shapes_recipe(self) -> dict[str, Any]:
        sizes = {split: count for split, count in self.size.sizes.items() if count > 0}
        return {"seed": 0, "sizes": sizes, "image_size": self.size.image_size}

    def _written_shapes(self) -> dict[str, Any] | None:
        try:
            marker = json.loads((self.shapes_dir / "shapes_dataset.json").read_text())
        except (OSError, ValueError):
            return None
        return {key: marker.get(key) for key in ("seed", "sizes", "image_size")}

    def teacher_training_data(self):
        """What the teachers learn from: the pretraining corpus when the world has one, else train."""
        return self.dataset(PRETRAIN if self.size.sizes.get(PRETRAIN) else "train")

    def teacher_path(self, name: str = "local-m") -> Path:
        """A trained local teacher in Hugging Face format (trained on first use, about a minute or more)."""
        from tinysiglip.teacher.local import train_local_teacher

        if name not in LOCAL_TEACHERS:
            raise LocalWorldError(
                f"unknown local teacher {name!r}; the local world has {', '.join(LOCAL_TEACHERS)}"
            )
        if name in self._teacher_dirs:
            return self._teacher_dirs[name]
        out = self.base / "teachers" / name
        overrides = {**self.size.teacher_overrides, **LOCAL_TEACHERS[name]}
        if self.size.teacher_steps is not None:
            overrides["steps"] = self.size.teacher_steps
        if self.progress and not (out / "config.json").exists():
            print(f"[local world] training the local teacher {name} into {out}", flush=True)
        self._teacher_dirs[name] = Path(
            train_local_teacher(
                self.teacher_training_data(),
                out,
                val=self.dataset("val"),
                test=self.dataset("test"),
                seed=0,
                image_size=self.size.image_size,
                progress=self.progress,
                **overrides,
            )
        )
        return self._teacher_dirs[name]

    def cache_path(self, teacher: str = "local-m", split: str = "train") -> Path:
        """The HDF5 teacher cache of ``teacher`` over ``split`` (built on first use)."""
        from tinysiglip.cache import build_cache

        if split not in SPLITS:
            raise LocalWorldError(f"unknown split {split!r}; the local world has {', '.join(SPLITS)}")
        teacher_dir = self.teacher_path(teacher)  # trained on first use; later calls only check it
        folder = self.base / "caches" / teacher
        self._drop_stale_caches(folder, teacher_dir)
        out = folder / f"{split}.h5"
        if out.exists():
            from tinysiglip.cache import CacheError, open_cache

            try:  # full checks: what we call ready must be complete, intact and of this teacher
                expect = {
                    "teacher_source": str(teacher_dir),
                    "dataset_fingerprint": self.dataset(split).fingerprint(),
                }
                open_cache(out, expect=expect, verify=True).close()
                return out
            except CacheError as error:
                rejected = out.with_name(out.name + ".rejected")
                print(
                    f"[local world] rebuilding {out}: {error}\n(the old file is kept as {rejected})",
                    flush=True,
                )
                os.replace(out, rejected)
        if self.progress:
            print(f"[local world] building the {split} cache of {teacher} at {out}", flush=True)
        return Path(
            build_cache(str(teacher_dir), self.dataset(split), out, batch_size=128, progress=self.progress)
        )

    def _drop_stale_caches(self, folder: Path, teacher_dir: Path) -> None:
        """Caches built from another teacher or other data (an earlier version's world) go away."""
        from tinysiglip.teacher.local import read_local_teacher_info

        source = {
            "teacher_fingerprint": (read_local_teacher_info(teacher_dir) or {}).get("fingerprint"),
            "shapes": self._shapes_recipe(),  # the data dataset() writes and checks
        }
        stamp = folder / "source.json"
        with _LOCK:
            try:
                current = json.loads(stamp.read_text())
            except (OSError, ValueError):
                current = None
            if current == source:
                return
            if folder.exists():
                if self.progress:
                    print(f"[local world] {folder} holds caches of another teacher or data: rebuilding")
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            stamp.write_text(json.dumps(source, indent=2, sort_keys=True) + "\n")

    def ensure(self, teachers: tuple[str, ...] = ("local-m",)) -> LocalWorld:
        for teacher in teachers:
            for split in SPLITS:
                self.cache_path(teacher, split)
        return self


def local_world(
    root: str | Path | None = None, size: str | None = None, *, progress: bool = True
) -> LocalWorld:
    size_name = size or default_size()
    if size_name not in WORLD_SIZES:
        raise LocalWorldError(
            f"unknown local world size {size_name!r}; choose one of {', '.join(WORLD_SIZES)}"
        )
    base = Path(root).expanduser().absolute() if root else default_root()
    return LocalWorld(base, WORLD_SIZES[size_name], progress=progress)


# ---------------------------------------------------------------------------------------------
# `tinysiglip local-world`


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "local-world",
        help="make the local world: synthetic data, local teachers and their caches (once)",
        description=(
            "Write the synthetic shapes dataset, train the local teacher(s) and build the train/val/test caches. "
            "Everything is reused on the next call; a killed build continues where it stopped."
        ),
    )
    parser.add_argument(
        "--root",
        help="folder of the local world (default $TINYSIGLIP_LOCAL_WORLD or .tinysiglip/local_world)",
    )
    parser.add_argument("--size", choices=sorted(WORLD_SIZES), help="default (demo) or tiny (tests)")
    parser.add_argument(
        "--teachers",
        default="local-m",
        help=f"comma-separated teacher sizes to make ({', '.join(LOCAL_TEACHERS)})",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    world = local_world(args.root, args.size)
    teachers = tuple(t.strip() for t in args.teachers.split(",") if t.strip())
    world.ensure(teachers)
    print(f"local world ready under {world.base}")
    for teacher in teachers:
        print(f"  teacher {teacher}: {world.teacher_path(teacher)}")
        for split in SPLITS:
            print(f"    {split} cache: {world.cache_path(teacher, split)}")
    return 0
