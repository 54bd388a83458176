"""Shared pieces of the benchmarks: machine description, interleaved timing, result tables, a small
benchmark world (synthetic data + random-weight SigLIP teacher + cache), and the training step of
``tinysiglip.train.run_training`` reproduced line for line so that it can be timed in isolation."""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
# where report() appends its sections (bench/run_gpu.sh points it into $OUT)
RESULTS = Path(os.environ.get("TSL_BENCH_RESULTS", BENCH_DIR / "RESULTS.md"))
DEFAULT_WORK = Path(os.environ.get("TSL_BENCH_DIR", "/tmp/tsl_bench"))


# ------------------------------------------------------------------------------------------ CLI


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small sizes (about 2 minutes on a 2-core CPU)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, see README)")
    p.add_argument("--reps", type=int, default=None, help="interleaved repetitions per variant")
    p.add_argument("--work-dir", type=Path, default=DEFAULT_WORK, help="scratch folder (data, caches)")
    p.add_argument("--no-append", action="store_true", help="do not append to bench/RESULTS.md")
    return p


def setup_torch(args) -> None:
    import torch

    torch.set_num_threads(int(args.threads))
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here")


def machine() -> str:
    import torch

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = "load {:.2f}/{:.2f}/{:.2f}".format(*os.getloadavg())
    except OSError:
        load = ""
    gpu = "none"
    if torch.cuda.is_available():
        gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return (
        f"CPU {cpu}, {os.cpu_count()} cores ({load}); torch {torch.__version__}, "
        f"{torch.get_num_threads()} intra-op thread(s); GPU {gpu}; Python {platform.python_version()}"
    )


