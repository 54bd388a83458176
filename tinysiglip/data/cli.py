"""`tinysiglip make-shapes`: write the synthetic shapes dataset (the local world's data)."""

from __future__ import annotations

import argparse
import time

from tinysiglip.data.shapes import DEFAULT_SIZES, make_shapes


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "make-shapes",
        help="write the synthetic shapes dataset (COCO captions + Karpathy formats)",
        description="Write a deterministic synthetic captioned-image dataset in the COCO captions format.",
    )
    parser.add_argument(
        "--out", required=True, help="output folder (new, empty, or an earlier shapes dataset)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed -> same bytes)")
    for split, count in DEFAULT_SIZES.items():
        parser.add_argument(
            f"--{split}", type=int, default=count, help=f"number of {split} images (default {count})"
        )
    parser.add_argument("--image-size", type=int, default=64, help="square image side in pixels (default 64)")
    parser.set_defaults(func=run_make_shapes)


def run_make_shapes(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    paths = make_shapes(
        args.out,
        seed=args.seed,
        sizes={"train": args.train, "val": args.val, "test": args.test},
        image_size=args.image_size,
    )
    seconds = time.perf_counter() - started
    print(f"shapes dataset written to {paths.root} in {seconds:.1f}s (seed {args.seed}, {args.image_size}px)")
    for split, annotation_file in paths.annotation_files.items():
        dataset = paths.load(split)
        print(
            f"  {split}: {len(dataset.records)} images, {dataset.num_captions} captions"
            f" -> images {paths.image_roots[split]}, captions {annotation_file}"
        )
    print(f"  Karpathy split file (all splits): {paths.karpathy_file} (image root {paths.image_root})")
    return 0
