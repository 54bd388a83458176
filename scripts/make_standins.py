"""Write real-layout stand-ins: SigLIP 2 checkpoints in their Hub layout and COCO-like photos.

    python scripts/make_standins.py --out /tmp/standins            # real widths (768), 1 layer per tower
    python scripts/make_standins.py --out /tmp/standins --width 64 # narrow, for quick checks

Writes ``<out>/google/siglip2-base-patch16-224`` (SiglipModel), ``<out>/google/siglip2-base-patch16-naflex``
(Siglip2Model), ``<out>/coco/val2017/*.jpg`` (non-square JPEGs, one grayscale), ``<out>/coco/annotations/
captions_val2017.json`` and a Karpathy-style ``<out>/coco/dataset_coco.json``. Nothing is downloaded; what
is real and what is not is listed in ``tinysiglip/teacher/standins.py``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tinysiglip.teacher.standins import (
    COCO_LIKE_SIZES,
    DEFAULT_CAPTIONS,
    STANDINS,
    save_standin_teacher,
    write_coco_captions,
    write_photos,
)


def write_karpathy_file(path: Path, images: dict[int, Path], splits: dict[int, str]) -> Path:
    """A ``dataset_coco.json`` in Karpathy's schema over ``images`` (split per image id)."""
    entries = []
    for n, (image_id, image_path) in enumerate(sorted(images.items())):
        sentences = [
            {"raw": DEFAULT_CAPTIONS[(n + k) % len(DEFAULT_CAPTIONS)], "sentid": 5 * n + k} for k in range(5)
        ]
        entries.append(
            {
                "filepath": image_path.parent.name,
                "filename": image_path.name,
                "imgid": n,
                "split": splits.get(image_id, "train"),
                "sentences": sentences,
                "cocoid": image_id,
            }
        )
    path.write_text(json.dumps({"images": entries, "dataset": "coco"}))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--width", type=int, default=None, help="tower width (default: the real 768)")
    parser.add_argument("--layers", type=int, default=1, help="layers per tower (real: 12; default 1)")
    parser.add_argument("--photos", type=int, default=len(COCO_LIKE_SIZES), help="number of JPEGs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    out = Path(args.out)
    started = time.perf_counter()
    for name in STANDINS:
        folder = save_standin_teacher(
            out / "google" / name,
            name,
            vision_layers=args.layers,
            text_layers=args.layers,
            width=args.width,
            seed=args.seed,
        )
        print(f"teacher stand-in {folder} ({time.perf_counter() - started:.1f}s)")
    sizes = [COCO_LIKE_SIZES[i % len(COCO_LIKE_SIZES)] for i in range(args.photos)]
    images = write_photos(out / "coco" / "val2017", sizes, seed=args.seed, grayscale_every=5)
    captions = write_coco_captions(out / "coco" / "annotations" / "captions_val2017.json", images)
    ids = sorted(images)
    splits = {
        image_id: ("test" if k % 3 == 0 else "val" if k % 3 == 1 else "train")
        for k, image_id in enumerate(ids)
    }
    karpathy = write_karpathy_file(out / "coco" / "dataset_coco.json", images, splits)
    print(
        f"{len(images)} photos in {out / 'coco' / 'val2017'}; captions {captions}; Karpathy file {karpathy}"
    )
    print(f"done in {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
