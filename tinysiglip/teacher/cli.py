"""`tinysiglip teacher ...`: inspect a teacher, train the local-world teacher."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tinysiglip.errors import TinySigLIPError

# Options left out fall back to LocalTeacherConfig's defaults (kept there, in one place).
_TRAIN_OPTIONS = (
    ("--steps", int, "optimizer steps"),
    ("--batch-size", int, "images per step"),
    ("--image-size", int, "square image side of the teacher"),
    ("--patch-size", int, "ViT patch size"),
    ("--hidden", int, "width of both towers (= embedding width)"),
    ("--vision-layers", int, "image tower depth"),
    ("--text-layers", int, "text tower depth"),
    ("--lr", float, "peak AdamW learning rate"),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "teacher",
        help="inspect a teacher / train the local-world teacher",
        description="Inspect a SigLIP / SigLIP 2 teacher or train the small local-world teacher.",
    )
    teacher_commands = parser.add_subparsers(dest="teacher_command", metavar="SUBCOMMAND", required=True)

    train = teacher_commands.add_parser(
        "train-local",
        help="train the local-world teacher on a shapes dataset (CPU, a few minutes)",
        description=(
            "Train a small SiglipModel on the train split of a shapes dataset (written by "
            "`tinysiglip make-shapes`), save it in Hugging Face format and report retrieval on val/test. "
            "Rerunning with the same data, seed and options reuses the folder."
        ),
    )
    train.add_argument("--data-root", required=True, help="folder of a shapes dataset (make-shapes --out)")
    train.add_argument("--out", required=True, help="output folder of the teacher")
    train.add_argument("--seed", type=int, default=0)
    for flag, kind, help_text in _TRAIN_OPTIONS:
        train.add_argument(flag, type=kind, default=None, help=f"{help_text} (default: LocalTeacherConfig)")
    train.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    train.set_defaults(func=run_train_local)

    info = teacher_commands.add_parser(
        "info",
        help="print a teacher's kind, widths, logit scale/bias and fingerprints",
        description="Load a teacher (Hub id or local folder) and print what the cache and students rely on.",
    )
    info.add_argument("source", help="Hub id (e.g. google/siglip2-base-patch16-224) or local folder")
    info.add_argument("--revision", default=None)
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=run_info)


def _load_split(data_root: Path, split: str):
    from tinysiglip.data import load_coco_captions

    annotation_file = data_root / "annotations" / f"captions_{split}.json"
    if not annotation_file.is_file():
        return None
    return load_coco_captions(annotation_file, data_root / "images" / split, name="shapes", split=split)


def run_train_local(args: argparse.Namespace) -> int:
    from tinysiglip.teacher.local import read_local_teacher_info, train_local_teacher

    data_root = Path(args.data_root).expanduser()
    train = _load_split(data_root, "train")
    if train is None:
        raise TinySigLIPError(
            f"{data_root / 'annotations' / 'captions_train.json'} not found: --data-root must be a folder "
            "written by `tinysiglip make-shapes --out`"
        )
    overrides = {}
    for flag, _, _ in _TRAIN_OPTIONS:
        name = flag.removeprefix("--").replace("-", "_")
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    started = time.perf_counter()
    out = train_local_teacher(
        train,
        args.out,
        val=_load_split(data_root, "val"),
        test=_load_split(data_root, "test"),
        seed=args.seed,
        num_threads=args.threads,
        **overrides,
    )
    marker = read_local_teacher_info(out) or {}
    print(
        f"local teacher: {out} ({time.perf_counter() - started:.1f}s; trained in {marker['seconds']['train']}s)"
    )
    for split, metrics in (marker.get("retrieval") or {}).items():
        print(
            f"  {split}: I2T R@1 {metrics['i2t_r1']:.1f}  T2I R@1 {metrics['t2i_r1']:.1f}  "
            f"(chance {metrics['chance_i2t_r1']:.2f} / {metrics['chance_t2i_r1']:.2f}; "
            f"{metrics['num_images']} images, {metrics['num_captions']} captions)"
        )
    return 0


def run_info(args: argparse.Namespace) -> int:
    from tinysiglip.teacher.hf import load_teacher

    teacher = load_teacher(args.source, revision=args.revision)
    info = teacher.info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"teacher     {info['source']}" + (f" @ {info['revision']}" if info["revision"] else ""))
    print(f"kind        {info['kind']} ({info['model_class']})")
    print(f"embed dim   {info['embed_dim']}")
    print(f"image size  {info['image_size']} px (patch {info['patch_size']}, resample {info['resample']})")
    if info["views_differ"]:
        print(
            f"views       NaFlex: its processor keeps the aspect ratio within {info['max_num_patches']} patches; "
            f"the cache stores that view by default, the student reads the {info['image_size']} px square"
        )
    print(f"mean / std  {info['image_mean']} / {info['image_std']}")
    print(f"logits      scale {info['logit_scale']:.4f}  bias {info['logit_bias']:.4f}")
    print(f"text        max length {info['max_length']}, vocab {info['vocab_size']}")
    for name, digest in info["fingerprints"].items():
        print(f"fingerprint {name:<10} {digest}")
    print(f"content     {info['content_fingerprint']} (weights, config, processor and tokenizer files)")
    return 0
