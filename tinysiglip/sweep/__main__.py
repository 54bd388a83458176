"""``python -m tinysiglip.sweep STUDY.yaml [--local] [--resume] [--storage URL] [--max-concurrent N]
[--dry-run [--forecast]] [--dashboard]`` (+ small-budget overrides: ``--trials-per-cell N --epochs N --seeds 0,1``)."""

from __future__ import annotations

import argparse
import sys

from tinysiglip.errors import TinySigLIPError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tinysiglip.sweep",
        description="Run a study: Ray Tune over the grid, one Optuna study per cell, the SQL study database.",
    )
    p.add_argument("study", help="study file (studies/*.yaml)")
    p.add_argument(
        "--local",
        action="store_true",
        help="run the study in the local world: synthetic data, local teacher, tiny budgets, CPU",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="finish a study already in the database (nothing finished runs again)",
    )
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="with --resume: run every failed trial again with its parameters (it no longer counts)",
    )
    p.add_argument(
        "--storage", metavar="URL", help="SQLAlchemy URL of the study database (overrides the file)"
    )
    p.add_argument("--run-dir", metavar="DIR", help="run folder (overrides the file)")
    p.add_argument("--max-concurrent", type=int, metavar="N", help="at most N trials at once")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the expanded grid, trial counts, final runs and resources; run nothing",
    )
    p.add_argument(
        "--forecast",
        action="store_true",
        help="time the study's optimiser steps here (or read earlier runs' from the database) and print, per "
        "cell and in total, trial-epochs, device-hours with and without the expected pruning and wall time; "
        "stored in the study database (with --dry-run: nothing else runs)",
    )
    p.add_argument(
        "--num-gpus", type=int, metavar="N", help="GPUs for --forecast's wall time (default: all here)"
    )
    p.add_argument("--dashboard", action="store_true", help="start the Ray dashboard on 127.0.0.1")
    p.add_argument("--num-cpus", type=int, metavar="N", help="CPUs a private Ray may use (default: all)")
    p.add_argument(
        "--address",
        metavar="ADDR",
        help="attach to this Ray cluster (host:port of its head, ray://host:10001, auto); default: "
        "RAY_ADDRESS, else a cluster `ray start` runs on this machine, else a private Ray on 127.0.0.1 "
        "(`local` forces that)",
    )
    p.add_argument(
        "--artifacts",
        metavar="URI",
        help="where trial checkpoints and students go (Ray Tune storage_path): a path every node shares, "
        "or s3://, gs://, ... (default: RUN_DIR/ray on this machine)",
    )
    small = p.add_argument_group("small-budget overrides (tests and smoke runs)")
    small.add_argument("--trials-per-cell", type=int, metavar="N")
    small.add_argument("--epochs", type=int, metavar="N", help="epochs per trial and final run")
    small.add_argument("--seeds", metavar="S,S", help="final-run seeds, comma separated")
    small.add_argument("--no-final", action="store_true", help="skip the final runs")
    # test hooks: "module:function" importable in Ray workers (PYTHONPATH)
    p.add_argument("--train-fn", help=argparse.SUPPRESS)
    p.add_argument("--caches-fn", help=argparse.SUPPRESS)
    p.add_argument("--teacher-metrics-fn", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tinysiglip.sweep.driver import run_sweep
    from tinysiglip.sweep.options import SweepOptions
    from tinysiglip.sweep.preflight import apply_overrides, plan_text, resource_check_text
    from tinysiglip.sweep.study import load_study
    from tinysiglip.sweep.trainable import import_function

    try:
        seeds = None
        if args.seeds:
            try:
                seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
            except ValueError:
                seeds = []
            if not seeds:
                raise TinySigLIPError(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
        for name in ("trials_per_cell", "epochs", "max_concurrent", "num_cpus"):
            v = getattr(args, name)
            if v is not None and v < 1:
                raise TinySigLIPError(f"--{name.replace('_', '-')} must be at least 1, got {v}")
        if args.num_gpus is not None and args.num_gpus < 0:
            raise TinySigLIPError(f"--num-gpus must be 0 or more, got {args.num_gpus}")
        if args.retry_failed and not args.resume:
            raise TinySigLIPError("--retry-failed finishes a study: give --resume with it")
        study = load_study(args.study, local=args.local, storage=args.storage, run_dir=args.run_dir)
        options = SweepOptions(
            resume=args.resume,
            retry_failed=args.retry_failed,
            max_concurrent=args.max_concurrent,
            dashboard=args.dashboard,
            trials_per_cell=args.trials_per_cell,
            epochs=args.epochs,
            seeds=seeds,
            num_cpus=args.num_cpus,
            skip_final=args.no_final,
            train_fn=args.train_fn,
            address=args.address,
            artifacts=args.artifacts,
        )
        if args.dry_run or args.forecast:
            apply_overrides(study, options)
        if args.dry_run:
            print(study.describe())
            print(plan_text(study))
            print(resource_check_text(study, options))
        if args.forecast:
            from tinysiglip.sweep.forecast import run_forecast

            run_forecast(study, num_cpus=args.num_cpus, num_gpus=args.num_gpus)
        if args.dry_run:
            return 0
        summary = run_sweep(
            study,
            options,
            ensure_caches=import_function(args.caches_fn) if args.caches_fn else None,
            teacher_metrics=import_function(args.teacher_metrics_fn) if args.teacher_metrics_fn else None,
        )
        if not summary.ok:
            print(
                f"error: {len(summary.failed_runs)} run(s) failed: {', '.join(summary.failed_runs)} "
                "(errors above and in the study database)",
                file=sys.stderr,
            )
            return 1
        return 0
    except TinySigLIPError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # SweepInterrupted (SIGINT/SIGTERM) says what was left and how to finish
        text = str(exc) or "interrupted"
        if "--resume" not in text:
            text += ": rerun with --resume to finish the study"
        print(text, file=sys.stderr)
        return int(getattr(exc, "exit_code", 130))


if __name__ == "__main__":
    sys.exit(main())