def sync(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def interleave(variants: Mapping[str, Callable[[], float | None]], reps: int) -> dict[str, list[float]]:
    """Run every variant once per round, A,B,C,A,B,C,...; a variant returns its own measured time
    (or None: wall time of the call). Returns every measurement per variant."""
    out: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(reps):
        names = list(variants)
        if r % 2:  # alternate the order so no variant always runs right after another
            names.reverse()
        for name in names:
            t0 = time.perf_counter()
            value = variants[name]()
            out[name].append(time.perf_counter() - t0 if value is None else float(value))
    return out


def median(values) -> float:
    return statistics.median(values) if values else math.nan


def spread(values) -> str:
    if len(values) < 2:
        return ""
    return f"{min(values):.4g}-{max(values):.4g}"


def table(headers: list[str], rows: list[list[Any]]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
        return str(v)

    cells = [[fmt(v) for v in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def report(title: str, command: str, body: str, args) -> str:
    """Print the section and append it (dated) to bench/RESULTS.md."""
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    text = f"## {title} — {stamp}\n\n`{command}`\n\nMachine: {machine()}\n\n{body.strip()}\n"
    print("\n" + text, flush=True)
    if not getattr(args, "no_append", False):
        if not RESULTS.exists():
            RESULTS.write_text("# Benchmark results\n\nAppended by the scripts in bench/ (newest last).\n\n")
        with RESULTS.open("a") as f:
            f.write("\n" + text)
    return text


def command_line() -> str:
    return f"python -m bench.{Path(sys.argv[0]).stem} " + " ".join(sys.argv[1:])


def load_module_version(source: str, relpath: str, work: Path):
    """Import another version of a tinysiglip module for a side-by-side run: ``source`` is a file,
    or ``git:REV`` (the module at that commit, read with git show)."""
    import importlib.util
    import subprocess

    path = Path(source)
    if source.startswith("git:"):
        text = subprocess.run(
            ["git", "show", f"{source[4:]}:{relpath}"],
            capture_output=True,
            text=True,
            check=True,
            cwd=BENCH_DIR.parent,
        ).stdout
        path = work / ("baseline_" + relpath.replace("/", "_"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    name = "tsl_baseline_" + Path(relpath).stem
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------- real demands

# NVIDIA H100 SXM datasheet: 1,979 TFLOP/s bf16 Tensor Core "with sparsity", i.e. 989 dense.
H100_BF16_DENSE = 989e12
# Model FLOP utilisation assumed for the demands (a ceiling, so that the CPU side is sized for the
# fastest GPU step one can expect): NVIDIA's nvSubquadratic benchmarks measured ViT-Small/16 at 224,
# batch 256, bf16 on one H100 SXM at 4.6-6.6% MFU eager and 22-23% with torch.compile
# (nvidia-bionemo.github.io/nvSubquadratic/benchmarks.html); 40% is the issue's "order of 3,000
# images/s per quarter GPU". Teacher inference (large matmuls, no backward) at 50%.
STUDENT_MFU = 0.40
TEACHER_MFU = 0.50


def count_flops(fn, *args) -> float:
    """FLOPs of one call, counted by torch's FlopCounterMode (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return float(counter.get_total_flops())


def student_step_flops(image_size: int, student: str = "vit_small", embed_dim: int = 1024) -> float:
    """FLOPs of one image-caption pair through a full-scale student, forward + backward (3x forward)."""
    import torch

    from tinysiglip.students import TokenVocab, create_student

    vocab = TokenVocab(list(range(3, 2000)), pad_id=0, special_ids=[0, 1, 2], teacher_vocab_size=256000)
    model = create_student(student, embed_dim=embed_dim, image_size=image_size, vocab=vocab)
    pixels = torch.zeros(1, 3, image_size, image_size)
    ids = torch.full((1, 64), 5, dtype=torch.long)
    with torch.no_grad():
        forward = count_flops(lambda: (model.encode_image(pixels), model.encode_text(ids)))
    return 3 * forward


def siglip_forward_flops(hidden: int, layers: int, heads: int, image_size: int) -> tuple[float, float]:
    """(image tower, text tower) forward FLOPs per image / per caption of a SigLIP of that shape,
    counted on the meta device (no memory, no time)."""
    import torch
    from transformers import SiglipConfig, SiglipModel

    tower = dict(
        hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers, num_attention_heads=heads
    )
    cfg = SiglipConfig(
        text_config=dict(**tower, max_position_embeddings=64, vocab_size=1000, projection_size=hidden),
        vision_config=dict(**tower, patch_size=16, image_size=image_size),
    )
    with torch.device("meta"):
        model = SiglipModel(cfg).eval()
        pixels = torch.empty(1, 3, image_size, image_size)
        ids = torch.zeros(1, 64, dtype=torch.long)
    with torch.no_grad():
        image = count_flops(lambda: model.get_image_features(pixel_values=pixels))
        text = count_flops(lambda: model.get_text_features(input_ids=ids))
    return image, text


def per_second(flops: float, *, gpu_fraction: float, mfu: float) -> float:
    """Items per second a GPU share delivers at that utilisation of dense bf16 peak."""
    return H100_BF16_DENSE * gpu_fraction * mfu / flops


# ------------------------------------------------------------------------------- bench world

# Random-weight SigLIP teachers (transformers SiglipModel, same code path as google/siglip2-*).
TEACHERS: dict[str, dict[str, Any]] = {
    # the local world's local-m architecture (tinysiglip/teacher/local.py defaults), random weights
    "local-m": {"hidden": 128, "vision_layers": 3, "text_layers": 2, "heads": 4, "mlp_ratio": 4, "patch": 16},
    # SigLIP Base width/depth at the bench image size: how the teacher cost grows
    "base": {"hidden": 768, "vision_layers": 12, "text_layers": 12, "heads": 12, "mlp_ratio": 4, "patch": 16},
    # SigLIP Large width/depth (1024 wide, 24+24 layers)
    "large": {
        "hidden": 1024,
        "vision_layers": 24,
        "text_layers": 24,
        "heads": 16,
        "mlp_ratio": 4,
        "patch": 16,
    },
    "tiny": {"hidden": 32, "vision_layers": 2, "text_layers": 2, "heads": 2, "mlp_ratio": 2, "patch": 8},
}


def make_teacher(work: Path, name: str, image_size: int) -> Path:
    """A random-weight SiglipModel + processor saved like google/siglip-*; cached on disk."""
    out = work / "teachers" / f"{name}-{image_size}"
    if (out / "config.json").exists():
        return out
    import torch

    from tinysiglip.teacher.tiny import DEFAULT_VOCAB_WORDS, build_config, build_processor, build_tokenizer

    spec = TEACHERS[name]
    tokenizer = build_tokenizer(DEFAULT_VOCAB_WORDS)
    config = build_config(
        "siglip",
        vocab_size=len(tokenizer),
        image_size=image_size,
        patch_size=spec["patch"],
        hidden=spec["hidden"],
        vision_layers=spec["vision_layers"],
        text_layers=spec["text_layers"],
        heads=spec["heads"],
        mlp_ratio=spec["mlp_ratio"],
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    from transformers import SiglipModel

    torch.manual_seed(0)
    # Random init of a Large-sized model takes a minute on a CPU, a second on a GPU.
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = SiglipModel(config).eval()
    model = model.cpu()
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    build_processor("siglip", tokenizer, image_size=image_size, patch_size=spec["patch"]).save_pretrained(tmp)
    os.replace(tmp, out)
    return out


def make_shapes_split(work: Path, n_images: int, image_size: int, split: str = "train"):
    """A synthetic shapes split (COCO format, JPEG files) of about n_images images."""
    from tinysiglip.data import make_shapes

    root = work / f"shapes-{n_images}-{image_size}"
    sizes = {"train": n_images, "val": max(8, n_images // 8), "test": 8}
    if not (root / "shapes_dataset.json").exists():
        make_shapes(root, seed=0, sizes=sizes, image_size=image_size)
    from tinysiglip.data import load_coco_captions

    return load_coco_captions(
        root / "annotations" / f"captions_{split}.json", root / "images" / split, name="shapes", split=split
    )


def make_cache(work: Path, teacher_dir: Path, dataset, tag: str, device: str = "cpu") -> Path:
    from tinysiglip.cache import FORMAT_VERSION, build_cache
    from tinysiglip.cache.reader import read_meta

    out = work / "caches" / f"{tag}-{teacher_dir.name}-{dataset.split}-{len(dataset.records)}.h5"
    if out.exists():
        meta = read_meta(out)
        if meta.get("complete") and meta.get("format_version") == FORMAT_VERSION:
            return out
        out.unlink()  # an older format (or an unfinished file) left by an earlier bench run
    return Path(build_cache(str(teacher_dir), dataset, out, batch_size=64, progress=False, device=device))


# ------------------------------------------------------------------------------ training step


class Trainer:
    """The per-batch work of ``run_training``'s loop (student forward, losses, backward, clip, AdamW,
    LR schedule, logit clamp), built from a cache exactly as run_training builds it."""

    def __init__(self, cache_path, *, student="vit_small", scale="local", device="cpu", bf16=None, lr=5e-4):
        import torch

        from tinysiglip.cache import open_cache
        from tinysiglip.losses import DistillationLoss, LossWeights
        from tinysiglip.student_eval import pixel_normaliser
        from tinysiglip.students import create_student
        from tinysiglip.train import _lr_lambda, _make_vocab, _param_groups

        self.device = torch.device(device)
        cache = open_cache(cache_path)
        self.cache = cache
        torch.manual_seed(0)
        self.model = create_student(
            student,
            embed_dim=cache.embed_dim,
            image_size=cache.image_size,
            vocab=_make_vocab(cache),
            scale=scale,
        ).to(self.device)
        self.model.train()
        self.criterion = DistillationLoss(
            LossWeights(feat=1.0, affinity=1.0, contrast=1.0), contrastive="sigmoid"
        )
        self.optimizer = torch.optim.AdamW(_param_groups(self.model, 0.05), lr=lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(10**6, 10))
        self.normalise = pixel_normaliser(cache, self.device)
        self.teacher_logit_scale = float(cache.logit_scale)
        self.bf16 = (self.device.type == "cuda") if bf16 is None else bf16

    def step(self, batch: Mapping[str, Any], *, blocking_index: bool = False) -> None:
        """One training step; ``blocking_index`` copies the image index as run_training did before
        2026-11-27 (a blocking copy, which stalls the host until the GPU has drained its queue)."""
        import torch

        model, device = self.model, self.device
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16):
            student_image = model.encode_image(self.normalise(batch["pixels"]))
            student_text = model.encode_text(batch["input_ids"].to(device, non_blocking=True))
            terms = self.criterion(
                student_image=student_image.float(),
                student_text=student_text.float(),
                teacher_image=batch["teacher_image_embed"].to(device, non_blocking=True),
                teacher_text=batch["teacher_text_embed"].to(device, non_blocking=True),
                logit_scale=model.logit_scale.exp(),
                logit_bias=model.logit_bias,
                teacher_logit_scale=self.teacher_logit_scale,
                image_index=batch["image_index"].to(device, non_blocking=not blocking_index),
                caption_image_index=batch["image_index"].to(device, non_blocking=not blocking_index),
            )
        loss = sum(value for key, value in terms.items() if key.endswith("_loss"))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        with torch.no_grad():
            model.logit_scale.clamp_(max=math.log(100.0))
        return None
