"""Sweep overhead: wall time of N short trials through the sweep driver (``python -m tinysiglip.sweep``:
Ray Tune + Optuna + SQL study database) vs. calling the same training function N times in one
process; and ``--max-concurrent 1`` vs ``2`` on this machine.

The training function is ``bench.sweep_stub:bench_train`` (injected with the driver's hidden
``--train-fn/--caches-fn/--teacher-metrics-fn`` hooks, as tests/test_sweep_driver.py does): each
epoch does a fixed amount of single-thread compute (``--mode compute``, calibrated to
``--epoch-seconds`` here) or sleeps (``--mode sleep``). One cell, pruner none, no final runs.

  in-process      N x bench_train(config) in this process
  driver c1 (N)   the sweep, --max-concurrent 1
  driver c1 (N/3) the sweep with a third of the trials: separates fixed start-up from per-trial cost
  driver c2 (N)   the sweep, --max-concurrent 2 (two trials at once on the 2 cores)

``python -m bench.sweep_overhead [--quick] [--trials N] [--epochs E] [--mode compute|sleep]``
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from bench import common

STUDY = """\
study: benchsweep
teachers: {t: {source: google/siglip2-base-patch16-224}}
datasets: {d: {kind: local_shapes}}
defaults:
  student: {name: vit_small}
  loss: {feat: 1.0, affinity: 0.0, contrast: 1.0}
grid:
  only: {description: one cell}
search_space: {params: {loss.feat: {type: float, low: 0.01, high: 1.0}}}
trials_per_cell: 2
budget: {epochs: 2, eval_every_epochs: 1}
objective: {metric: mean_r1, direction: maximize}
pruner: {type: none}
sampler: {type: random, seed: 0}
final: {seeds: [0]}
resources: {cpus_per_trial: 1, gpus_per_trial: 0}
max_failures: 0
"""


def calibrate(seconds: float) -> int:
    import torch

    os.environ["TSL_BENCH_MODE"] = "compute"
    from bench.sweep_stub import work_epoch

    torch.set_num_threads(1)
    os.environ["TSL_BENCH_ITERS"] = "200"
    work_epoch()
    t0 = time.perf_counter()
    work_epoch()
    per = (time.perf_counter() - t0) / 200
    return max(1, int(seconds / per))


def main(argv=None) -> int:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=None)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--epoch-seconds", type=float, default=0.5)
    p.add_argument("--mode", default="compute", choices=("compute", "sleep"))
    args = p.parse_args(argv)
    common.setup_torch(args)
    n = args.trials or (6 if args.quick else 12)
    small = max(1, n // 3)
    reps = args.reps or (1 if args.quick else 3)
    work = args.work_dir / "sweep_overhead"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    study_file = work / "study.yaml"
    study_file.write_text(STUDY)
    env = dict(os.environ)
    root = common.BENCH_DIR.parent
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    env["TSL_BENCH_MODE"] = args.mode
    env["TSL_BENCH_SLEEP"] = str(args.epoch_seconds)
    if args.mode == "compute":
        env["TSL_BENCH_ITERS"] = str(calibrate(args.epoch_seconds))
    os.environ.update(
        {k: env[k] for k in ("TSL_BENCH_MODE", "TSL_BENCH_SLEEP", "TSL_BENCH_ITERS") if k in env}
    )
    counter = [0]

    def driver(trials, conc):
        def go():
            counter[0] += 1
            run_dir = work / f"run{counter[0]}"
            cmd = [
                sys.executable,
                "-m",
                "tinysiglip.sweep",
                str(study_file),
                "--run-dir",
                str(run_dir),
                "--trials-per-cell",
                str(trials),
                "--epochs",
                str(args.epochs),
                "--no-final",
                "--max-concurrent",
                str(conc),
                "--num-cpus",
                "2",
                "--train-fn",
                "bench.sweep_stub:bench_train",
                "--caches-fn",
                "bench.sweep_stub:bench_caches",
                "--teacher-metrics-fn",
                "bench.sweep_stub:bench_teacher_metrics",
            ]
            t0 = time.perf_counter()
            out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
            dt = time.perf_counter() - t0
            if out.returncode != 0:
                print(out.stdout[-2000:], out.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"sweep failed ({out.returncode})")
            shutil.rmtree(run_dir, ignore_errors=True)
            return dt

        return go

    def inprocess():
        from bench.sweep_stub import bench_train

        t0 = time.perf_counter()
        for k in range(n):
            config = {"train": {"epochs": args.epochs}, "loss": {"feat": (k + 1) / n}}
            bench_train(config, run_dir=work / "inproc" / str(k), report=lambda e: None)
        return time.perf_counter() - t0

    variants = {
        "in-process": inprocess,
        f"driver c1 ({n})": driver(n, 1),
        f"driver c1 ({small})": driver(small, 1),
        f"driver c2 ({n})": driver(n, 2),
    }
    times = common.interleave(variants, reps)
    med = {k: common.median(v) for k, v in times.items()}
    t_in = med["in-process"]
    c1, c1s, c2 = med[f"driver c1 ({n})"], med[f"driver c1 ({small})"], med[f"driver c2 ({n})"]
    per_trial = (c1 - c1s) / (n - small) if n > small else float("nan")
    work_per_trial = t_in / n
    fixed = c1 - n * per_trial
    rows = [
        [k, f"{v:.1f}", f"{v / n:.2f}" if "(" not in k or f"({n})" in k else "", f"{v / t_in:.1f}x"]
        for k, v in med.items()
    ]
    body = (
        f"{n} trials x {args.epochs} epochs, {args.mode} {args.epoch_seconds}s/epoch "
        f"(work {work_per_trial:.2f}s/trial), one cell, pruner none, --no-final, --num-cpus 2, {reps} rep(s).\n\n"
        + common.table(["variant", "wall s", "s/trial", "vs in-process"], rows)
        + f"\n\nDriver fixed cost (Ray start, DB, study setup, shutdown) ≈ {fixed:.1f} s; "
        f"per-trial cost ≈ {per_trial:.2f} s of which {per_trial - work_per_trial:.2f} s is overhead "
        f"(Ray actor/trial scheduling + Optuna + DB writes); --max-concurrent 2 takes {c2 / c1:.2f}x the wall time of --max-concurrent 1."
    )
    common.report("Sweep overhead (Ray Tune + Optuna + DB vs in-process)", common.command_line(), body, args)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
