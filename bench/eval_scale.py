"""Evaluation at scale: time and peak memory of ``retrieval_metrics`` (Recall@1/5/10 both ways) at
COCO 5k size (5,000 images x 25,010 captions, width 1024) and at 10x that (50,000 x 250,100), random
embeddings, 5-7 captions per image. Each measurement runs in its own subprocess; peak memory is the
child's ``ru_maxrss`` (whole process: inputs included; "transient" = peak minus RSS before the call).

``--sample K`` (the default for the 10x size in --quick) runs only the first K chunks of each of the
two chunk loops (``range`` is replaced inside the measured module) and scales each loop's time by
chunks/K: peak memory is reached in the first chunk, and every chunk costs the same, so the time is
an extrapolation of the real code, the memory a measurement. ``--full-10x`` runs it whole (~20+ min
per variant on one CPU core).

Variants: ``current`` = tinysiglip.evaluate.retrieval_metrics; ``maskfree`` = the proposed change
(below): the image→text best positive is gathered from the chunk's similarity rows at the caption
columns of the chunk's images (scatter_reduce amax) instead of building a (chunk x captions) bool
mask and a masked copy of the similarity block. Same ranks (asserted at 5k), half the transient memory.

``python -m bench.eval_scale [--quick] [--chunks 256,1024] [--full-10x]``
"""

from __future__ import annotations

import builtins
import json
import resource
import subprocess
import sys
import time

from bench import common

SIZES = {"5k": (5000, 25010), "50k": (50000, 250100)}
_range = builtins.range  # patched by the sampler


def maskfree_retrieval_metrics(
    image_embeds, text_embeds, caption_image_index, ks=(1, 5, 10), chunk_size=1024
):
    """Proposed tinysiglip.evaluate.retrieval_metrics: identical ranks, no (chunk x M) mask/copy."""
    import torch
    import torch.nn.functional as F

    images = F.normalize(torch.as_tensor(image_embeds, dtype=torch.float32), dim=-1)
    texts = F.normalize(torch.as_tensor(text_embeds, dtype=torch.float32), dim=-1)
    owner = torch.as_tensor(caption_image_index, dtype=torch.long)
    num_images, num_texts = images.shape[0], texts.shape[0]
    text_ranks = torch.empty(num_texts, dtype=torch.long)
    for start in _range(0, num_texts, chunk_size):
        sims = texts[start : start + chunk_size] @ images.T
        positive = sims[torch.arange(sims.shape[0]), owner[start : start + chunk_size]]
        text_ranks[start : start + chunk_size] = (sims > positive[:, None]).sum(dim=1)
    by_owner = torch.argsort(owner, stable=True)  # caption rows grouped by image
    bounds = torch.searchsorted(owner[by_owner], torch.arange(num_images + 1))
    image_ranks = torch.empty(num_images, dtype=torch.long)
    for start in _range(0, num_images, chunk_size):
        end = min(start + chunk_size, num_images)
        sims = images[start:end] @ texts.T
        cols = by_owner[bounds[start] : bounds[end]]
        rows = owner[cols] - start
        best = torch.full((end - start,), float("-inf")).scatter_reduce(0, rows, sims[rows, cols], "amax")
        image_ranks[start:end] = (sims > best[:, None]).sum(dim=1)
    metrics = {}
    for k in ks:
        metrics[f"i2t_r{k}"] = 100.0 * float((image_ranks < k).double().mean())
    for k in ks:
        metrics[f"t2i_r{k}"] = 100.0 * float((text_ranks < k).double().mean())
    return metrics


class SampledRange:
    """range() that yields only the first K starts of a chunk loop and times each loop."""

    def __init__(self, k: int):
        self.k = k
        self.loops: list[tuple[int, int, float]] = []  # (full count, yielded, seconds)

    def __call__(self, *args):
        full = builtins.range(*args)
        return self._gen(full)

    def _gen(self, full):
        t0 = time.perf_counter()
        n = 0
        for value in full:
            if n == self.k:
                break
            n += 1
            yield value
        self.loops.append((len(full), n, time.perf_counter() - t0))


