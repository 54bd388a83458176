"""Evaluation at scale: ``retrieval_metrics`` (Recall@1/5/10 both ways) beside the similarity matmul
alone, at COCO 5k size (5,000 images x 25,010 captions, width 1024) and at 10x (50,000 x 250,100);
random embeddings, 5-7 captions per image, captions near their image so that recall is neither 0
nor 100%. Each measurement runs in its own subprocess, interleaved round by round.

Variants:
  matmul     the similarity matrix alone: one ``images @ texts.T`` at 5k; at 10x (50 GB whole) the
             same product in blocks of the captions ``retrieval_metrics`` uses, results dropped
  metrics    tinysiglip.evaluate.retrieval_metrics
  baseline   another evaluate.py (``--baseline git:REV``), e.g. the two-product version before
             commit "Recall@K from one similarity product"

Peak memory: the child's ``ru_maxrss`` (CPU; "transient" = peak minus RSS before the call) or
``torch.cuda.max_memory_allocated`` (CUDA). At 10x, ``--sample K`` (default 2 with --quick, else 4)
runs the first K blocks of every block loop and scales each loop's time by blocks/K (every block
costs the same; peak memory is reached in the first one): the time is an extrapolation of the real
code, the memory a measurement. ``--full-10x`` runs it whole (about 10 min per variant on one core).

``python -m bench.eval_scale [--quick] [--device cpu|cuda] [--baseline git:REV] [--full-10x]``
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

from bench import common

SIZES = {"5k": (5000, 25010), "50k": (50000, 250100)}


class SampledBlocks(list):
    """A list of blocks whose iteration yields only the first K and records each loop's time."""

    def __init__(self, blocks, k: int):
        super().__init__(blocks)
        self.k = k
        self.loops: list[tuple[int, int, float]] = []  # (blocks, yielded, seconds)

    def __iter__(self):
        t0 = time.perf_counter()
        n = 0
        for block in list.__iter__(self):
            if n == self.k:
                break
            n += 1
            yield block
        self.loops.append((len(self), n, time.perf_counter() - t0))

    def extrapolate(self, wall: float) -> float:
        inside = sum(s for _, _, s in self.loops)
        return wall - inside + sum(s * total / max(1, n) for total, n, s in self.loops)


