"""Cache build: images/s of ``build_cache`` vs. the teacher's forward pass alone on batches already
in memory and vs. the decoding alone: the build should run at the slower of the two, not their sum.

Variants, interleaved (medians):
  build            build_cache(teacher, dataset, fresh out path) end to end (default decode threads)
  build-inline     the same with num_workers=0 (decode on the main thread, no overlap)
  forward          teacher.embed_pixels on the cached uint8 batches + embed_token_ids on the cached
                   token ids (everything the build computes), nothing else
  forward-images   embed_pixels only
  decode           the build's decode pipeline alone (``_decoded_batches`` with the build's default
                   threads), no teacher
  decode-inline    the same on the main thread

``--photos`` uses COCO-sized photo-like JPEGs (bench.decode) instead of the small shapes images.

``python -m bench.cache_build [--quick] [--device cpu|cuda] [--teacher local-m|base] [--images N] [--photos]``
"""

from __future__ import annotations

import shutil
import time

from bench import common


def main(argv=None) -> int:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=None)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--teacher", default="local-m", choices=sorted(common.TEACHERS))
    p.add_argument(
        "--photos", action="store_true", help="COCO-sized JPEGs (640x480, 500x375) instead of shapes"
    )
    args = p.parse_args(argv)
    common.setup_torch(args)
    import numpy as np
    import torch

    from tinysiglip.cache import build_cache, open_cache
    from tinysiglip.cache.build import _decoded_batches, default_decode_workers
    from tinysiglip.teacher import load_teacher

    images = args.images or (256 if args.quick else 2000)
    reps = args.reps or (3 if args.quick else 5)
    bs = args.batch_size
    work = args.work_dir
    if args.photos:
        from bench.decode import photo_dataset

        dataset = photo_dataset(work, images)
    else:
        dataset = common.make_shapes_split(work, images, args.image_size)
    teacher_dir = common.make_teacher(work, args.teacher, args.image_size)
    teacher = load_teacher(teacher_dir, device=args.device)
    scratch = work / "build_scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    ref = scratch / "ref.h5"
    if not ref.exists():
        build_cache(teacher, dataset, ref, batch_size=bs, progress=False)
    cache = open_cache(ref)
    pixels = cache.pixels()
    token_ids = cache.token_ids()
    n, m = len(pixels), len(token_ids)
    counter = [0]

    def build(workers):
        def go():
            counter[0] += 1
            out = scratch / f"run{counter[0]}.h5"
            common.sync(args.device)
            t0 = time.perf_counter()
            build_cache(teacher, dataset, out, batch_size=bs, progress=False, num_workers=workers)
            common.sync(args.device)
            dt = time.perf_counter() - t0
            out.unlink()
            return dt

        return go

    def forward(texts=True):
        def go():
            t0 = time.perf_counter()
            with torch.inference_mode():
                for a in range(0, n, bs):  # embed_pixels returns CPU float32, as the build uses it
                    teacher.embed_pixels(torch.from_numpy(pixels[a : a + bs])).numpy().astype(np.float16)
                if texts:
                    for a in range(0, m, bs):
                        ids = torch.from_numpy(token_ids[a : a + bs])
                        teacher.embed_token_ids(ids).numpy().astype(np.float16)
            common.sync(args.device)
            return time.perf_counter() - t0

        return go

    paths = [r.path for r in dataset.records]
    threads = default_decode_workers(args.device)

    def decode(workers):
        def go():
            for _ in _decoded_batches(teacher, paths, 0, bs, workers):
                pass

        return go

    variants = {
        "build": build(None),
        "build-inline": build(0),
        "forward": forward(True),
        "forward-images": forward(False),
        "decode": decode(threads),
        "decode-inline": decode(0),
    }
    times = common.interleave(variants, reps)
    t_build = common.median(times["build"])
    rows = []
    for name, values in times.items():
        med = common.median(values)
        rows.append([name, f"{med:.2f}", f"{n / med:.0f}", f"{100 * med / t_build:.0f}%"])
    fwd, dec = common.median(times["forward"]), common.median(times["decode"])
    images_kind = "COCO-sized photo-like JPEGs" if args.photos else f"{args.image_size}px shapes JPEGs"
    body = (
        f"{n} images / {m} captions ({images_kind}), teacher {args.teacher} at {teacher.image_size} px "
        f"(random weights) on {args.device}, batch {bs}, build decode threads {threads}, {reps} interleaved "
        "reps, medians.\n\n"
        + common.table(["variant", "seconds", "images/s", "% of build"], rows)
        + f"\n\nOverlap: build {t_build:.2f} s vs the slower of forward ({fwd:.2f} s) and decode ({dec:.2f} s): "
        f"**{t_build / max(fwd, dec):.2f}x** the slower (1.00 = perfect overlap), {t_build / (fwd + dec):.2f}x "
        "their sum."
    )
    shutil.rmtree(scratch, ignore_errors=True)
    common.report("Cache build vs teacher forward", common.command_line(), body, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
