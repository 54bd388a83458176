"""Cache vs. teacher in the loop: training steps/s of the same student and batch size

  (a) cache    from the HDF5 teacher cache (TrainPairs + DataLoader, teacher embeddings read), as run_training;
  (b) online   online distillation: decode the JPEGs (tinysiglip.data.open_rgb), teacher.resize_to_uint8,
               teacher.tokenize, teacher.embed_pixels + embed_token_ids on every batch, then the same step.

(b) is run with two random-weight SiglipModel teachers at the bench image size: ``local-m`` (the local
world's teacher architecture, width 128) and ``base`` (SigLIP Base width/depth: 768 wide, 12+12 layers).
The student's loss needs teacher vectors of the cache's width, so the ``base`` teacher's embeddings
are cut to that width before the step (the teacher's cost is the full model's; the step is identical).
On CUDA the teacher runs under bf16 autocast, like the student. A FLOP count (torch FlopCounterMode on the meta device) projects the ratio to the real setting:
SigLIP 2 Large/16 at 256 px as teacher, ViT-Small/16 student at 256 px.

``python -m bench.cache_vs_online [--quick] [--device cpu|cuda] [--batch-size N] [--teachers local-m,base]``
"""

from __future__ import annotations

import random
import time

from bench import common

# (name, hidden, layers, heads, image size) of the real teachers
REAL_TEACHERS = (("SigLIP 2 Large/16 @256", 1024, 24, 16, 256), ("SigLIP 2 Base/16 @224", 768, 12, 12, 224))


def flops_projection() -> list[list]:
    """Teacher forward vs student step FLOPs per image-caption pair at the real scale."""
    out = []
    for name, hidden, layers, heads, size in REAL_TEACHERS:
        teacher = sum(common.siglip_forward_flops(hidden, layers, heads, size))
        step = common.student_step_flops(size)
        out.append([f"{name} → ViT-S/16 @{size}", teacher / 1e9, step / 1e9, (step + teacher) / step])
    return out


def main(argv=None) -> int:
    p = common.parser(__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=None)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--student", default="vit_small")
    p.add_argument("--scale", default="local", choices=("local", "full"))
    p.add_argument("--teachers", default="local-m,base", help="online teachers (bench.common.TEACHERS)")
    p.add_argument("--steps", type=int, default=None, help="steps per repetition and variant")
    args = p.parse_args(argv)
    common.setup_torch(args)
    import numpy as np
    import torch

    from tinysiglip.cache import TrainLoader, TrainPairs
    from tinysiglip.data import open_rgb
    from tinysiglip.teacher import load_teacher

    images = args.images or (256 if args.quick else 2000)
    reps = args.reps or (3 if args.quick else 5)
    steps = args.steps or (3 if args.quick else 10)
    bs = args.batch_size
    work = args.work_dir
    dataset = common.make_shapes_split(work, images, args.image_size)
    cache_teacher = common.make_teacher(work, "local-m", args.image_size)
    cache = common.make_cache(work, cache_teacher, dataset, "online", device=args.device)
    trainer = common.Trainer(cache, student=args.student, scale=args.scale, device=args.device)
    pairs = TrainPairs(cache, seed=0, embeddings_in_memory=True)
    loader = TrainLoader(pairs, bs, seed=0, pin_memory=args.device == "cuda")
    records = dataset.records
    width = trainer.cache.embed_dim
    teachers = {
        name: load_teacher(common.make_teacher(work, name, args.image_size), device=args.device)
        for name in args.teachers.split(",")
        if name.strip()
    }

    def cached():
        common.sync(trainer.device)
        t0 = time.perf_counter()
        for k, batch in enumerate(loader.epoch(0)):
            if k == steps:
                break
            trainer.step(batch)
        common.sync(trainer.device)
        return (time.perf_counter() - t0) / steps

    rng = random.Random(0)
    teacher_share: dict[str, list[float]] = {name: [] for name in teachers}
    decode_share: dict[str, list[float]] = {name: [] for name in teachers}

    def online(name):
        teacher = teachers[name]

        def go():
            common.sync(trainer.device)
            t0 = time.perf_counter()
            spent = decoding = 0.0
            for _ in range(steps):
                rows = rng.sample(range(len(records)), bs)
                s0 = time.perf_counter()
                pixels = torch.from_numpy(
                    np.stack([teacher.resize_to_uint8(open_rgb(records[r].path)) for r in rows])
                )
                decoding += time.perf_counter() - s0
                captions = [rng.choice(records[r].captions) for r in rows]
                input_ids = teacher.tokenize(captions)
                with (
                    torch.inference_mode(),
                    torch.autocast(trainer.device.type, dtype=torch.bfloat16, enabled=trainer.bf16),
                ):
                    t_img = teacher.embed_pixels(pixels)[:, :width].clone()
                    t_txt = teacher.embed_token_ids(input_ids)[:, :width].clone()
                common.sync(trainer.device)
                spent += time.perf_counter() - s0
                index = torch.as_tensor(rows)
                trainer.step(
                    {
                        "pixels": pixels,
                        "input_ids": input_ids,
                        "teacher_image_embed": t_img,
                        "teacher_text_embed": t_txt,
                        "image_index": index,
                        "caption_index": index,
                    }
                )
            common.sync(trainer.device)
            teacher_share[name].append(spent / steps)
            decode_share[name].append(decoding / steps)
            return (time.perf_counter() - t0) / steps

        return go

    cached()  # warm-up
    for name in teachers:
        online(name)()
    for v in (*teacher_share.values(), *decode_share.values()):
        v.clear()
    variants = {"(a) cache": cached, **{f"(b) online, teacher {n}": online(n) for n in teachers}}
    times = common.interleave(variants, reps)
    base = common.median(times["(a) cache"])
    rows = []
    for name, values in times.items():
        med = common.median(values)
        teacher_name = name.rsplit(" ", 1)[-1]
        share = common.median(teacher_share[teacher_name]) if teacher_name in teacher_share else 0.0
        dec = common.median(decode_share[teacher_name]) if teacher_name in decode_share else 0.0
        rows.append(
            [
                name,
                f"{1000 * med:.0f}",
                f"{1 / med:.2f}",
                f"{1000 * dec:.0f}",
                f"{1000 * (share - dec):.0f}",
                f"{med / base:.2f}",
            ]
        )
    try:
        projection = common.table(
            ["setting", "teacher GFLOP/pair (fwd)", "student GFLOP/pair (fwd+bwd)", "projected (a)/(b)"],
            [[r[0], f"{r[1]:.1f}", f"{r[2]:.1f}", f"{r[3]:.1f}x"] for r in flops_projection()],
        )
    except Exception as error:  # pragma: no cover - FLOP counting is best effort
        projection = f"(FLOP projection failed: {error})"
    body = (
        f"batch {bs}, student {args.student} ({args.scale}), {args.image_size}px shapes JPEGs, "
        f"{steps} steps x {reps} interleaved reps, medians. Random-weight teachers (speed only).\n\n"
        + common.table(
            ["variant", "ms/step", "steps/s", "ms decode+resize", "ms tokenize+teacher", "t(b)/t(a)"], rows
        )
        + "\n\nProjected at the real scale from FLOPs (teacher forward on every pair vs. student step; "
        "assumes equal FLOP efficiency, ignores JPEG decode of full-size COCO images):\n\n" + projection
    )
    common.report("Cache vs online distillation", common.command_line(), body, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
