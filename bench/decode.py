"""JPEG decode + resize for the cache build, per core, against the teacher's speed.

Images: COCO-sized photos-like JPEGs made with PIL (half 640x480, half 500x375, quality 90;
multi-octave noise, so they compress like photos, not like flat shapes). Pixels: what the cache
stores, ``tinysiglip.cache.build._decode`` (PIL decode, then the teacher processor's resize to a
256 px square: torchvision's antialiased bilinear on the uint8 tensor, as transformers 5 does).

Demand: SigLIP 2 Large/16 at 256 px, forward, on one H100 at ``bench.common.TEACHER_MFU`` of 989
TFLOP/s dense bf16; images/s for the image tower alone and with the ~5 captions per image the build
also embeds (FLOPs counted by FlopCounterMode on the meta device).

Variants (images/s, interleaved, medians):
  pil-tN / pil-pN   the build path in N threads / N processes (one torch thread each)
  torchvision-t1    torchvision.io.decode_jpeg on the file bytes + the same resize, one thread
                    (its pixels are compared with the build path's: "exact" column)
  cuda-batched      decode_jpeg on the GPU (nvJPEG) in batches of 64 + resize on the GPU (only with
                    CUDA); pixel differences and the teacher-embedding difference are reported

``python -m bench.decode [--quick] [--images N] [--parallel 1,2,4] [--device cuda]``
"""

from __future__ import annotations

import io
import math
import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

from bench import common

CAPTIONS_PER_IMAGE = 5.0  # COCO: 591,753 captions / 118,287 train2017 images = 5.003


