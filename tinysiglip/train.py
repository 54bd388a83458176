"""Train a student from the teacher cache: the function the sweep calls, and the ``train`` command.

The loop reads top to bottom: resolve the config, open the caches, build the student, then epochs of
(one caption per image, redrawn each epoch) → losses → AdamW step, an evaluation on the validation
cache every ``eval_every_epochs`` that goes to the ``report`` callback, and a checkpoint that a
stopped run resumes from. The resolved config travels with every checkpoint and result.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from tinysiglip.config.training import DEFAULT_CONFIG, ConfigError, load_config_file, resolve_config
from tinysiglip.evaluate import retrieval_metrics
from tinysiglip.losses import DistillationLoss, LossWeights

__all__ = [
    "DEFAULT_CONFIG",
    "ConfigError",
    "encode_cache",
    "evaluate_student",
    "load_config_file",
    "resolve_config",
    "run_training",
]

Report = Callable[[dict[str, Any]], "bool | None"]

# ---------------------------------------------------------------------------------------------
# pieces of the loop


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms, embeddings' scalars and the logit scale/bias."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or name.startswith("logit_") else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_lambda(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _make_vocab(cache):
    from tinysiglip.students import TokenVocab

    meta = cache.meta
    pad_id = meta.get("pad_token_id")
    if pad_id is None:
        raise ConfigError(f"{cache.path}: the cache records no pad_token_id; rebuild it with this version")
    return TokenVocab(
        cache.token_ids_present,
        pad_id=int(pad_id),
        special_ids=list(meta.get("special_token_ids") or []),
        teacher_vocab_size=meta.get("teacher_vocab_size"),
    )


def _normaliser(cache, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 cache pixels → the teacher's normalised float input, on ``device``."""
    from tinysiglip.cache import pixels_to_float

    def normalise(pixels: torch.Tensor) -> torch.Tensor:
        return pixels_to_float(pixels.to(device, non_blocking=True), cache.image_mean, cache.image_std)

    return normalise


