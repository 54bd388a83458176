"""`tinysiglip <stage> ...`: one subcommand per stage, so each stage can be run and debugged alone.

tinysiglip make-shapes      write the synthetic captioned-image dataset (local world)
tinysiglip teacher ...      inspect a teacher / train the local-world teacher
tinysiglip local-world      make the whole local world (data, teacher, caches) once
tinysiglip cache ...        build / inspect / verify an HDF5 teacher cache
tinysiglip train            train one student from caches (config file + overrides)
tinysiglip eval             Recall@K of a trained student (or the teacher) on a cache
tinysiglip sweep            run a study (same as python -m tinysiglip.sweep)
tinysiglip forecast         a study's trial-epochs, device-hours and wall time before it runs
tinysiglip report           tables from the study database
tinysiglip dashboards       Plotly HTML dashboards from the study database
tinysiglip prune-replay     replay a study's learning curves through other pruners (epochs saved, regret)
tinysiglip schema ...       JSON Schema of study files, training configs or search spaces (for editors)
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

from tinysiglip.errors import TinySigLIPError, check_writable_folder

# Areas that register their own subcommands: module path -> register(subparsers).
_REGISTRARS = (
    "tinysiglip.data.cli",
    "tinysiglip.teacher.cli",
    "tinysiglip.local_world",
    "tinysiglip.cache.cli",
    "tinysiglip.results.replay",
    "tinysiglip.sweep.forecast",
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

    check_writable_folder(args.run_dir, "--run-dir")  # run_training makes it once the inputs are checked
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
            "Evaluate image-text retrieval on a teacher cache. Give --student DIR (a run folder, its "
            "student/ or its checkpoint/ folder) or --teacher to score the teacher from its cached embeddings. "
            "A cache of another teacher, teacher view, image size or embedding width than the student's "
            "training caches is refused, and so is one that shares images with the student's training cache."
        ),
    )
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--student", help="run_dir, run_dir/student or run_dir/checkpoint")
    who.add_argument("--teacher", action="store_true", help="score the cached teacher embeddings")
    parser.add_argument("--cache", required=True, help="HDF5 teacher cache of the split to evaluate")
    parser.add_argument("--json", dest="json_out", help="also write the metrics as JSON here")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, mps)")
    parser.add_argument(
        "--train-cache",
        help="the student's training cache, for the leakage check (default: the one it recorded)",
    )
    parser.add_argument(
        "--allow-cache-mismatch",
        action="store_true",
        help="evaluate although the cache's teacher, view, image size or width differs from the student's",
    )
    parser.add_argument(
        "--allow-leakage",
        action="store_true",
        help="evaluate although the cache shares images with the student's training cache (reported)",
    )
    parser.set_defaults(func=_run_eval)


def _student_folder(given: str) -> Path:
    """run_dir, run_dir/student or run_dir/checkpoint -> the folder holding student_config.json."""
    from tinysiglip.students.model import CONFIG_NAME

    path = Path(given).expanduser()
    if not path.exists():
        raise TinySigLIPError(f"--student {given}: no such folder")
    for folder in (path, path / "student", path / "checkpoint"):
        if (folder / CONFIG_NAME).is_file():
            return folder
    if (path / "trainer_state.json").is_file():
        raise TinySigLIPError(
            f"--student {given}: this checkpoint was written before checkpoints recorded the student's "
            f"architecture ({CONFIG_NAME}); evaluate the run's exported student ({path.parent / 'student'}), "
            "or rerun `tinysiglip train` with the same --run-dir to resave it"
        )
    raise TinySigLIPError(
        f"--student {given}: not a student folder (no {CONFIG_NAME} in it, nor in its student/ or "
        "checkpoint/ subfolder); give the run folder of `tinysiglip train`, its student/ or its checkpoint/"
    )


def _device(name: str):
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise TinySigLIPError(
            f"--device {name!r} is not a torch device ({error}); use cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TinySigLIPError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def _check_student_cache(model, cache, args: argparse.Namespace) -> dict:
    """Refuse a cache of another teacher/view/size/width and one that leaks the student's training
    images (unless overridden); returns what was checked, for the JSON output."""
    from tinysiglip.cache import check_leakage
    from tinysiglip.cache.format import student_cache_mismatches

    record = dict(model.config.get("training_cache") or {})
    record.setdefault("embed_dim", model.config.get("embed_dim"))
    record.setdefault("image_size", model.config.get("image_size"))
    checks: dict = {"training_cache": record or None}
    mismatches = student_cache_mismatches(record, cache.meta)
    if "teacher_fingerprint" not in record:
        print(
            "warning: the student records no teacher fingerprint (trained before they were recorded); "
            "only the image size and embedding width were checked",
            file=sys.stderr,
        )
    if mismatches and not args.allow_cache_mismatch:
        raise TinySigLIPError(
            f"{args.cache} is not a cache the student {args.student} can be evaluated on:\n  "
            + "\n  ".join(mismatches)
            + "\nEvaluate it on a cache of its own teacher (same view, size and width), or pass "
            "--allow-cache-mismatch to evaluate anyway (the mismatch is reported)."
        )
    checks["cache_mismatches"] = mismatches
    train_path = args.train_cache or record.get("path")
    if train_path and Path(train_path).is_file():
        report = check_leakage(
            train_path, {"eval": cache}, allow=args.allow_leakage, override_hint="pass --allow-leakage"
        )
        checks["leakage"] = report.as_record()
        if report.describe_near():
            print(
                f"note: near-duplicates (reported, not refused):\n{report.describe_near()}", file=sys.stderr
            )
    else:
        print(
            f"warning: leakage not checked: the student's training cache {train_path!r} is not here "
            "(point to it with --train-cache)",
            file=sys.stderr,
        )
        checks["leakage"] = None
    return checks


def _run_eval(args: argparse.Namespace) -> int:
    from tinysiglip.cache import open_cache
    from tinysiglip.evaluate import format_metrics, retrieval_metrics

    if args.json_out:  # fail before the evaluation, not after it
        json_out = Path(args.json_out).expanduser()
        if json_out.is_dir() or not json_out.parent.is_dir() or not os.access(json_out.parent, os.W_OK):
            raise TinySigLIPError(
                f"--json {args.json_out}: cannot write a file there (a folder, or a folder that does not "
                "exist or is not writable)"
            )
    cache = open_cache(args.cache)
    checks: dict = {}
    if args.teacher:
        metrics = retrieval_metrics(cache.image_embeds(), cache.text_embeds(), cache.caption_image_index())
        metrics["mean_r1"] = (metrics["i2t_r1"] + metrics["t2i_r1"]) / 2
        title = f"teacher {cache.meta.get('teacher_source')} on {args.cache}"
    else:
        from tinysiglip.students import load_student
        from tinysiglip.train import evaluate_student

        device = _device(args.device)
        model = load_student(_student_folder(args.student)).to(device)
        checks = _check_student_cache(model, cache, args)
        metrics = evaluate_student(model, args.cache, device=device)
        title = f"student {args.student} on {args.cache}"
    print(format_metrics(metrics, title))
    if args.json_out:
        try:
            Path(args.json_out).expanduser().write_text(json.dumps({**metrics, "checks": checks}, indent=2))
        except OSError as error:
            raise TinySigLIPError(f"--json {args.json_out}: {error.strerror or error}") from error
    return 0


def _add_schema(subparsers: argparse._SubParsersAction) -> None:
    from tinysiglip.schemas import SCHEMAS

    parser = subparsers.add_parser(
        "schema",
        help="print the JSON Schema of study files, training configs or search spaces",
        description=(
            "Print the JSON Schema of a file kind, exported from the models that validate it. Editors with the "
            "YAML language server complete and check a file whose first line is "
            "`# yaml-language-server: $schema=<path to the schema>`; schemas/ holds the committed copies "
            "(regenerate one with `tinysiglip schema study > schemas/study.schema.json`)."
        ),
    )
    parser.add_argument("kind", choices=list(SCHEMAS), help="which file kind")
    parser.set_defaults(func=_run_schema)


def _run_schema(args: argparse.Namespace) -> int:
    from tinysiglip.schemas import schema_text

    sys.stdout.write(schema_text(args.kind))
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
    _add_schema(subparsers)
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