def make_inputs(n_images: int, n_texts: int, dim: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    counts = torch.full((n_images,), 5, dtype=torch.long)
    extra = n_texts - 5 * n_images  # spread as +1/+2 (5-7 captions per image)
    take = torch.randperm(2 * n_images, generator=g)[:extra] % n_images
    counts += torch.bincount(take, minlength=n_images)
    owner = torch.repeat_interleave(torch.arange(n_images), counts)
    images = torch.randn(n_images, dim, generator=g)
    # captions near their image (cosine ~0.1); built in blocks so that no temporary inflates the
    # child's maxrss before the measured call
    texts = torch.randn(n_texts, dim, generator=g).mul_(10.0)
    for start in range(0, n_texts, 16384):
        texts[start : start + 16384] += images[owner[start : start + 16384]]
    return images, texts, owner


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def matmul_alone(images, texts, sample: int):
    """The similarity product the metric needs, once: whole at 5k, in the metric's blocks at 10x."""
    import tinysiglip.evaluate as ev

    rows = min(ev.BLOCK_CAPTIONS, ev.BLOCK_ELEMENTS // images.shape[0])
    if texts.shape[0] * images.shape[0] <= 1 << 28 and not sample:
        images @ texts.T
        return None
    blocks = [(a, min(a + rows, texts.shape[0])) for a in range(0, texts.shape[0], rows)]
    blocks = SampledBlocks(blocks, sample) if sample else blocks
    for a, b in blocks:
        texts[a:b] @ images.T
    return blocks


def child(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    import tinysiglip.evaluate as ev

    device = torch.device(spec["device"])
    images, texts, owner = make_inputs(*SIZES[spec["size"]], spec["dim"])
    images, texts, owner = images.to(device), texts.to(device), owner.to(device)
    module = ev
    if spec["variant"] == "baseline":
        module = common.load_module_version(spec["baseline"], "tinysiglip/evaluate.py", common.DEFAULT_WORK)
    sampler = None
    if spec["sample"] and spec["variant"] != "matmul":
        real_blocks = ev._image_blocks

        def sampled(*args):
            nonlocal sampler
            sampler = SampledBlocks(real_blocks(*args), spec["sample"])
            return sampler

        if spec["variant"] == "baseline":
            raise SystemExit("--baseline is not sampled at 10x (it has no block list to sample)")
        ev._image_blocks = sampled
    common.sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before = maxrss_mb()
    metrics = None
    t0 = time.perf_counter()
    if spec["variant"] == "matmul":
        sampler = matmul_alone(images, texts, spec["sample"])
    else:
        metrics = module.retrieval_metrics(images, texts, owner)
    common.sync(device)
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else maxrss_mb()
    return {
        "seconds": sampler.extrapolate(wall) if isinstance(sampler, SampledBlocks) else wall,
        "measured_s": wall,
        "peak_mb": peak,
        "before_mb": before,
        "metrics": None if spec["sample"] else metrics,
    }


def run_child(spec: dict) -> dict:
    cmd = [sys.executable, "-m", "bench.eval_scale", "--child", json.dumps(spec)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=common.BENCH_DIR.parent, check=False)
    if out.returncode != 0:
        return {"error": (out.stderr or out.stdout)[-400:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--child":
        print(json.dumps(child(json.loads(sys.argv[2]))))
        return 0
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--sizes", default="5k,50k", help="which of 5k,50k to run")
    p.add_argument("--sample", type=int, default=None, help="blocks per loop at 10x (0 = all)")
    p.add_argument("--full-10x", action="store_true", help="run the 10x size whole (slow on a CPU)")
    p.add_argument("--baseline", help="another tinysiglip/evaluate.py (file or git:REV), 5k only")
    p.add_argument("--child", help=argparse_suppress())
    args = p.parse_args(argv)
    common.setup_torch(args)
    reps = args.reps or (2 if args.quick else 3)
    sample_10x = (
        0 if args.full_10x else (args.sample if args.sample is not None else (2 if args.quick else 4))
    )
    if args.device == "cuda":
        sample_10x = 0 if args.sample is None else sample_10x  # whole 10x takes seconds on a GPU
    plan = []
    for size in args.sizes.split(","):
        sample = sample_10x if size == "50k" else 0
        plan += [(size, "matmul", sample), (size, "metrics", sample)]
        if args.baseline and size == "5k":
            plan.append((size, "baseline", 0))
    results: dict[tuple, list[dict]] = {key: [] for key in plan}
    for r in range(reps):
        for key in plan if r % 2 == 0 else list(reversed(plan)):
            size, variant, sample = key
            spec = {
                "size": size,
                "variant": variant,
                "sample": sample,
                "dim": args.dim,
                "threads": args.threads,
                "device": args.device,
                "baseline": args.baseline,
            }
            res = run_child(spec)
            print(key, res, flush=True)
            results[key].append(res)
    rows = []
    medians: dict[tuple, float] = {}
    for key, runs in results.items():
        size, variant, sample = key
        ok = [x for x in runs if "error" not in x]
        if not ok:
            rows.append([size, variant, "error: " + runs[0]["error"][-160:], "", "", "", ""])
            continue
        secs = medians[key] = common.median([x["seconds"] for x in ok])
        peak = max(x["peak_mb"] for x in ok)
        before = min(x["before_mb"] for x in ok)
        matmul = medians.get((size, "matmul", sample))
        ratio = f"{secs / matmul:.2f}" if matmul and variant != "matmul" else ""
        how = f"extrapolated from {sample} blocks/loop" if sample else "measured"
        rows.append(
            [size, variant, f"{secs:.2f}", ratio, how, f"{peak / 1024:.2f}", f"{(peak - before) / 1024:.2f}"]
        )
    notes = []
    got = {key[1]: x.get("metrics") for key, runs in results.items() if key[0] == "5k" for x in runs[:1]}
    if got.get("metrics"):
        notes.append(f"5k metrics: {got['metrics']}")
    if got.get("baseline") and got.get("metrics"):
        notes.append(f"identical to the baseline's: {got['baseline'] == got['metrics']}")
    where = "GPU" if args.device == "cuda" else f"CPU, {args.threads} thread(s)"
    memory = "max_memory_allocated" if args.device == "cuda" else "ru_maxrss"
    body = (
        f"width {args.dim}, float32, {where}, {reps} rep(s) per variant alternating order, median time, "
        f"max peak ({memory}); ratio = seconds / matmul's at the same size (goal <= 1.5).\n\n"
        + common.table(["size", "variant", "seconds", "x matmul", "how", "peak GB", "transient GB"], rows)
        + ("\n\n" + "; ".join(notes) if notes else "")
    )
    common.report(
        "Evaluation at COCO 5k and 10x (retrieval_metrics vs matmul)", common.command_line(), body, args
    )
    return 0


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    raise SystemExit(main())
