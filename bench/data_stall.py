"""Data stall: one epoch of training steps fed by the HDF5 cache through the DataLoader (as
``run_training`` feeds them) vs. the very same batches already in memory (pure compute).

Variants, interleaved round by round (medians reported):
  memory          the epoch's batches collated beforehand; the loop only runs the step
  loader          TrainPairs(embeddings_in_memory=True) + DataLoader(num_workers=0): run_training's default
  loader-emb-disk embeddings read from HDF5 per batch (data.embeddings_in_memory: false)
  loader-w1       one DataLoader worker process (data.num_workers: 1)
  read-only       the loader alone, no step (what the pipeline costs by itself)
  ... (baseline reader)  the same with another reader.py (``--baseline-reader git:0876587``): before/after

``python -m bench.data_stall [--quick] [--device cpu|cuda] [--batch-size N] [--images N]``
"""

from __future__ import annotations

import time

from bench import common


def load_baseline(source: str, work):
    """Import another version of the reader module (``git:REV`` reads it with git show)."""
    import importlib.util
    import subprocess

    path = source
    if source.startswith("git:"):
        text = subprocess.run(
            ["git", "show", f"{source[4:]}:tinysiglip/cache/reader.py"],
            capture_output=True,
            text=True,
            check=True,
            cwd=common.BENCH_DIR.parent,
        ).stdout
        path = work / "reader_baseline.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    spec = importlib.util.spec_from_file_location("tsl_reader_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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

    def loader(in_memory=True, workers=0, cls=TrainPairs):
        pairs = cls(cache, seed=0, embeddings_in_memory=in_memory)
        return common.train_loader(pairs, bs, num_workers=workers, pin_memory=pin)

    baseline = load_baseline(args.baseline_reader, work) if args.baseline_reader else None

    # The in-memory batches: the same epoch, collated once (pinned like the DataLoader would pin them).
    batches = list(loader())
    if pin:
        batches = [{k: v.pin_memory() for k, v in b.items()} for b in batches]
    steps = len(batches)
    for b in batches[:2]:  # warm-up (allocator, autotuning, lazy inits)
        trainer.step(b)

    def run(source):
        def go():
            common.sync(trainer.device)
            t0 = time.perf_counter()
            for batch in source():
                trainer.step(batch)
            common.sync(trainer.device)
            return time.perf_counter() - t0

        return go

    def read_only(cls=TrainPairs):
        def go():
            t0 = time.perf_counter()
            for _ in loader(cls=cls):
                pass
            return time.perf_counter() - t0

        return go

    variants = {
        "memory": run(lambda: batches),
        "loader": run(lambda: loader(True, 0)),
        "loader-emb-disk": run(lambda: loader(False, 0)),
    }
    for w in [int(x) for x in args.workers.split(",") if x.strip()]:
        if w > 0:
            variants[f"loader-w{w}"] = run(lambda w=w: loader(True, w))
    if baseline is not None:
        variants["loader (baseline reader)"] = run(lambda: loader(True, 0, baseline.TrainPairs))
        variants["read-only (baseline reader)"] = read_only(baseline.TrainPairs)
    variants["read-only"] = read_only()
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
        + "\n\n`read-only` is the loader alone (ms per batch). Goal: overhead < 5%."
    )
    common.report("Data stall (cache → DataLoader vs in-memory batches)", common.command_line(), body, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
