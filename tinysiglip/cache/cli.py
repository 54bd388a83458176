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
        "--teacher-view",
        choices=("teacher", "student"),
        default="teacher",
        help="which view of each image the stored teacher embedding is: 'teacher' (default), the "
        "teacher's processor on the original image (NaFlex teachers keep the aspect ratio), or 'student', "
        "the stored square the student reads. Fixed-resolution teachers see the square either way.",
    )
    build.add_argument(
        "--exclude-karpathy",
        metavar="FILE",
        help="leave out the images of the val and test splits of this Karpathy split file "
        "(e.g. train on captions_train2017.json minus the Karpathy 5k test set)",
    )
    build.add_argument(
        "--exclude-splits",
        default="val,test",
        help="with --exclude-karpathy: which of its splits to leave out (default val,test)",
    )
    build.add_argument(
        "--exclude-ids", metavar="FILE", help="leave out these image ids (JSON list, or one id per line)"
    )
    build.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave out images that cannot be decoded (recorded in the cache metadata); without it, "
        "every image is decoded first and any bad one stops the build before the teacher loads",
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
    from tinysiglip.data import (
        exclude_images,
        karpathy_image_ids,
        load_coco_captions,
        load_karpathy_split,
        read_image_id_list,
    )
    from tinysiglip.errors import TinySigLIPError

    if args.karpathy:
        if not args.split:
            raise TinySigLIPError("tinysiglip cache build: --split is required with --karpathy")
        dataset = load_karpathy_split(args.karpathy, args.images, args.split, name=args.name)
    else:
        dataset = load_coco_captions(args.coco_captions, args.images, name=args.name, split=args.split)
    ids: set[int] = set()
    sources = []
    if args.exclude_karpathy:
        splits = tuple(s.strip() for s in args.exclude_splits.split(",") if s.strip())
        ids |= karpathy_image_ids(args.exclude_karpathy, splits)
        sources.append(f"{args.exclude_karpathy} ({'+'.join(splits)})")
    if args.exclude_ids:
        ids |= read_image_id_list(args.exclude_ids)
        sources.append(str(args.exclude_ids))
    if sources:
        dataset = exclude_images(dataset, ids, source="; ".join(sources))
        print(
            f"left out {dataset.excluded['count']} image(s) listed in {dataset.excluded['source']}",
            flush=True,
        )
    return dataset


def run_build(args: argparse.Namespace) -> int:
    import shlex
    import sys
    from pathlib import Path

    from tinysiglip.cache.build import bad_images_report_path, build_cache
    from tinysiglip.cache.reader import open_cache
    from tinysiglip.data import check_images
    from tinysiglip.errors import check_writable_folder
    from tinysiglip.teacher import load_teacher

    started = time.perf_counter()
    check_writable_folder(Path(args.out).expanduser().parent, "--out: the folder")  # before the work
    dataset = _load_dataset(args)
    out = Path(args.out)
    if args.skip_bad_images or not out.exists():  # decode every image before the teacher loads
        print(f"checking {len(dataset.records)} images ...", flush=True)
        dataset = check_images(
            dataset, skip_bad=args.skip_bad_images, report_path=bad_images_report_path(out)
        )
        if dataset.skipped:
            print(
                f"skipping {len(dataset.skipped)} bad image(s) (recorded in the cache metadata)", flush=True
            )
    teacher = load_teacher(args.teacher, revision=args.revision, device=args.device)
    command = (
        "tinysiglip " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["cache"] else None
    )
    out = build_cache(
        teacher,
        dataset,
        out,
        batch_size=args.batch_size,
        embed_dtype=args.embed_dtype,
        device=args.device,
        progress=not args.no_progress,
        num_workers=args.num_workers,
        teacher_view=args.teacher_view,
        notes={"build_command": command} if command else None,
    )
    cache = open_cache(out)
    print(
        f"teacher cache {out}: {cache.num_images} images, {cache.num_captions} captions, "
        f"embed_dim {cache.embed_dim}, image_size {cache.image_size}, teacher view {cache.meta['teacher_view']}, "
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
    summary = (
        (
            "teacher",
            f"{meta.get('teacher_source')} ({meta.get('teacher_kind')}, {meta.get('teacher_fingerprint')})",
        ),
        ("teacher view", f"{meta.get('teacher_view')}: {meta.get('teacher_view_detail')}"),
        (
            "data",
            f"{meta.get('dataset_name')}/{meta.get('split')}: {meta.get('num_images')} images, "
            f"{meta.get('num_captions')} captions, {meta.get('num_skipped_images', 0)} skipped, "
            f"{(meta.get('excluded_images') or {}).get('count', 0)} excluded",
        ),
    )
    for label, value in summary:
        print(f"  {label:<13} {value}")
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
