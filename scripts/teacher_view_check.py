"""Compare a cache's stored teacher image embeddings with what the teacher gives its users.

    python scripts/teacher_view_check.py --teacher DIR --cache FILE.h5 --captions captions_val2017.json --images DIR

For every cached image, the reference is the checkpoint called the way its users call it:
``AutoProcessor.from_pretrained(DIR)(images=Image.open(path).convert("RGB"), return_tensors="pt")`` then
``AutoModel.from_pretrained(DIR).get_image_features(**inputs)``, one image at a time. Prints the cosine
(min / mean) and the max abs difference between stored and reference embeddings. The cache is read with
h5py only, so caches written by older tinysiglip versions can be compared too (issue 10's "before").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py
import numpy as np
import torch


def reference_embeddings(teacher_dir: str, paths: list[Path]) -> np.ndarray:
    from PIL import Image
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(teacher_dir)
    rows = []
    with torch.no_grad():
        for path in paths:
            inputs = processor(images=Image.open(path).convert("RGB"), return_tensors="pt")
            output = model.get_image_features(**inputs)
            rows.append(getattr(output, "pooler_output", output)[0].float().numpy())
    return np.stack(rows)


def compare(teacher_dir: str, cache: str, captions: str, images: str) -> dict[str, float]:
    by_id = {e["id"]: Path(images) / e["file_name"] for e in json.loads(Path(captions).read_text())["images"]}
    with h5py.File(cache, "r") as handle:
        ids = handle["image_ids"][:]
        stored = handle["image_embeds"][:].astype(np.float32)
        view = handle.attrs.get("teacher_view", "(not recorded: the square)")
    reference = reference_embeddings(teacher_dir, [by_id[int(i)] for i in ids])
    cosine = (stored * reference).sum(1) / (
        np.linalg.norm(stored, axis=1) * np.linalg.norm(reference, axis=1)
    )
    return {
        "images": len(ids),
        "teacher_view": str(view),
        "cosine_min": float(cosine.min()),
        "cosine_mean": float(cosine.mean()),
        "max_abs_diff": float(np.abs(stored - reference).max()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", required=True, help="teacher folder (Hugging Face layout)")
    parser.add_argument("--cache", required=True, help="teacher cache built over --captions")
    parser.add_argument("--captions", required=True, help="COCO captions file the cache was built from")
    parser.add_argument("--images", required=True, help="image folder of --captions")
    args = parser.parse_args(argv)
    result = compare(args.teacher, args.cache, args.captions, args.images)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
