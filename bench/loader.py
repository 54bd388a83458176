"""Training data path at the real resolution: images/s that ``TrainPairs`` + ``TrainLoader`` (what
``run_training`` builds) deliver at 224 and 256 px, batch 256, against the demand of a student step on
a quarter H100 and against the raw read limit.

Demand (per trial): ``989e12 / 4 * MFU / F`` images/s, F = FLOPs of one image-caption pair through
ViT-S/16 (forward + backward, counted by FlopCounterMode), MFU from ``bench.common.STUDENT_MFU``.

Variants per size, interleaved round by round (medians):
  raw copy        the same batches gathered from arrays already in memory (pixels, token ids,
                  embeddings) into fresh buffers: the limit of any reader, one core
  loader-wN       TrainLoader with N worker processes (0 = read in the training process), built once
                  and warmed up (persistent workers, as run_training keeps it); one epoch. Rows come
                  from memory maps and every chunk read is checked (Fletcher-32 in numpy)
  unchecked-w0    the same loader with the maps' checksum verification switched off (what the
                  check costs; not a mode the package offers)
  hdf5-w0         the same loader with the memory maps switched off (every read through h5py, which
                  checks each chunk's Fletcher-32 itself)
  checksum-only   fletcher32() alone over the pixel chunks of the same batches (from memory)
  baseline-w0     another reader.py (``--baseline-reader git:REV``) through the per-epoch
                  ``DataLoader(batch_size, shuffle=True)`` run_training built before TrainLoader

"per core" divides by the cores the variant keeps busy (N workers, or the training process).

``--coco-tables`` adds the small datasets at COCO's real shape, where a batch touches ~256 distinct
chunks of each (the bench caches above are too small for that): ``token_ids`` (616,767 x 64 int32)
and both embedding tables (123,287 and 616,767 rows x 1024 float16, SigLIP 2 Large's width), created
by build_cache's own ``_create_preallocated`` (Fletcher-32 row chunks of 16 kB), 1.7 GB on disk.
Per batch of 256 random images (and one random caption each): checked maps, unchecked maps, h5py,
and the same rows gathered from arrays in memory.

``python -m bench.loader [--quick] [--sizes 224,256] [--workers 0,1,2,4] [--baseline-reader git:REV]``
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from bench import common


def measure_size(size: int, args, baseline, reps: int):
    """(demand row, result rows, notes) at one image size."""
    import numpy as np
    import torch

    from tinysiglip.cache import TrainLoader, TrainPairs, open_cache
    from tinysiglip.cache.fletcher import fletcher32

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
    unchecked = TrainPairs(cache, embeddings_in_memory=True)
    for mapped in unchecked._mapped.values():
        mapped.checked = False
    loaders["unchecked-w0"] = TrainLoader(unchecked, bs)
    unmapped = TrainPairs(cache, embeddings_in_memory=True)
    unmapped._mapped = {name: None for name in unmapped._mapped}
    loaders["hdf5-w0"] = TrainLoader(unmapped, bs)
    maps = TrainPairs(cache)._mapped
    checked = {name: m is not None and m.checked for name, m in maps.items()}
    notes = [f"{size}px memory-mapped datasets: {TrainPairs(cache).memory_mapped}; chunks checked: {checked}"]
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

    def checksum_only():  # the checksum's own time, without the gather that feeds it
        spent = 0.0
        for rows in epoch_batches:
            chunks = in_memory["pixels"][rows].reshape(len(rows), -1)
            t0 = time.perf_counter()
            fletcher32(chunks)
            spent += time.perf_counter() - t0
        return spent

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

    variants = {
        "raw copy": raw_copy,
        **{name: epoch_of(loader) for name, loader in loaders.items()},
        "checksum-only": checksum_only,
    }
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


COCO_IMAGES, COCO_CAPTIONS, COCO_WIDTH, TEXT_LENGTH = 123_287, 616_767, 1024, 64
TABLES = ("token_ids", "image_embeds", "text_embeds")


def make_coco_tables(work) -> Path:
    """The small datasets at COCO's shape, chunked and checksummed as build_cache writes them."""
    import h5py
    import numpy as np

    from tinysiglip.cache.build import _create_preallocated

    out = work / "caches" / "coco-tables.h5"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    shapes = {
        "token_ids": ((COCO_CAPTIONS, TEXT_LENGTH), np.int32),
        "image_embeds": ((COCO_IMAGES, COCO_WIDTH), np.float16),
        "text_embeds": ((COCO_CAPTIONS, COCO_WIDTH), np.float16),
    }
    rng = np.random.default_rng(0)
    partial = out.with_suffix(".partial")
    with h5py.File(partial, "w", libver=("earliest", "v110")) as handle:
        for name, (shape, dtype) in shapes.items():
            dataset = _create_preallocated(handle, name, shape, dtype)
            for start in range(0, shape[0], 65_536):
                rows = min(65_536, shape[0] - start)
                values = (
                    rng.integers(0, 256_000, (rows, shape[1]))
                    if dtype == np.int32
                    else rng.random((rows, shape[1]))
                )
                dataset[start : start + rows] = values.astype(dtype)
    partial.rename(out)
    return out


