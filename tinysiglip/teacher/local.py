"""Train the local-world teacher: a small SiglipModel on the synthetic shapes dataset, on CPU.

The result is an ordinary Hugging Face folder (``save_pretrained`` of the model and its processor)
that ``load_teacher`` / ``AutoModel`` / ``AutoProcessor.from_pretrained`` load exactly like a
``google/siglip2-*`` checkpoint. ``tinysiglip_teacher.json`` is written last, atomically: it records
the training config, the data fingerprints and the retrieval the teacher reached, and its presence
with the same fingerprint makes a second call reuse the folder instead of training again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tinysiglip.errors import TinySigLIPError
from tinysiglip.teacher.hf import MAX_TEXT_LENGTH, Teacher, load_teacher
from tinysiglip.teacher.tiny import build_config, build_processor, build_tokenizer, caption_words

MARKER_FILE = "tinysiglip_teacher.json"
FORMAT_VERSION = 1


class LocalTeacherError(TinySigLIPError):
    """The local teacher could not be trained or the output folder cannot be used."""


@dataclass(frozen=True)
class LocalTeacherConfig:
    """Everything that decides the trained weights (with the seed and the data fingerprints)."""

    image_size: int = 64
    patch_size: int = 16  # 4x4 tokens at 64 px: ~3x cheaper than 8 on CPU, still learns the 3x3 positions
    hidden: int = 128
    vision_layers: int = 3
    text_layers: int = 2
    heads: int = 4
    mlp_ratio: int = 2
    steps: int = 400
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    init_logit_scale: float = 10.0
    # SigLIP's -10 bias prior suits 32k-pair batches; with 128 pairs per batch it starves the
    # negatives of gradient: on the tiny world (300 steps) test R@1 was 8% at -10 and 60% at -5 with
    # logit_lr 0.03 (scale then grew 10 -> 27). The temperature and bias get their own learning rate.
    init_logit_bias: float = -5.0
    logit_lr: float = 0.03
    augment_shift: int = 2  # random translation in pixels (positions are coarse 3x3 cells)


def _fingerprint(config: LocalTeacherConfig, seed: int, train, val, test) -> str:
    payload = {
        "format": FORMAT_VERSION,
        "config": asdict(config),
        "seed": seed,
        "train": train.fingerprint(),
        "val": val.fingerprint() if val is not None else None,
        "test": test.fingerprint() if test is not None else None,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _read_marker(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None


def _is_complete(out_dir: Path, fingerprint: str) -> bool:
    marker = _read_marker(out_dir)
    return (
        marker is not None
        and marker.get("fingerprint") == fingerprint
        and (out_dir / "config.json").is_file()
        and (out_dir / "model.safetensors").is_file()
        and (out_dir / "processor_config.json").is_file()
    )


def _write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _decode_pixels(dataset, teacher: Teacher, progress: bool) -> torch.Tensor:
    """(N, 3, S, S) uint8: every image opened once and resized as the teacher's processor does."""
    from tinysiglip.data import open_rgb

    records = dataset.records
    iterator = records
    if progress:
        from tqdm import tqdm

        iterator = tqdm(records, desc=f"decode {dataset.split}", leave=False)
    pixels = torch.empty(len(records), 3, teacher.image_size, teacher.image_size, dtype=torch.uint8)
    for index, record in enumerate(iterator):
        pixels[index] = torch.from_numpy(teacher.resize_to_uint8(open_rgb(record.path)))
    return pixels


def _flat_captions(dataset) -> tuple[list[str], torch.Tensor]:
    captions: list[str] = []
    owner: list[int] = []
    for image_index, record in enumerate(dataset.records):
        for caption in record.captions:
            captions.append(caption)
            owner.append(image_index)
    return captions, torch.tensor(owner, dtype=torch.long)


def _tokenize_all(teacher: Teacher, captions: list[str], chunk: int = 4096) -> torch.Tensor:
    return torch.cat([teacher.tokenize(captions[i : i + chunk]) for i in range(0, len(captions), chunk)])