def photo_jpeg(rng, width: int, height: int, quality: int = 90) -> bytes:
    """A photo-like JPEG: smooth multi-octave colour noise plus grain, about as large as a COCO
    photo of that size (COCO train2017 averages ~160 kB per image)."""
    import numpy as np
    from PIL import Image

    img = np.zeros((height, width, 3), np.float32)
    for octave in (2, 4, 8, 16, 32, 64, 128):
        small = rng.normal(size=(max(2, octave * height // width), octave, 3))
        small = ((small - small.min()) / (np.ptp(small) + 1e-6) * 255).astype(np.uint8)
        img += (
            np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC), np.float32)
            / octave**0.3
        )
    img = (img - img.min()) / (np.ptp(img) + 1e-6) * 255 + rng.normal(scale=14.0, size=img.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def make_photos(work: Path, n: int) -> list[Path]:
    """n COCO-sized JPEGs (half 640x480, half 500x375), made once."""
    import numpy as np

    folder = work / f"photos-{n}"
    paths = [folder / f"{i:06d}.jpg" for i in range(n)]
    if all(p.exists() for p in paths):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, path in enumerate(paths):
        path.write_bytes(photo_jpeg(rng, *((640, 480) if i % 2 == 0 else (500, 375))))
    return paths


def photo_dataset(work: Path, n: int):
    """The photos as a CaptionDataset (five dummy captions each), for build_cache."""
    from tinysiglip.data.records import CaptionDataset, ImageRecord

    paths = make_photos(work, n)
    records = [
        ImageRecord(image_id=i, path=p, captions=tuple(f"a photo number {i} view {k}" for k in range(5)))
        for i, p in enumerate(paths)
    ]
    return CaptionDataset(
        name="photos",
        split="train",
        records=records,
        annotation_file=paths[0].parent,
        annotation_sha256=f"photos-{n}",
    )


_WORKER_TEACHER = None


def _init_worker(teacher_dir: str) -> None:
    global _WORKER_TEACHER
    import torch

    from tinysiglip.teacher import load_teacher

    torch.set_num_threads(1)
    _WORKER_TEACHER = load_teacher(teacher_dir)


def _decode_in_worker(path: Path):
    from tinysiglip.cache.build import _decode

    return _decode(_WORKER_TEACHER, path)


def torchvision_decode(teacher, path: Path):
    """decode_jpeg on the file's bytes, then the teacher processor's own resize."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import functional as tvF
    from transformers.image_utils import pil_torch_interpolation_mapping

    data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    side = teacher.image_size
    image = decode_jpeg(data, mode=ImageReadMode.RGB)
    interpolation = pil_torch_interpolation_mapping[teacher.resample]
    return tvF.resize(image, [side, side], interpolation=interpolation, antialias=True).numpy()


def cuda_decode(teacher, paths: list[Path], batch: int = 64):
    """nvJPEG decode of batches on the GPU + resize there; uint8 (N, 3, S, S) on the GPU."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import functional as tvF
    from transformers.image_utils import pil_torch_interpolation_mapping

    side = teacher.image_size
    interpolation = pil_torch_interpolation_mapping[teacher.resample]
    out = []
    for a in range(0, len(paths), batch):
        data = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths[a : a + batch]]
        images = decode_jpeg(data, mode=ImageReadMode.RGB, device="cuda")
        out += [tvF.resize(x, [side, side], interpolation=interpolation, antialias=True) for x in images]
    return torch.stack(out)


def compare_cuda_decode(teacher, paths: list[Path], reference, work: Path) -> str:
    """How far nvJPEG + GPU resize is from the build path: pixels, and a teacher's embeddings."""
    import numpy as np
    import torch

    from tinysiglip.teacher import load_teacher

    gpu_pixels = cuda_decode(teacher, paths)
    cpu_pixels = torch.from_numpy(np.stack(reference))
    diff = (gpu_pixels.cpu().int() - cpu_pixels.int()).abs()
    gpu_teacher = load_teacher(common.make_teacher(work, "local-m", 256), device="cuda")
    cosine = torch.nn.functional.cosine_similarity(
        gpu_teacher.embed_pixels(cpu_pixels), gpu_teacher.embed_pixels(gpu_pixels), dim=-1
    )
    return (
        f"cuda-batched pixels vs the build path: max |diff| {int(diff.max())}, mean {float(diff.float().mean()):.3f}, "
        f"{100 * float((diff > 0).float().mean()):.1f}% of values differ; teacher-embedding cosine (local-m "
        f"architecture, random weights) min {float(cosine.min()):.6f}, mean {float(cosine.mean()):.6f}."
    )


def main(argv=None) -> int:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=None)
    p.add_argument("--parallel", default=None, help="thread/process counts (default 1,2,...,cores)")
    p.add_argument("--teacher", default="tiny", choices=sorted(common.TEACHERS), help="whose processor")
    args = p.parse_args(argv)
    common.setup_torch(args)
    import numpy as np
    import torch

    from tinysiglip.cache.build import _decode
    from tinysiglip.teacher import load_teacher

    n = args.images or (64 if args.quick else 256)
    reps = args.reps or 3
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    parallel = [
        int(x) for x in (args.parallel or ",".join(str(2**k) for k in range(8) if 2**k <= cores)).split(",")
    ]
    paths = make_photos(args.work_dir, n)
    sizes_kb = [p.stat().st_size / 1e3 for p in paths]
    teacher_dir = common.make_teacher(args.work_dir, args.teacher, 256)
    teacher = load_teacher(teacher_dir)

    image_flops, text_flops = common.siglip_forward_flops(1024, 24, 16, 256)
    demand_image = common.per_second(image_flops, gpu_fraction=1.0, mfu=common.TEACHER_MFU)
    demand_build = common.per_second(
        image_flops + CAPTIONS_PER_IMAGE * text_flops, gpu_fraction=1.0, mfu=common.TEACHER_MFU
    )

    reference = [_decode(teacher, path) for path in paths]
    exact_tv = all(np.array_equal(torchvision_decode(teacher, q), r) for q, r in zip(paths, reference))

    pools = {}
    for k in parallel:
        pools[f"pil-t{k}"] = ThreadPoolExecutor(k)
        pools[f"pil-p{k}"] = ProcessPoolExecutor(k, initializer=_init_worker, initargs=(str(teacher_dir),))
        list(pools[f"pil-p{k}"].map(_decode_in_worker, paths[:k]))  # start the processes

    def threads(pool):
        return lambda: [None for _ in pool.map(lambda q: _decode(teacher, q), paths)][-1]

    def processes(pool):
        return lambda: [None for _ in pool.map(_decode_in_worker, paths, chunksize=4)][-1]

    def torchvision_one_thread():
        for q in paths:
            torchvision_decode(teacher, q)

    variants = {"torchvision-t1": torchvision_one_thread}
    for name, pool in pools.items():
        variants[name] = threads(pool) if "-t" in name else processes(pool)
    cuda_note = ""
    if args.device == "cuda":
        try:
            cuda_note = compare_cuda_decode(teacher, paths, reference, args.work_dir)

            def on_gpu():
                cuda_decode(teacher, paths)
                torch.cuda.synchronize()

            variants["cuda-batched"] = on_gpu
        except Exception as error:  # report it and measure the rest
            cuda_note = f"cuda-batched failed: {type(error).__name__}: {error}"
    times = common.interleave(variants, reps)
    for pool in pools.values():
        pool.shutdown()
    rows = []
    for name, values in times.items():
        rate = n / common.median(values)
        used = 1 if name.endswith("t1") else (0 if name == "cuda-batched" else int(name.split("-")[1][1:]))
        per_core = rate / used if used else float("nan")
        exact = {"torchvision-t1": str(exact_tv), "cuda-batched": "no (see below)"}.get(
            name, "yes (build path)"
        )
        need_img = math.ceil(demand_image / per_core) if used else ""
        need_build = math.ceil(demand_build / per_core) if used else ""
        rows.append(
            [
                name,
                used or "GPU",
                f"{rate:.0f}",
                f"{per_core:.0f}" if used else "",
                exact,
                need_build,
                need_img,
            ]
        )
    body = (
        f"{n} JPEGs, mean {np.mean(sizes_kb):.0f} kB (640x480 and 500x375, q90), resized to 256 px by the processor "
        f"of the bench teacher '{args.teacher}' (torchvision antialiased bilinear, as SigLIP 2's); {reps} interleaved "
        f"reps, medians; {cores} cores here.\n\n"
        f"Demand: SigLIP 2 Large/16 @256 forward on one H100 at {100 * common.TEACHER_MFU:.0f}% of 989 TFLOP/s: "
        f"image tower {image_flops / 1e9:.0f} GFLOP/image -> **{demand_image:.0f} img/s**; with "
        f"{CAPTIONS_PER_IMAGE:g} captions x {text_flops / 1e9:.0f} GFLOP (the build embeds both) -> "
        f"**{demand_build:.0f} img/s**.\n\n"
        + common.table(
            [
                "variant",
                "cores",
                "img/s",
                "img/s per core",
                "exact pixels",
                "cores for build",
                "cores for image tower",
            ],
            rows,
        )
        + ("\n\n" + cuda_note if cuda_note else "")
    )
    common.report("JPEG decode + resize vs the teacher (cache build)", common.command_line(), body, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