@torch.no_grad()
def encode_cache(
    model: torch.nn.Module,
    cache_path: str | Path,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    autocast: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Student embeddings of every image and caption of a cache (for retrieval evaluation)."""
    from tinysiglip.cache import CachedCaptions, CachedImages, open_cache

    device = torch.device(device)
    cache = open_cache(cache_path)
    normalise = _normaliser(cache, device)
    was_training = model.training
    model.eval()
    image_parts, text_parts = [], []
    loader_images = torch.utils.data.DataLoader(CachedImages(cache_path), batch_size=batch_size)
    loader_texts = torch.utils.data.DataLoader(CachedCaptions(cache_path), batch_size=batch_size * 4)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        for batch in loader_images:
            image_parts.append(model.encode_image(normalise(batch["pixels"])).float().cpu())
        for batch in loader_texts:
            text_parts.append(model.encode_text(batch["input_ids"].to(device)).float().cpu())
    model.train(was_training)
    return torch.cat(image_parts), torch.cat(text_parts), cache.caption_image_index()


def evaluate_student(model: torch.nn.Module, cache_path: str | Path, **kwargs: Any) -> dict[str, float]:
    """Recall@1/5/10 both ways on a cache, plus ``mean_r1`` (the default objective)."""
    images, texts, owner = encode_cache(model, cache_path, **kwargs)
    metrics = retrieval_metrics(images, texts, owner)
    metrics["mean_r1"] = (metrics["i2t_r1"] + metrics["t2i_r1"]) / 2
    return metrics


# ---------------------------------------------------------------------------------------------
# checkpoints


def _checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoint"


def _save_checkpoint(run_dir: Path, model, optimizer, scheduler, state: dict[str, Any], config: dict) -> None:
    """Write into a fresh folder, then swap it in, so a kill mid-save leaves the previous checkpoint."""
    final = _checkpoint_dir(run_dir)
    staging = run_dir / "checkpoint.tmp"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    model.save_pretrained(staging)  # weights, vocab and student_config.json: `eval --student` loads it
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
        },
        staging / "optimizer.pt",
    )
    (staging / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=True))
    (staging / "trainer_state.json").write_text(json.dumps(state, indent=2))
    old = run_dir / "checkpoint.old"
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(staging, final)
    if old.exists():
        shutil.rmtree(old)


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """The parts of a config that must match for a checkpoint to be resumed."""
    keep = copy.deepcopy(config)
    keep["data"].pop("num_workers", None)
    keep["train"].pop("device", None)
    keep["train"].pop("threads", None)
    keep["train"].pop("gpu_memory_fraction", None)
    return keep


def _load_checkpoint(run_dir: Path, config: dict, model, optimizer, scheduler) -> dict[str, Any] | None:
    from safetensors.torch import load_file

    folder = _checkpoint_dir(run_dir)
    if not (folder / "trainer_state.json").exists():
        old = run_dir / "checkpoint.old"  # killed between the two renames of a save
        if (old / "trainer_state.json").exists():
            os.replace(old, folder)
        else:
            return None
    saved_config = yaml.safe_load((folder / "config.yaml").read_text())
    if _comparable(saved_config) != _comparable(config):
        raise ConfigError(
            f"{folder} holds a checkpoint of a different config; use another run directory or delete it to start over"
        )
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    extra = torch.load(folder / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    torch.set_rng_state(extra["torch_rng"])
    return json.loads((folder / "trainer_state.json").read_text())


# ---------------------------------------------------------------------------------------------
# the run


def run_training(
    config: Mapping[str, Any],
    *,
    run_dir: str | Path,
    report: Report | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train one student as ``config`` says; resumable from ``run_dir/checkpoint``.

    ``report(event)`` is called after every evaluation; returning True stops the run (pruning).
    """
    from tinysiglip.cache import TrainPairs, check_leakage, open_cache
    from tinysiglip.students import create_student

    started = time.time()
    config = resolve_config(config)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=True))
    data, train_cfg, optim_cfg = config["data"], config["train"], config["optim"]
    for key in ("train_cache", "val_cache"):
        if not data[key]:
            raise ConfigError(f"config: data.{key} is required (a cache built by `tinysiglip cache build`)")

    device = _pick_device(train_cfg["device"])
    if train_cfg["threads"]:
        torch.set_num_threads(int(train_cfg["threads"]))
    if device.type == "cuda" and train_cfg["gpu_memory_fraction"]:
        torch.cuda.set_per_process_memory_fraction(float(train_cfg["gpu_memory_fraction"]), device)
    use_bf16 = train_cfg["precision"] == "bf16" or (
        train_cfg["precision"] == "auto" and device.type == "cuda"
    )
    seed = int(train_cfg["seed"])
    _seed_everything(seed)

    expect = dict(data.get("expect") or {})
    train_cache = open_cache(data["train_cache"], expect=expect or None)
    same_teacher = {
        key: train_cache.meta.get(key)
        for key in ("teacher_fingerprint", "teacher_view", "teacher_fingerprints", "embed_dim", "image_size")
    }
    for key in ("val_cache", "test_cache"):
        if data.get(key):  # evaluation caches must come from the same teacher as the training cache
            open_cache(data[key], expect=same_teacher)
    leakage = check_leakage(
        train_cache, {"val": data["val_cache"], "test": data["test_cache"]}, allow=data["allow_leakage"]
    )
    vocab = _make_vocab(train_cache)
    model = create_student(
        config["student"]["name"],
        embed_dim=train_cache.embed_dim,
        image_size=train_cache.image_size,
        vocab=vocab,
        pretrained=bool(config["student"]["pretrained"]),
        scale=config["student"]["scale"],
        **dict(config["student"]["overrides"] or {}),
    ).to(device)
    model.config["training_cache"] = train_cache.training_record()  # eval refuses caches of other teachers
    with torch.no_grad():
        model.logit_scale.fill_(math.log(float(config["loss"]["init_logit_scale"])))
        model.logit_bias.fill_(float(config["loss"]["init_logit_bias"]))
    param_counts = model.parameter_counts()
    loss_cfg = config["loss"]
    criterion = DistillationLoss(
        LossWeights(
            feat=float(loss_cfg["feat"]),
            affinity=float(loss_cfg["affinity"]),
            contrast=float(loss_cfg["contrast"]),
        ),
        contrastive=loss_cfg["contrastive"],
    )
    teacher_logit_scale = float(train_cache.logit_scale)
    normalise = _normaliser(train_cache, device)

    pairs = TrainPairs(
        data["train_cache"], seed=seed, embeddings_in_memory=bool(data["embeddings_in_memory"])
    )
    batch_size = int(optim_cfg["batch_size"])
    if len(pairs) < batch_size:
        raise ConfigError(
            f"optim.batch_size={batch_size} is larger than the training cache ({len(pairs)} images in {data['train_cache']})"
        )
    steps_per_epoch = len(pairs) // batch_size
    epochs = int(train_cfg["epochs"])
    total_steps = steps_per_epoch * epochs
    if train_cfg["max_steps"]:
        total_steps = min(total_steps, int(train_cfg["max_steps"]))
    optimizer = torch.optim.AdamW(
        _param_groups(model, float(optim_cfg["weight_decay"])), lr=float(optim_cfg["lr"])
    )
    warmup = int(round(float(optim_cfg["warmup_fraction"]) * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total_steps, warmup))

    state = {"epoch": 0, "step": 0, "val_history": [], "elapsed_s": 0.0}
    resumed = (
        _load_checkpoint(run_dir, config, model, optimizer, scheduler) if train_cfg["checkpoint"] else None
    )
    if resumed:
        state = resumed
    elapsed_before = float(state.get("elapsed_s", 0.0))

    result: dict[str, Any] = {
        "status": "complete",
        "error": None,
        "param_counts": param_counts,
        "device": str(device),
        "config": config,
        "resumed_from_epoch": state["epoch"] if resumed else None,
        "leakage": leakage.as_record(),
    }
    direction = config["objective"]["direction"]
    metric = config["objective"]["metric"]
    eval_every = max(1, int(train_cfg["eval_every_epochs"]))
    stop = False

    def finish(status: str, error: str | None = None) -> dict[str, Any]:
        result.update(
            status=status,
            error=error,
            epochs_done=state["epoch"],
            steps=state["step"],
            val_history=state["val_history"],
            val_metrics=state["val_history"][-1]["metrics"] if state["val_history"] else None,
            wall_time_s=elapsed_before + (time.time() - started),
        )
        (run_dir / "result.json").write_text(json.dumps(result, indent=2, default=str))
        return result

    check_every = 1 if device.type == "cpu" else 50
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    model.train()
    while state["epoch"] < epochs and state["step"] < total_steps and not stop:
        epoch = state["epoch"]
        pairs.set_epoch(epoch)
        order = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        loader = torch.utils.data.DataLoader(
            pairs,
            batch_size=batch_size,
            shuffle=True,
            drop_last=True,
            generator=order,
            num_workers=int(data["num_workers"]),
            pin_memory=device.type == "cuda",
            persistent_workers=False,
        )
        batches = loader
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False)
        for batch in batches:
            if state["step"] >= total_steps:
                break
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                student_image = model.encode_image(normalise(batch["pixels"]))
                student_text = model.encode_text(batch["input_ids"].to(device, non_blocking=True))
                terms = criterion(
                    student_image=student_image.float(),
                    student_text=student_text.float(),
                    teacher_image=batch["teacher_image_embed"].to(device, non_blocking=True),
                    teacher_text=batch["teacher_text_embed"].to(device, non_blocking=True),
                    logit_scale=model.logit_scale.exp(),
                    logit_bias=model.logit_bias,
                    teacher_logit_scale=teacher_logit_scale,
                    image_index=batch["image_index"].to(device),
                    caption_image_index=batch["image_index"].to(device),
                )
            loss = sum(value for key, value in terms.items() if key.endswith("_loss"))
            # A non-finite loss ends the run. On a GPU, reading the flag every step would stall the
            # pipeline on a device sync, so it is read every `check_every` steps and before evaluating.
            nonfinite |= ~torch.isfinite(loss.detach())
            if (state["step"] + 1) % check_every == 0 and bool(nonfinite):
                values = {key: float(value.detach()) for key, value in terms.items()}
                where = "at" if check_every == 1 else "at or before"
                return finish(
                    "diverged", f"non-finite loss {where} step {state['step']} (epoch {epoch + 1}): {values}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if optim_cfg["grad_clip"]:
                torch.nn.utils.clip_grad_norm_(model.parameters(), float(optim_cfg["grad_clip"]))
            optimizer.step()
            scheduler.step()
            with torch.no_grad():  # SigLIP clamps its temperature; so do we
                model.logit_scale.clamp_(max=math.log(100.0))
            state["step"] += 1
        if bool(nonfinite):
            return finish("diverged", f"non-finite loss before step {state['step']} (epoch {epoch + 1})")
        state["epoch"] = epoch + 1

        last_epoch = state["epoch"] >= epochs or state["step"] >= total_steps
        if state["epoch"] % eval_every == 0 or last_epoch:
            metrics = evaluate_student(model, data["val_cache"], device=device, autocast=use_bf16)
            event = {
                "epoch": state["epoch"],
                "step": state["step"],
                "metrics": metrics,
                "objective": metrics[metric],
                "loss": float(loss.detach()),
                "terms": {key: float(value.detach()) for key, value in terms.items()},
                "time_s": elapsed_before + (time.time() - started),
            }
            state["val_history"].append(event)
            state["elapsed_s"] = elapsed_before + (time.time() - started)
            if train_cfg["checkpoint"]:
                _save_checkpoint(run_dir, model, optimizer, scheduler, state, config)
            if report is not None and report(event):
                stop = True

    if stop:
        return finish("stopped")
    if data.get("test_cache"):
        result["test_metrics"] = evaluate_student(model, data["test_cache"], device=device, autocast=use_bf16)
    else:
        result["test_metrics"] = None
    _export_student(model, run_dir, config, train_cache)
    _ = direction  # the objective's direction is for the caller (sweep); kept in the resolved config
    return finish("complete")


def _export_student(model, run_dir: Path, config: dict[str, Any], train_cache) -> None:
    """Save the trained student with its teacher's processor (when the teacher can be found)."""
    processor_source = config["teacher"].get("source") or train_cache.meta.get("teacher_source")
    processor = None
    if processor_source and Path(str(processor_source)).is_dir():
        processor = str(processor_source)
    model.save_pretrained(
        run_dir / "student", processor_dir=processor, extra_config={"training_config": config}
    )
