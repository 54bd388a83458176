"""Training data path at the real resolution: images/s that ``TrainPairs`` + ``TrainLoader`` (what
``run_training`` builds) deliver at 224 and 256 px, batch 256, against the demand of a student step on
a quarter H100 and against the raw read limit.

Demand (per trial): ``989e12 / 4 * MFU / F`` images/s, F = FLOPs of one image-caption pair through
ViT-S/16 (forward + backward, counted by FlopCounterMode), MFU from ``bench.common.STUDENT_MFU``.

Variants per size, interleaved round by round (medians):
  raw copy        the same batches gathered from arrays already in memory (pixels, token ids,
                  embeddings) into fresh buffers: the limit of any reader, one core
  loader-wN       TrainLoader with N worker processes (0 = read in the training process), built once
                  and warmed up (persistent workers, as run_training keeps it); one epoch
  hdf5-w0         the same loader with the memory maps switched off (every read through h5py)
  baseline-w0     another reader.py (``--baseline-reader git:REV``) through the per-epoch
                  ``DataLoader(batch_size, shuffle=True)`` run_training built before TrainLoader

"per core" divides by the cores the variant keeps busy (N workers, or the training process).

``python -m bench.loader [--quick] [--sizes 224,256] [--workers 0,1,2,4] [--baseline-reader git:REV]``
"""

from __future__ import annotations

import math
import time

from bench import common


def measure_size(size: int, args, baseline, reps: int):
    """(demand row, result rows, notes) at one image size."""
    import numpy as np
    import torch

    from tinysiglip.cache import TrainLoader, TrainPairs, open_cache

    bs, work = args.batch_size, args.work_dir
    images = args.images or (1024 if args.quick else 2048)
    flops = common.student_step_flops(size)
    demand = common.per_second(flops, gpu_fraction=0.25, mfu=common.STUDENT_MFU)
    demand_row = [size, f"{flops / 1e9:.1f}", f"{100 * common.STUDENT_MFU:.0f}%", f"{demand:.0f}"]

    dataset = common.make_shapes_split(work, images, size)
    cache = common.make_cache(work, common.make_teacher(work, "tiny", size), dataset, "loader")
    meta = open_cache(cache)
    in_memory = {name: meta._h5()[name][:] for name in ("pixels", "token_ids", "image_embeds", "text_embeds")}
    meta.close()
    loaders = {}
    for w in [int(x) for x in args.workers.split(",") if x.strip()]:
        loaders[f"loader-w{w}"] = TrainLoader(TrainPairs(cache, embeddings_in_memory=True), bs, num_workers=w)
    unmapped = TrainPairs(cache, embeddings_in_memory=True)
    unmapped._mapped = {name: None for name in unmapped._mapped}
    loaders["hdf5-w0"] = TrainLoader(unmapped, bs)
    notes = [f"{size}px memory-mapped datasets: {TrainPairs(cache).memory_mapped}"]
    for name, loader in loaders.items():  # start workers, fill the page cache
        t0 = time.perf_counter()
        for _ in loader.epoch(0):
            pass
        notes.append(f"{size}px {name}: first epoch (worker start) {time.perf_counter() - t0:.2f} s")
    epoch_batches = [rows for _, rows in loaders["hdf5-w0"].batches]
    pairs = TrainPairs(cache)

    def raw_copy():
        for rows in epoch_batches:
            caption_rows = pairs.caption_rows(rows, 0)
            out = np.empty((len(rows), 3, size, size), np.uint8)
            np.take(in_memory["pixels"], rows, axis=0, out=out, mode="clip")
            in_memory["token_ids"][caption_rows].astype(np.int64)
            in_memory["image_embeds"][rows].astype(np.float32)
            in_memory["text_embeds"][caption_rows].astype(np.float32)

    def epoch_of(loader):
        def go():
            for _ in loader.epoch(0):
                pass

        return go

    def baseline_epoch():
        old = baseline.TrainPairs(cache, seed=0, embeddings_in_memory=True)
        loader = torch.utils.data.DataLoader(
            old, batch_size=bs, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(0)
        )
        for _ in loader:
            pass

    variants = {"raw copy": raw_copy, **{name: epoch_of(loader) for name, loader in loaders.items()}}
    if baseline is not None:
        variants["baseline-w0"] = baseline_epoch
    times = common.interleave(variants, reps)
    per_epoch = len(epoch_batches) * bs
    rows = []
    for name, values in times.items():
        rate = per_epoch / common.median(values)
        cores = max(1, int(name.rsplit("-w", 1)[1])) if "-w" in name else 1
        per_core = rate / cores
        rows.append(
            [
                size,
                name,
                cores,
                f"{rate:.0f}",
                f"{per_core:.0f}",
                f"{rate / demand:.1f}",
                math.ceil(demand / per_core),
            ]
        )
    loaders.clear()  # ends the workers
    return demand_row, rows, notes


def main(argv=None) -> int:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--sizes", default="224,256")
    p.add_argument("--images", type=int, default=None, help="images in each bench cache")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", default="0,1,2,4")
    p.add_argument("--baseline-reader", help="another tinysiglip/cache/reader.py (file or git:REV)")
    args = p.parse_args(argv)
    common.setup_torch(args)
    reps = args.reps or (3 if args.quick else 5)
    images = args.images or (1024 if args.quick else 2048)
    bs = args.batch_size
    baseline = (
        common.load_module_version(args.baseline_reader, "tinysiglip/cache/reader.py", args.work_dir)
        if args.baseline_reader
        else None
    )
    demand_rows, rows, notes = [], [], []
    for size in [int(x) for x in args.sizes.split(",")]:
        demand_row, size_rows, size_notes = measure_size(size, args, baseline, reps)
        demand_rows.append(demand_row)
        rows += size_rows
        notes += size_notes
    body = (
        f"Demand: a student step (ViT-S/16, image + text tower, fwd+bwd) on a quarter H100 at "
        f"{100 * common.STUDENT_MFU:.0f}% of 989 TFLOP/s dense bf16 (NVIDIA H100 SXM datasheet); see "
        "bench/common.py for the utilisation's source.\n\n"
        + common.table(["px", "GFLOP/pair", "MFU", "demand img/s per trial"], demand_rows)
        + f"\n\n{images} images per cache (shapes JPEGs at that size, tiny random teacher), batch {bs}, "
        f"{reps} interleaved reps, medians, page cache warm. {common.machine().split(';')[0]}: "
        "variants with more workers than free cores share them.\n\n"
        + common.table(
            ["px", "variant", "cores", "img/s", "img/s per core", "x demand", "cores for demand"], rows
        )
        + "\n\n"
        + "\n".join(f"- {n}" for n in notes)
    )
    common.report(
        "Training loader at 224/256 px (TrainPairs + TrainLoader)", common.command_line(), body, args
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
