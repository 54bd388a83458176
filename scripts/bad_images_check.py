"""Time `tinysiglip cache build` on a folder with missing and corrupt images (issue 10's closing figure).

    python scripts/bad_images_check.py --out /tmp/badimg --teacher DIR [--images 500 --missing 100 --corrupt 3]

Writes ``--images`` COCO-like 640x427 JPEGs, a captions file that also lists ``--missing`` files that do
not exist, damages ``--corrupt`` of the JPEGs (a truncated JPEG, garbage bytes, an empty file, in turn),
then runs the real command and prints its report, its exit status, the wall time, and whether a
``.partial`` file was left.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from tinysiglip.teacher.standins import write_coco_captions, write_photos


def make_folder(out: Path, images: int, missing: int, corrupt: int) -> Path:
    import json

    folder = out / "val2017"
    photos = write_photos(folder, [(640, 427)] * images, quality=85)
    captions = write_coco_captions(out / "annotations" / "captions_val2017.json", photos)
    data = json.loads(captions.read_text())
    for k in range(missing):  # listed in the captions file, never written
        image_id = 10_000 + k
        data["images"].append(
            {"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": 640, "height": 427}
        )
        data["annotations"].append(
            {"image_id": image_id, "id": 900_000 + k, "caption": "a photo that is not there"}
        )
    captions.write_text(json.dumps(data))
    for k, image_id in enumerate(sorted(photos)[:corrupt]):
        path = photos[image_id]
        if k % 3 == 0:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated JPEG
        elif k % 3 == 1:
            path.write_bytes(b"\x00garbage" * 500)
        else:
            path.write_bytes(b"")
    return captions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--teacher", required=True, help="teacher folder (e.g. a stand-in from make_standins.py)"
    )
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--missing", type=int, default=100)
    parser.add_argument("--corrupt", type=int, default=3)
    args = parser.parse_args(argv)
    out = Path(args.out)
    captions = make_folder(out, args.images, args.missing, args.corrupt)
    cache = out / "val.h5"
    command = [sys.executable, "-m", "tinysiglip", "cache", "build", "--teacher", args.teacher]
    command += [
        "--coco-captions",
        str(captions),
        "--images",
        str(out / "val2017"),
        "--out",
        str(cache),
        "--no-progress",
    ]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    print(result.stdout + result.stderr)
    partial = cache.with_name(cache.name + ".partial")
    print(
        f"exit status {result.returncode}; {seconds:.1f}s wall (process start and imports included); "
        f".partial left: {partial.exists()}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
