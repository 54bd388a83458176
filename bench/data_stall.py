"""Data stall: one epoch of training steps fed by the HDF5 cache through the training loader (as
``run_training`` feeds them: ``TrainPairs`` + ``TrainLoader``) vs. the very same batches already in
memory (pure compute).

Variants, interleaved round by round (medians reported):
  memory          the epoch's batches collated beforehand and already on the device; the loop only
                  runs the step
  loader-wN       TrainLoader with N worker processes (data.num_workers; 0 = read in the training
                  process), built once and warmed up, as run_training keeps it for the whole run, its
                  batches sent ahead to the device (``batches_on_device``), as run_training sends them
  loader-wN-before  the same loader as run_training used it before 2026-11-27: no copy ahead, and a
                  blocking copy of the image index in the step (on CUDA; the same as loader-wN on a CPU)
  read-only       the loader alone (0 workers), no step: what the pipeline costs by itself
  ... (baseline reader)  another reader.py (``--baseline-reader git:REV``) through the per-epoch
                  ``DataLoader(batch_size, shuffle=True)`` that run_training built before TrainLoader

``python -m bench.data_stall [--quick] [--device cpu|cuda] [--batch-size N] [--images N] [--workers 0,2,4]``
"""

from __future__ import annotations

import time

from bench import common


def main(argv=None) -> int:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=None, help="training images in the cache")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--student", default="vit_small")
    p.add_argument("--scale", default="local", choices=("local", "full"))
    p.add_argument("--teacher", default="local-m", choices=sorted(common.TEACHERS))
    p.add_argument("--cache", help="use this training cache instead of building a bench one")
    p.add_argument("--workers", default="0,1", help="num_workers values to compare (comma separated)")
    p.add_argument(
        "--baseline-reader",
        help="another version of tinysiglip/cache/reader.py (a file, or git:REV) to compare side by side",
    )
    args = p.parse_args(argv)
    common.setup_torch(args)

    from tinysiglip.cache import TrainPairs

    images = args.images or (384 if args.quick else 4000)
    reps = args.reps or (3 if args.quick else 7)
    work = args.work_dir
    if args.cache:
        cache = args.cache
    else:
        dataset = common.make_shapes_split(work, images, args.image_size)
        teacher = common.make_teacher(work, args.teacher, args.image_size)
        cache = common.make_cache(work, teacher, dataset, "stall", device=args.device)
    trainer = common.Trainer(cache, student=args.student, scale=args.scale, device=args.device)
    pin = args.device == "cuda"
    bs = args.batch_size

    def make_loader(workers=0):
        from tinysiglip.cache import TrainLoader

        pairs = TrainPairs(cache, seed=0, embeddings_in_memory=True)
        return TrainLoader(pairs, bs, seed=0, num_workers=workers, pin_memory=pin)

    def baseline_epoch():
        import torch

        pairs = baseline.TrainPairs(cache, seed=0, embeddings_in_memory=True)
        pairs.set_epoch(0)
        return torch.utils.data.DataLoader(
            pairs,
            batch_size=bs,
            shuffle=True,
            drop_last=True,
            generator=torch.Generator().manual_seed(0),
            pin_memory=pin,
        )

    baseline = (
        common.load_module_version(args.baseline_reader, "tinysiglip/cache/reader.py", work)
        if args.baseline_reader
        else None
    )
    worker_counts = [int(x) for x in args.workers.split(",") if x.strip()]
    loaders = {w: make_loader(w) for w in sorted(set(worker_counts) | {0})}
    for w, loader in loaders.items():  # start persistent workers (run_training pays this once per run)
        t0 = time.perf_counter()
        for _ in loader.epoch(0):
            pass
        print(f"loader-w{w}: first epoch (worker start) {time.perf_counter() - t0:.2f} s", flush=True)

    from tinysiglip.cache import batches_on_device

    # The in-memory batches: the same epoch, collated once and already on the device.
    batches = [{k: v.to(trainer.device) for k, v in b.items()} for b in loaders[0].epoch(0)]
    steps = len(batches)
    for b in batches[:2]:  # warm-up (allocator, autotuning, lazy inits)
        trainer.step(b)

    def run(source, *, before=False):
        def go():
            common.sync(trainer.device)
            t0 = time.perf_counter()
            for batch in source():
                trainer.step(batch, blocking_index=before)
            common.sync(trainer.device)
            return time.perf_counter() - t0

        return go

    def read_only(source):
        def go():
            t0 = time.perf_counter()
            for _ in source():
                pass
            return time.perf_counter() - t0

        return go

    variants = {"memory": run(lambda: batches)}
    for w in worker_counts:
        variants[f"loader-w{w}"] = run(lambda w=w: batches_on_device(loaders[w].epoch(0), trainer.device))
    if pin:
        for w in worker_counts:
            variants[f"loader-w{w}-before"] = run(lambda w=w: loaders[w].epoch(0), before=True)
    if baseline is not None:
        variants["loader-w0 (baseline reader)"] = run(baseline_epoch)
        variants["read-only (baseline reader)"] = read_only(baseline_epoch)
    variants["read-only"] = read_only(lambda: loaders[0].epoch(0))
    times = common.interleave(variants, reps)

    base = common.median(times["memory"])
    rows = []
    for name, values in times.items():
        med = common.median(values)
        over = "" if name == "memory" or name.startswith("read-only") else f"{100 * (med / base - 1):+.1f}%"
        rows.append(
            [name, f"{1000 * med / steps:.1f}", common.spread([1000 * v / steps for v in values]), over]
        )
    body = (
        f"{steps} steps/epoch, batch {bs}, {args.student} ({args.scale}), cache {cache} "
        f"({args.image_size}px), {reps} interleaved reps, medians.\n\n"
        + common.table(["variant", "ms/step", "range", "overhead vs memory"], rows)
        + f"\n\n`read-only` is the loader alone (ms per batch of {bs}). Goal: overhead (stall) < 5%."
    )
    common.report("Data stall (cache → DataLoader vs in-memory batches)", common.command_line(), body, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
