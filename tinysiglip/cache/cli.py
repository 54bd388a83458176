"""`tinysiglip cache build | info | verify`."""

from __future__ import annotations

import argparse
import json
import time

from tinysiglip.cache.format import EMBED_DTYPES, partial_path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cache",
        help="build, inspect and verify the HDF5 teacher cache",
        description="The teacher cache: one teacher pass over a split, stored for every training trial.",
    )
    commands = parser.add_subparsers(dest="cache_command", metavar="{build,info,verify}")
    commands.required = True

    build = commands.add_parser(
        "build",
        help="run the teacher over a dataset split and write the cache (resumable)",
        description=(
            "Run the teacher once over a dataset split and store resized uint8 pixels, token ids and "
            "teacher embeddings. Interrupted builds resume when rerun with the same arguments."
        ),
    )
    build.add_argument("--teacher", required=True, help="Hub id (google/siglip2-...) or local teacher folder")
    build.add_argument("--revision", default=None, help="Hub revision of the teacher (default: main)")
    source = build.add_mutually_exclusive_group(required=True)
    source.add_argument("--coco-captions", metavar="FILE", help="COCO captions file (captions_*.json)")
    source.add_argument("--karpathy", metavar="FILE", help="Karpathy split file (dataset_coco.json)")
    build.add_argument(
        "--split",
        default=None,
        help="split name: required with --karpathy (train/restval/val/test); with --coco-captions it "
        "overrides the name taken from the file name",
    )
    build.add_argument("--images", required=True, metavar="DIR", help="image root folder")
    build.add_argument("--name", default="coco", help="dataset name recorded in the cache (default coco)")
    build.add_argument("--out", required=True, metavar="PATH", help="output .h5 file")
    build.add_argument("--batch-size", type=int, default=64, help="teacher batch size (default 64)")
    build.add_argument("--embed-dtype", choices=EMBED_DTYPES, default="float16", help="embedding dtype")
    build.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="decode every image first and leave out unreadable ones (recorded in the cache metadata)",
    )
    build.add_argument("--device", default="cpu", help="torch device for the teacher (default cpu)")
    build.add_argument("--num-workers", type=int, default=None, help="image decoding threads")
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    build.set_defaults(func=run_build)

    info = commands.add_parser("info", help="print a cache's metadata (also of an unfinished build)")
    info.add_argument("path", help="cache file (or its .partial)")
    info.add_argument("--json", action="store_true", help="print the metadata as JSON")
    info.set_defaults(func=run_info)

    verify = commands.add_parser("verify", help="re-hash every dataset and compare with the stored checksums")
    verify.add_argument("path", help="cache file")
    verify.set_defaults(func=run_verify)


def _load_dataset(args: argparse.Namespace):
    from tinysiglip.data import check_images, load_coco_captions, load_karpathy_split

    if args.karpathy:
        if not args.split:
            raise SystemExit("tinysiglip cache build: --split is required with --karpathy")
        dataset = load_karpathy_split(args.karpathy, args.images, args.split, name=args.name)
    else:
        dataset = load_coco_captions(args.coco_captions, args.images, name=args.name, split=args.split)
    if args.skip_bad_images:
        dataset = check_images(dataset, skip_bad=True)
    return dataset


def run_build(args: argparse.Namespace) -> int:
    from tinysiglip.cache.build import build_cache
    from tinysiglip.cache.reader import open_cache
    from tinysiglip.teacher import load_teacher

    dataset = _load_dataset(args)
    teacher = load_teacher(args.teacher, revision=args.revision, device=args.device)
    started = time.perf_counter()
    out = build_cache(
        teacher,
        dataset,
        args.out,
        batch_size=args.batch_size,
        embed_dtype=args.embed_dtype,
        device=args.device,
        progress=not args.no_progress,
        num_workers=args.num_workers,
    )
    cache = open_cache(out)
    print(
        f"teacher cache {out}: {cache.num_images} images, {cache.num_captions} captions, "
        f"embed_dim {cache.embed_dim}, image_size {cache.image_size}, "
        f"{cache.meta.get('num_skipped_images', 0)} skipped images ({time.perf_counter() - started:.1f}s)"
    )
    return 0


def _format_value(value) -> str:
    if isinstance(value, (dict, list)):
        text = json.dumps(value, sort_keys=True)
        return text if len(text) <= 200 else text[:200] + f"... ({len(text)} chars)"
    return str(value)


def run_info(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tinysiglip.cache.reader import read_meta

    path = Path(args.path)
    if not path.exists() and partial_path(path).exists():
        print(f"{path} does not exist; showing the unfinished build {partial_path(path)}")
        path = partial_path(path)
    meta = read_meta(path)
    if args.json:
        print(json.dumps(meta, indent=2, sort_keys=True))
        return 0
    print(f"teacher cache {path}")
    if not meta.get("complete"):
        print(f"  INCOMPLETE: {meta.get('images_done', '?')} of {meta.get('num_images', '?')} images done")
    for key in sorted(meta):
        print(f"  {key}: {_format_value(meta[key])}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from tinysiglip.cache.reader import open_cache

    started = time.perf_counter()
    cache = open_cache(args.path, verify=True)
    print(
        f"OK {cache.path}: {len(cache.meta.get('checksums', {}))} dataset checksums match "
        f"({time.perf_counter() - started:.1f}s)"
    )
    return 0
