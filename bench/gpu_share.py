"""GPU sharing: training steps/s of one trial alone vs. 2 and 4 trials on one GPU at the same time,
each a separate process that caps its memory (``torch.cuda.set_per_process_memory_fraction``), as
the sweep runs them (``gpu: 0.5`` / ``0.25`` per trial).

Every trial runs ``run_training``'s step (bench.common.Trainer: full-scale student, bf16 autocast,
AdamW, clipping) on one batch kept on the GPU, so the figure is the GPU's share, not the loader's.
The trials warm up, wait for each other at a barrier (files), then count steps for ``--seconds``.
Total throughput ratio = (sum of the trials' steps/s) / (steps/s alone).

``python -m bench.gpu_share [--quick] [--device cuda] [--trials 1,2,4] [--batch-size 256] [--image-size 224]``
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import common


def child(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
        torch.cuda.set_per_process_memory_fraction(spec["fraction"], device)
    trainer = common.Trainer(
        spec["cache"], student=spec["student"], scale=spec["scale"], device=spec["device"]
    )
    bs, size = spec["batch_size"], trainer.cache.image_size
    g = torch.Generator().manual_seed(spec["rank"])
    vocab = torch.as_tensor(trainer.cache.token_ids_present)
    batch = {
        "pixels": torch.randint(0, 256, (bs, 3, size, size), dtype=torch.uint8, generator=g),
        "input_ids": vocab[torch.randint(0, len(vocab), (bs, 64), generator=g)],
        "teacher_image_embed": torch.randn(bs, trainer.cache.embed_dim, generator=g),
        "teacher_text_embed": torch.randn(bs, trainer.cache.embed_dim, generator=g),
        "image_index": torch.arange(bs),
        "caption_index": torch.arange(bs),
    }
    batch = {key: value.to(device) for key, value in batch.items()}
    try:
        for _ in range(spec["warmup"]):
            trainer.step(batch)
        common.sync(device)
        barrier = Path(spec["barrier"])
        (barrier / f"ready-{spec['rank']}").touch()
        waited = time.perf_counter()
        while len(list(barrier.glob("ready-*"))) < spec["trials"] and time.perf_counter() - waited < 180:
            time.sleep(0.01)
        steps, t0 = 0, time.perf_counter()
        while True:
            trainer.step(batch)
            steps += 1
            if steps % 5 == 0:
                common.sync(device)
                if time.perf_counter() - t0 >= spec["seconds"]:
                    break
        common.sync(device)
        seconds = time.perf_counter() - t0
    except torch.OutOfMemoryError as error:
        (Path(spec["barrier"]) / f"ready-{spec['rank']}").touch()
        return {"error": f"out of memory at fraction {spec['fraction']}: {str(error)[:120]}"}
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"steps": steps, "seconds": seconds, "steps_per_s": steps / seconds, "peak_gb": peak}


def run_group(trials: int, base: dict) -> list[dict]:
    """``trials`` child processes at once, each capped at 1/trials of the GPU's memory."""
    with tempfile.TemporaryDirectory(prefix="tsl_gpu_share_") as barrier:
        procs = []
        for rank in range(trials):
            spec = dict(base, rank=rank, trials=trials, fraction=1.0 / trials, barrier=barrier)
            cmd = [sys.executable, "-m", "bench.gpu_share", "--child", json.dumps(spec)]
            procs.append(
                subprocess.Popen(
                    cmd,
                    cwd=common.BENCH_DIR.parent,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        out = []
        for proc in procs:
            stdout, stderr = proc.communicate()
            if proc.returncode != 0:
                out.append({"error": (stderr or stdout)[-300:]})
            else:
                out.append(json.loads(stdout.strip().splitlines()[-1]))
        return out


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--child":
        print(json.dumps(child(json.loads(sys.argv[2]))))
        return 0
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--trials", default="1,2,4")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--images", type=int, default=512, help="images in the cache the trials are built from")
    p.add_argument("--student", default="vit_small")
    p.add_argument("--scale", default="full", choices=("local", "full"))
    p.add_argument("--seconds", type=float, default=None, help="timed seconds per trial")
    p.add_argument("--child", help=argparse_suppress())
    args = p.parse_args(argv)
    common.setup_torch(args)
    dataset = common.make_shapes_split(args.work_dir, args.images, args.image_size)
    cache = common.make_cache(
        args.work_dir,
        common.make_teacher(args.work_dir, "tiny", args.image_size),
        dataset,
        "share",
        device=args.device,
    )
    base = {
        "cache": str(cache),
        "student": args.student,
        "scale": args.scale,
        "device": args.device,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "warmup": 2 if args.quick else 5,
        "seconds": args.seconds or (3.0 if args.quick else 12.0),
    }
    rows, alone = [], None
    for trials in [int(x) for x in args.trials.split(",")]:
        results = run_group(trials, base)
        print(trials, results, flush=True)
        errors = [r["error"] for r in results if "error" in r]
        if errors:
            rows.append([trials, f"{1 / trials:.2f}", "error: " + errors[0][-150:], "", "", ""])
            continue
        per_trial = [r["steps_per_s"] for r in results]
        total = sum(per_trial)
        alone = total if trials == 1 else alone
        ratio = f"{total / alone:.2f}" if alone else ""
        rows.append(
            [
                trials,
                f"{1 / trials:.2f}",
                f"{common.median(per_trial):.2f}",
                f"{total:.2f}",
                ratio,
                f"{max(r['peak_gb'] for r in results):.1f}",
            ]
        )
    body = (
        f"{args.student} ({args.scale}) at {args.image_size} px, batch {args.batch_size}, bf16 autocast on CUDA; "
        f"{base['warmup']} warm-up steps, then {base['seconds']:g} s counted after a barrier; one batch kept on the "
        "device (no loader).\n\n"
        + common.table(
            [
                "trials",
                "memory fraction each",
                "steps/s per trial",
                "total steps/s",
                "total vs alone",
                "peak GB",
            ],
            rows,
        )
    )
    common.report("GPU sharing (trials per GPU)", common.command_line(), body, args)
    return 0


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    raise SystemExit(main())
