"""`tinysiglip <stage> ...`: one subcommand per stage, so each stage can be run and debugged alone.

tinysiglip make-shapes      write the synthetic captioned-image dataset (local world)
tinysiglip teacher ...      inspect a teacher / train the local-world teacher
tinysiglip local-world      make the whole local world (data, teacher, caches) once
tinysiglip cache ...        build / inspect / verify an HDF5 teacher cache
tinysiglip train            train one student from caches (config file + overrides)
tinysiglip eval             Recall@K of a trained student (or the teacher) on a cache
tinysiglip sweep            run a study (same as python -m tinysiglip.sweep)
tinysiglip report           tables from the study database
tinysiglip dashboards       Plotly HTML dashboards from the study database
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from tinysiglip.errors import TinySigLIPError

# Areas that register their own subcommands: module path -> register(subparsers).
_REGISTRARS = (
    "tinysiglip.data.cli",
    "tinysiglip.teacher.cli",
    "tinysiglip.local_world",
    "tinysiglip.cache.cli",
)
# Stages with their own ``python -m`` entry point; ``tinysiglip NAME args`` forwards to them.
_FORWARDED = {
    "sweep": "tinysiglip.sweep.__main__",
    "report": "tinysiglip.report",
    "dashboards": "tinysiglip.dashboards",
}


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train one student from teacher caches",
        description=(
            "Train one student from HDF5 teacher caches. The config is YAML (see docs/architecture.md); "
            "`--set section.key=value` overrides single fields, e.g. --set loss.feat=0 --set optim.lr=1e-3. "
            "A best-config file exported by `tinysiglip report` is a valid config."
        ),
    )
    parser.add_argument("--config", required=True, help="YAML training config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--local",
        nargs="?",
        const="local-m",
        metavar="TEACHER",
        help="train in the local world: its caches of TEACHER (default local-m), CPU-sized student, CPU",
    )
    parser.add_argument(
        "--run-dir", required=True, help="output folder; an existing checkpoint there is resumed"
    )
    parser.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from tinysiglip.evaluate import format_metrics
    from tinysiglip.train import load_config_file, run_training

    overrides = list(args.overrides)
    if args.local:
        from tinysiglip.local_world import local_world

        world = local_world()
        caches = {split: world.cache_path(args.local, split) for split in ("train", "val", "test")}
        overrides = [
            f"data.train_cache={caches['train']}",
            f"data.val_cache={caches['val']}",
            f"data.test_cache={caches['test']}",
            f"teacher.source={world.teacher_path(args.local)}",
            "student.scale=local",
            "train.device=cpu",
            *overrides,
        ]
    config = load_config_file(args.config, overrides)

    def report(event: dict) -> None:
        metrics = event["metrics"]
        print(
            f"epoch {event['epoch']:>3} step {event['step']:>6}  loss {event['loss']:.4f}  "
            f"val I2T R@1 {metrics['i2t_r1']:.2f}  T2I R@1 {metrics['t2i_r1']:.2f}",
            flush=True,
        )

    result = run_training(config, run_dir=args.run_dir, report=report, progress=True)
    print(f"status: {result['status']}" + (f" ({result['error']})" if result["error"] else ""))
    if result.get("test_metrics"):
        print(format_metrics(result["test_metrics"], "test split"))
    print(f"results: {Path(args.run_dir) / 'result.json'}; student: {Path(args.run_dir) / 'student'}")
    return 0 if result["status"] == "complete" else 1


def _add_eval(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="Recall@1/5/10 of a student checkpoint (or of the teacher) on a cache",
        description=(
            "Evaluate image-text retrieval on a teacher cache. Give --student DIR (a trained student folder or a "
            "run's checkpoint folder) or --teacher to score the teacher from its cached embeddings."
        ),
    )
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--student", help="student folder (run_dir/student or run_dir/checkpoint)")
    who.add_argument("--teacher", action="store_true", help="score the cached teacher embeddings")
    parser.add_argument("--cache", required=True, help="HDF5 teacher cache of the split to evaluate")
    parser.add_argument("--json", dest="json_out", help="also write the metrics as JSON here")
    parser.add_argument("--device", default="cpu")
    parser.set_defaults(func=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from tinysiglip.cache import open_cache
    from tinysiglip.evaluate import format_metrics, retrieval_metrics

    if args.teacher:
        cache = open_cache(args.cache)
        metrics = retrieval_metrics(cache.image_embeds(), cache.text_embeds(), cache.caption_image_index())
        metrics["mean_r1"] = (metrics["i2t_r1"] + metrics["t2i_r1"]) / 2
        title = f"teacher {cache.meta.get('teacher_source')} on {args.cache}"
    else:
        from tinysiglip.students import load_student
        from tinysiglip.train import evaluate_student

        model = load_student(args.student).to(args.device)
        metrics = evaluate_student(model, args.cache, device=args.device)
        title = f"student {args.student} on {args.cache}"
    print(format_metrics(metrics, title))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(metrics, indent=2))
    return 0


def _add_forwarded(subparsers: argparse._SubParsersAction) -> None:
    for name, module in _FORWARDED.items():
        parser = subparsers.add_parser(
            name, help=f"same as python -m {module.removesuffix('.__main__')}", add_help=False
        )
        parser.add_argument("rest", nargs=argparse.REMAINDER)
        parser.set_defaults(func=lambda args, module=module: importlib.import_module(module).main(args.rest))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinysiglip",
        description="Distil SigLIP 2 into small image-text students; run studies as sweeps.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _REGISTRARS:
        importlib.import_module(module).register(subparsers)
    _add_train(subparsers)
    _add_eval(subparsers)
    _add_forwarded(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _FORWARDED:  # these stages parse their own options
        return int(importlib.import_module(_FORWARDED[argv[0]]).main(argv[1:]) or 0)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except TinySigLIPError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to continue where it stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
