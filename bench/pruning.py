"""Pruning: trial-epochs run with the median pruner vs. without (pruner type none) for a small
local-world study (real training: tiny world, local-m teacher, ViT-Small local), and whether the best
configuration found is the same.

One cell (full method), a random sampler with a fixed seed (both runs draw the same configurations
in the same order), --max-concurrent 1 (deterministic order for the pruner), no final runs. The
study YAML is written from the template below (``pruner: PRUNER``). Trial-epochs come from the study
database (``epochs_done`` per trial).

``python -m bench.pruning [--quick] [--trials N] [--epochs E]``   (needs the tiny local world: built on
first use under $TINYSIGLIP_LOCAL_WORLD, default /tmp/tsl_bench/lw, a few minutes)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from bench import common

STUDY = """\
study: benchprune
teachers: {large: {source: google/siglip2-large-patch16-256}}
datasets: {coco: {karpathy: data/coco/dataset_coco.json, images: data/coco}}
defaults:
  teacher: large
  dataset: coco
  student: {name: vit_small, pretrained: false}
  loss: {feat: 1.0, affinity: 1.0, contrast: 1.0, contrastive: sigmoid}
  optim: {lr: 5.0e-4, weight_decay: 0.05, batch_size: 32, warmup_fraction: 0.05, grad_clip: 1.0}
grid:
  full: {description: "Full method"}
search_space:
  params:
    optim.lr: {type: float, low: 1.0e-5, high: 3.0e-3, log: true}
    lambda_feat: {type: float, low: 0.1, high: 10.0, log: true}
trials_per_cell: 6
budget: {epochs: 3, eval_every_epochs: 1}
objective: {metric: mean_r1, direction: maximize}
pruner: PRUNER
sampler: {type: random, seed: 0}
final: {seeds: [0]}
resources: {cpus_per_trial: 1, gpus_per_trial: 0}
max_failures: 0
max_concurrent: 1
local:
  teachers: {large: local-m}
  datasets: {coco: {kind: local_shapes}}
  resources: {cpus_per_trial: 1, gpus_per_trial: 0}
  config:
    student: {scale: local}
    train: {threads: 1}
"""

PRUNERS = {
    "median": "{type: median, n_startup_trials: 2, n_warmup_steps: 0, interval_steps: 1}",
    "none": "{type: none}",
}


def main(argv=None) -> int:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    args = p.parse_args(argv)
    common.setup_torch(args)
    from tinysiglip.results.store import open_store

    trials = args.trials or (6 if args.quick else 12)
    epochs = args.epochs or (3 if args.quick else 5)
    reps = args.reps or 1
    work = args.work_dir / "pruning"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = dict(os.environ)
    env.setdefault("TINYSIGLIP_LOCAL_WORLD", str(args.work_dir / "lw"))
    env["TINYSIGLIP_LOCAL_WORLD_SIZE"] = "tiny"
    root = common.BENCH_DIR.parent
    # make the world first (not timed)
    subprocess.run(
        [sys.executable, "-m", "tinysiglip", "local-world", "--size", "tiny"],
        cwd=root,
        env=env,
        check=True,
        capture_output=True,
    )
    results: dict[str, list[dict]] = {name: [] for name in PRUNERS}
    counter = [0]

    def variant(name):
        def go():
            counter[0] += 1
            study = work / f"{name}.yaml"
            study.write_text(STUDY.replace("PRUNER", PRUNERS[name]))
            run_dir = work / f"run{counter[0]}-{name}"
            cmd = [
                sys.executable,
                "-m",
                "tinysiglip.sweep",
                str(study),
                "--local",
                "--run-dir",
                str(run_dir),
                "--trials-per-cell",
                str(trials),
                "--epochs",
                str(epochs),
                "--no-final",
                "--num-cpus",
                "2",
                "--max-concurrent",
                "1",
            ]
            t0 = time.perf_counter()
            out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if out.returncode != 0:
                print(out.stdout[-2000:], out.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"sweep failed ({out.returncode})")
            store = open_store(f"sqlite:///{run_dir / 'study.db'}")
            runs = store.runs("benchprune", kind="trial")
            done = [r for r in runs if r.status in ("complete", "pruned")]
            best = max((r for r in runs if r.status == "complete"), key=lambda r: r.objective)
            results[name].append(
                {
                    "wall": wall,
                    "trial_epochs": sum(int(r.epochs_done or 0) for r in runs),
                    "pruned": sum(r.status == "pruned" for r in runs),
                    "trials": len(done),
                    "best_trial": best.optuna_trial_number,
                    "best_params": {k: round(float(v), 6) for k, v in best.params.items()},
                    "best": best.objective,
                    "per_trial": {
                        r.optuna_trial_number: (r.status, r.epochs_done, r.objective) for r in runs
                    },
                }
            )
            return wall

        return go

    times = common.interleave({name: variant(name) for name in PRUNERS}, reps)
    rows = []
    for name in PRUNERS:
        r = results[name][-1]
        rows.append(
            [
                name,
                f"{common.median(times[name]):.0f}",
                r["trials"],
                r["pruned"],
                r["trial_epochs"],
                trials * epochs,
                f"#{r['best_trial']} {r['best_params']}",
                f"{r['best']:.2f}",
            ]
        )
    same = results["median"][-1]["best_params"] == results["none"][-1]["best_params"]
    detail = "\n".join(
        f"- {name}: "
        + ", ".join(
            f"#{k} {s} e{e} {o if o is None else round(o, 2)}"
            for k, (s, e, o) in sorted(results[name][-1]["per_trial"].items())
        )
        for name in PRUNERS
    )
    body = (
        f"local world tiny (local-m teacher, 512 train images), vit_small (local), batch 32, {trials} trials x "
        f"{epochs} epochs, random sampler seed 0, --max-concurrent 1, one run per variant.\n\n"
        + common.table(
            [
                "pruner",
                "wall s",
                "trials",
                "pruned",
                "trial-epochs",
                "budget",
                "best trial (params)",
                "best mean_r1",
            ],
            rows,
        )
        + f"\n\nSame best configuration with and without pruning: {same}.\n\nPer trial (status, epochs, objective):\n{detail}"
    )
    common.report("Pruning (median vs none, local world)", common.command_line(), body, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