def make_inputs(n_images: int, n_texts: int, dim: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    counts = torch.full((n_images,), 5, dtype=torch.long)
    extra = n_texts - 5 * n_images  # spread as +1/+2 (5-7 captions per image)
    take = torch.randperm(2 * n_images, generator=g)[:extra] % n_images
    counts += torch.bincount(take, minlength=n_images)
    owner = torch.repeat_interleave(torch.arange(n_images), counts)
    images = torch.randn(n_images, dim, generator=g)
    # captions near their image (cosine ~0.1) so recall is neither ~0 nor 100%; built in blocks so
    # that no temporary inflates the child's maxrss before the measured call
    texts = torch.randn(n_texts, dim, generator=g).mul_(10.0)
    for start in builtins.range(0, n_texts, 16384):
        texts[start : start + 16384] += images[owner[start : start + 16384]]
    return images, texts, owner


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    import tinysiglip.evaluate as ev

    images, texts, owner = make_inputs(*SIZES[spec["size"]], spec["dim"])
    before = maxrss_mb()
    sampler = None
    if spec["sample"]:
        sampler = SampledRange(spec["sample"])
        if spec["variant"] == "current":
            ev.range = sampler
        else:
            globals()["_range"] = sampler
    fn = ev.retrieval_metrics if spec["variant"] == "current" else maskfree_retrieval_metrics
    t0 = time.perf_counter()
    metrics = fn(images, texts, owner, chunk_size=spec["chunk"])
    wall = time.perf_counter() - t0
    est = wall
    if sampler:
        in_loops = sum(s for _, _, s in sampler.loops)
        est = wall - in_loops + sum(s * full / max(1, n) for full, n, s in sampler.loops)
    return {
        "seconds": est,
        "measured_s": wall,
        "peak_mb": maxrss_mb(),
        "before_mb": before,
        "sampled": bool(sampler),
        "metrics": None if sampler else metrics,
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
    p.add_argument("--chunks", default=None, help="chunk sizes for the 10x size (default 1024, 256)")
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--sample", type=int, default=None, help="chunks per loop at 10x (0 = all)")
    p.add_argument("--full-10x", action="store_true", help="run the 10x size whole (slow)")
    p.add_argument("--child", help=argparse_suppress())
    args = p.parse_args(argv)
    reps = args.reps or (1 if args.quick else 2)
    sample_10x = (
        0 if args.full_10x else (args.sample if args.sample is not None else (2 if args.quick else 4))
    )
    chunks = [int(c) for c in (args.chunks or "1024,256").split(",")]
    plan = []
    for variant in ("current", "maskfree"):
        plan.append(("5k", 1024, variant, 0))
    for chunk in chunks:
        for variant in ("current", "maskfree"):
            plan.append(("50k", chunk, variant, sample_10x))
    results: dict[tuple, list[dict]] = {key: [] for key in plan}
    for r in range(reps):
        for key in plan if r % 2 == 0 else list(reversed(plan)):
            size, chunk, variant, sample = key
            spec = {
                "size": size,
                "chunk": chunk,
                "variant": variant,
                "sample": sample,
                "dim": args.dim,
                "threads": args.threads,
            }
            res = run_child(spec)
            print(key, res, flush=True)
            results[key].append(res)
    rows = []
    for key, runs in results.items():
        size, chunk, variant, sample = key
        ok = [x for x in runs if "error" not in x]
        if not ok:
            rows.append([size, chunk, variant, "error: " + runs[0]["error"][-120:], "", "", ""])
            continue
        secs = common.median([x["seconds"] for x in ok])
        peak = max(x["peak_mb"] for x in ok)
        before = min(x["before_mb"] for x in ok)
        how = f"extrapolated from {sample} chunks/loop" if sample else "measured"
        rows.append(
            [size, chunk, variant, f"{secs:.1f}", how, f"{peak / 1024:.2f}", f"{(peak - before) / 1024:.2f}"]
        )
    same = ""
    m_cur = [x.get("metrics") for x in results[("5k", 1024, "current", 0)] if x.get("metrics")]
    m_new = [x.get("metrics") for x in results[("5k", 1024, "maskfree", 0)] if x.get("metrics")]
    if m_cur and m_new:
        same = f"\n\n5k metrics identical between current and maskfree: {m_cur[0] == m_new[0]} ({m_cur[0]})"
    body = (
        f"width {args.dim}, float32, {args.threads} thread(s), CPU (retrieval_metrics always computes on CPU), "
        f"{reps} rep(s) per variant alternating order, median time, max peak.\n\n"
        + common.table(["size", "chunk", "variant", "seconds", "how", "peak RSS GB", "transient GB"], rows)
        + same
    )
    common.report("Evaluation at COCO 5k and 10x (retrieval_metrics)", common.command_line(), body, args)
    return 0


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    raise SystemExit(main())