@torch.no_grad()
def evaluate_teacher(teacher: Teacher, dataset, *, pixels: torch.Tensor | None = None, batch_size: int = 256):
    """Retrieval R@K (percent) of a teacher on a dataset, plus the chance levels of R@1."""
    from tinysiglip.evaluate import retrieval_metrics

    if pixels is None:
        pixels = _decode_pixels(dataset, teacher, progress=False)
    captions, owner = _flat_captions(dataset)
    token_ids = _tokenize_all(teacher, captions)
    image_embeds = torch.cat(
        [teacher.embed_pixels(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)]
    )
    text_embeds = torch.cat(
        [teacher.embed_token_ids(token_ids[i : i + batch_size]) for i in range(0, len(token_ids), batch_size)]
    )
    metrics = retrieval_metrics(image_embeds, text_embeds, owner)
    num_images, num_captions = len(pixels), len(captions)
    metrics["chance_i2t_r1"] = 100.0 * (num_captions / num_images) / num_captions  # any of ~k captions
    metrics["chance_t2i_r1"] = 100.0 / num_images
    metrics["num_images"] = num_images
    metrics["num_captions"] = num_captions
    return metrics


def _shift(pixels: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels, padded with edge pixels (background)."""
    if max_shift <= 0:
        return pixels
    dx, dy = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=generator))
    padded = F.pad(pixels.float(), (max_shift,) * 4, mode="replicate")
    side_h, side_w = pixels.shape[-2:]
    top, left = max_shift + dy, max_shift + dx
    return padded[..., top : top + side_h, left : left + side_w].to(torch.uint8)


def train_local_teacher(
    train,
    out_dir: str | Path,
    *,
    val=None,
    test=None,
    seed: int = 0,
    steps: int | None = None,
    batch_size: int | None = None,
    image_size: int | None = None,
    progress: bool = True,
    num_threads: int | None = 2,
    device: str = "cpu",
    **overrides: Any,
) -> Path:
    """Train (or reuse) the local-world teacher on ``train`` and save it to ``out_dir``.

    ``overrides`` are LocalTeacherConfig fields (hidden, vision_layers, lr, ...); unknown names fail.
    ``device``: the local world trains on the CPU (its bytes then do not depend on a GPU's kernels);
    a GPU only speeds up experiments with the teacher's settings.
    Returns ``out_dir``. A folder that already holds a complete teacher trained with the same config,
    seed and data is returned as is; any other non-empty folder without our marker is refused.
    """
    fields = LocalTeacherConfig.__dataclass_fields__
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise LocalTeacherError(f"train_local_teacher: unknown option(s) {unknown}; valid: {sorted(fields)}")
    values = dict(overrides)
    if image_size is not None:
        values["image_size"] = image_size
    if steps is not None:
        values["steps"] = steps
    if batch_size is not None:
        values["batch_size"] = batch_size
    config = LocalTeacherConfig(**values)
    if config.image_size % config.patch_size:
        raise LocalTeacherError(
            f"image_size {config.image_size} must be a multiple of patch_size {config.patch_size}"
        )
    if not train.records:
        raise LocalTeacherError(f"the training split {train.annotation_file} holds no images")

    out_dir = Path(out_dir).expanduser().absolute()
    fingerprint = _fingerprint(config, seed, train, val, test)
    if _is_complete(out_dir, fingerprint):
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()) and _read_marker(out_dir) is None:
        if not (out_dir / "config.json").is_file():
            raise LocalTeacherError(
                f"{out_dir} is not empty and is not a local teacher folder; choose an empty or new folder"
            )
    if out_dir.exists():
        # A stale or partial teacher: start clean so no old file survives into the new one.
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)

    if num_threads:
        torch.set_num_threads(num_threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)

    train_captions, train_owner = _flat_captions(train)
    tokenizer = build_tokenizer(caption_words(train_captions), max_length=MAX_TEXT_LENGTH)
    processor = build_processor(
        "siglip", tokenizer, image_size=config.image_size, patch_size=config.patch_size
    )
    model_config = build_config(
        "siglip",
        vocab_size=len(tokenizer),
        image_size=config.image_size,
        patch_size=config.patch_size,
        hidden=config.hidden,
        vision_layers=config.vision_layers,
        text_layers=config.text_layers,
        heads=config.heads,
        mlp_ratio=config.mlp_ratio,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    from transformers import SiglipModel

    model = SiglipModel(model_config).to(device)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(config.init_logit_scale))
        model.logit_bias.fill_(config.init_logit_bias)
    model.train()
    # The Teacher wrapper gives the exact resize / normalisation / tokenisation of the saved folder.
    teacher = Teacher(model=model, processor=processor, source=str(out_dir), device=device)

    started = time.perf_counter()
    train_pixels = _decode_pixels(train, teacher, progress)
    train_tokens = _tokenize_all(teacher, train_captions)
    captions_of_image: list[list[int]] = [[] for _ in train.records]
    for caption_index, image_index in enumerate(train_owner.tolist()):
        captions_of_image[image_index].append(caption_index)
    decode_seconds = time.perf_counter() - started

    decay, no_decay, logit_params = [], [], []
    for name, parameter in model.named_parameters():
        if name.startswith("logit_"):
            logit_params.append(parameter)
        else:
            (no_decay if parameter.ndim < 2 else decay).append(parameter)
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
            {"params": logit_params, "weight_decay": 0.0, "lr": config.logit_lr},
        ],
        lr=config.lr,
        betas=(0.9, 0.98),
    )
    warmup = max(1, int(config.warmup_fraction * config.steps))

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress_fraction = (step - warmup) / max(1, config.steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_fraction)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    from tinysiglip.losses import sigmoid_loss

    num_images = len(train.records)
    batch = min(config.batch_size, num_images)
    order = torch.randperm(num_images, generator=generator)
    cursor = 0
    iterator = range(config.steps)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(iterator, desc="train local teacher")
        iterator = bar
    train_started = time.perf_counter()
    last_loss = float("nan")
    for step in iterator:
        if cursor + batch > num_images:
            order = torch.randperm(num_images, generator=generator)
            cursor = 0
        image_indices = order[cursor : cursor + batch]
        cursor += batch
        picks = torch.randint(0, 1 << 30, (batch,), generator=generator).tolist()
        caption_indices = [
            captions_of_image[i][pick % len(captions_of_image[i])]
            for i, pick in zip(image_indices.tolist(), picks, strict=True)
        ]
        pixels = _shift(train_pixels[image_indices], config.augment_shift, generator).to(device)
        input_ids = train_tokens[caption_indices].to(device)

        image_embeds = model.get_image_features(pixel_values=teacher.normalize_pixels(pixels)).pooler_output
        text_embeds = model.get_text_features(input_ids=input_ids).pooler_output
        loss = sigmoid_loss(
            F.normalize(image_embeds, dim=-1),
            F.normalize(text_embeds, dim=-1),
            model.logit_scale.exp(),
            model.logit_bias,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        last_loss = float(loss.detach())
        if bar is not None and step % 10 == 0:
            bar.set_postfix(loss=f"{last_loss:.3f}", scale=f"{float(model.logit_scale.exp()):.1f}")
    train_seconds = time.perf_counter() - train_started

    model.eval().to("cpu")
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)

    # Evaluate through the saved folder: the same loading path every consumer uses.
    saved = load_teacher(out_dir)
    metrics: dict[str, Any] = {}
    for split_name, dataset in (("val", val), ("test", test)):
        if dataset is not None and dataset.records:
            metrics[split_name] = evaluate_teacher(saved, dataset)
    info = saved.info()
    marker = {
        "format": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "kind": "local",
        "config": asdict(config),
        "seed": seed,
        "data": {
            "name": train.name,
            "train": {"split": train.split, "fingerprint": train.fingerprint(), "images": num_images},
            "val": None if val is None else {"split": val.split, "fingerprint": val.fingerprint()},
            "test": None if test is None else {"split": test.split, "fingerprint": test.fingerprint()},
        },
        "vocab_size": len(tokenizer),
        "final_train_loss": last_loss,
        "logit_scale": info["logit_scale"],
        "logit_bias": info["logit_bias"],
        "fingerprints": info["fingerprints"],
        "retrieval": metrics,
        "seconds": {"decode": round(decode_seconds, 2), "train": round(train_seconds, 2)},
        "torch_threads": torch.get_num_threads(),
    }
    _write_json_atomic(out_dir / MARKER_FILE, marker)
    return out_dir


def read_local_teacher_info(out_dir: str | Path) -> dict | None:
    """The marker of a trained local teacher (config, data, retrieval), or None."""
    return _read_marker(Path(out_dir))