def measure_coco_tables(args, reps: int) -> tuple[list, list[str]]:
    """Rows of (variant, ms per batch, images/s) for the small datasets at COCO's shape."""
    import h5py
    import numpy as np

    from tinysiglip.cache.mapped import MappedRows
    from tinysiglip.cache.reader import _read_rows

    path = make_coco_tables(args.work_dir)
    bs, batches = args.batch_size, 20
    rng = np.random.default_rng(1)
    image_rows = [rng.choice(COCO_IMAGES, bs, replace=False) for _ in range(batches)]
    caption_rows = [rng.integers(0, COCO_CAPTIONS, bs) for _ in range(batches)]
    handle = h5py.File(path, "r")
    checked = {name: MappedRows.of(handle[name]) for name in TABLES}
    unchecked = {name: MappedRows.of(handle[name]) for name in TABLES}
    for mapped in unchecked.values():
        mapped.checked = False
    t0 = time.perf_counter()
    everything = {name: np.arange(handle[name].shape[0]) for name in TABLES}
    fresh = {name: MappedRows.of(handle[name]) for name in TABLES}
    in_memory = {name: fresh[name].take(everything[name]) for name in TABLES}
    check_all = time.perf_counter() - t0

    def rows_of(name: str, k: int) -> np.ndarray:
        return image_rows[k] if name == "image_embeds" else caption_rows[k]

    def through(read):
        def go():
            for k in range(batches):
                for name in TABLES:
                    read(name, rows_of(name, k))

        return go

    def first_use():  # maps new to the process: every chunk the batches touch is checked
        new = {name: MappedRows.of(handle[name]) for name in TABLES}
        t0 = time.perf_counter()
        through(lambda name, rows: new[name].take(rows))()
        return time.perf_counter() - t0

    variants = {
        "raw copy": through(lambda name, rows: in_memory[name][rows]),
        "checked, chunks new to the process": first_use,
        "checked, chunks already checked": through(lambda name, rows: checked[name].take(rows)),
        "unchecked maps": through(lambda name, rows: unchecked[name].take(rows)),
        "h5py": through(lambda name, rows: _read_rows(handle[name], rows)),
    }
    through(lambda name, rows: checked[name].take(rows))()  # check those chunks once
    times = common.interleave(variants, reps)
    handle.close()
    rows = []
    for name, values in times.items():
        per_batch = common.median(values) / batches
        rows.append([name, f"{1e3 * per_batch:.1f}", f"{bs / per_batch:.0f}"])
    chunk_rows = {name: checked[name].chunk_rows for name in TABLES}
    notes = [
        f"COCO-shaped tables: {path} ({path.stat().st_size / 1e9:.2f} GB), rows per chunk {chunk_rows}, "
        f"{batches} batches of {bs} per rep, {reps} interleaved reps, medians, page cache warm",
        f"every chunk of the three tables read and checked once (what one process pays over its first "
        f"epochs, at most): {check_all:.1f} s",
    ]
    return rows, notes


def main(argv=None) -> int:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--sizes", default="224,256")
    p.add_argument("--images", type=int, default=None, help="images in each bench cache")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", default="0,1,2,4")
    p.add_argument("--baseline-reader", help="another tinysiglip/cache/reader.py (file or git:REV)")
    p.add_argument("--coco-tables", action="store_true", help="also the small datasets at COCO's shape")
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
    for size in [int(x) for x in args.sizes.split(",") if x.strip()]:
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
    if args.coco_tables:
        table_rows, table_notes = measure_coco_tables(args, reps)
        body += (
            "\n\nToken ids and both embedding tables at COCO's shape (one batch = 256 image rows, "
            "256 caption rows):\n\n"
            + common.table(["variant", "ms per batch", "img/s"], table_rows)
            + "\n\n"
            + "\n".join(f"- {n}" for n in table_notes)
        )
    common.report(
        "Training loader at 224/256 px (TrainPairs + TrainLoader)", common.command_line(), body, args
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
