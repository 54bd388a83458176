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
import random
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from tinysiglip.checkpoint import (
    CheckpointDamaged,
    find_checkpoint,
    read_checkpoint_config,
    restore_checkpoint,
    save_checkpoint,
    set_aside,
)
from tinysiglip.config.training import DEFAULT_CONFIG, ConfigError, load_config_file, resolve_config
from tinysiglip.losses import DistillationLoss, LossWeights
from tinysiglip.student_eval import encode_cache, evaluate_student, evaluate_student_ranks, pixel_normaliser

__all__ = [
    "measure_step_seconds",
    "DEFAULT_CONFIG",
    "ConfigError",
    "encode_cache",
    "evaluate_student",
    "evaluate_student_ranks",
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
    """The device named in the config, with an index on CUDA.

    Some CUDA calls (``set_per_process_memory_fraction`` among them) refuse a bare ``cuda`` device, so
    a bare name becomes the current device (under Ray, the one GPU that Tune made visible).
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(
            f"train.device {name!r} is not a torch device ({error}); use auto, cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return device


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


# ---------------------------------------------------------------------------------------------
# the run's live state


@dataclass
class TrainerState:
    """Where the run is: saved as ``trainer_state.json`` in every checkpoint and resumed from it."""

    epoch: int = 0
    step: int = 0
    val_history: list[dict[str, Any]] = field(default_factory=list)
    elapsed_s: float = 0.0  # wall time of every attempt so far, up to the last checkpoint


@dataclass
class TrainingRun:
    """What set-up builds and the loop updates: the objects one training run works with."""

    config: dict[str, Any]
    run_dir: Path
    device: torch.device
    use_bf16: bool
    train_cache: Any  # tinysiglip.cache.TeacherCache
    model: Any  # tinysiglip.students.TinySigLIP
    criterion: DistillationLoss
    normalise: Callable[[torch.Tensor], torch.Tensor]
    pairs: Any  # tinysiglip.cache.TrainPairs
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    total_steps: int
    started: float  # time.time() when this attempt started
    state: TrainerState = field(default_factory=TrainerState)
    loader: Any = None  # tinysiglip.cache.TrainLoader, built at the first epoch
    elapsed_before: float = 0.0  # wall time of earlier attempts (from the checkpoint resumed)
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return int(self.config["train"]["seed"])

    @property
    def epochs(self) -> int:
        return int(self.config["train"]["epochs"])

    @property
    def batch_size(self) -> int:
        return int(self.config["optim"]["batch_size"])

    @property
    def finished(self) -> bool:
        return self.state.epoch >= self.epochs or self.state.step >= self.total_steps

    def elapsed(self) -> float:
        return self.elapsed_before + (time.time() - self.started)


@dataclass
class EpochOutcome:
    loss: torch.Tensor  # the epoch's last batch: what the evaluation event shows
    terms: dict[str, torch.Tensor]
    error: str | None = None  # set when the loss went non-finite (the run has diverged)


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
    started = time.time()
    config = resolve_config(config)
    _require_caches(config["data"])
    device, use_bf16 = _set_up_device(config["train"])
    _seed_everything(int(config["train"]["seed"]))
    train_cache, leakage = _open_caches(config["data"])
    run_dir = _prepare_run_dir(config, Path(run_dir))  # only once its inputs are known to be good
    model = _build_student(config, train_cache, device)
    pairs = _training_pairs(config)
    total_steps = _total_steps(config, len(pairs))
    run = _assemble_run(config, run_dir, device, use_bf16, train_cache, model, pairs, total_steps, started)
    resumed = config["train"]["checkpoint"] and _load_checkpoint(run)
    run.result = {
        **run.result,  # a damaged checkpoint set aside is said here
        "status": "complete",
        "error": None,
        "param_counts": model.parameter_counts(),
        "device": str(device),
        "config": config,
        "resumed_from_epoch": run.state.epoch if resumed else None,
        "leakage": leakage.as_record(),
    }

    model.train()
    while not run.finished:
        outcome = _train_one_epoch(run, progress=progress)
        if outcome.error is not None:
            return _finish(run, "diverged", outcome.error)
        if _evaluation_due(run):
            event = _evaluate(run, outcome)
            if config["train"]["checkpoint"]:
                _save_checkpoint(run)
            if report is not None and report(event):
                return _finish(run, "stopped")  # pruned: no test evaluation, no export
    _test_and_export(run)
    return _finish(run, "complete")


# ---------------------------------------------------------------------------------------------
# set-up


def _require_caches(data: dict[str, Any]) -> None:
    """The caches a run cannot do without."""
    for key in ("train_cache", "val_cache"):
        if not data[key]:
            raise ConfigError(f"config: data.{key} is required (a cache built by `tinysiglip cache build`)")


def _prepare_run_dir(config: dict[str, Any], run_dir: Path) -> Path:
    """The run folder with the resolved config in it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=True))
    return run_dir


def _set_up_device(train_cfg: dict[str, Any]) -> tuple[torch.device, bool]:
    """The device, its thread / GPU-memory caps, and whether to autocast to bf16."""
    device = _pick_device(train_cfg["device"])
    if train_cfg["threads"]:
        torch.set_num_threads(int(train_cfg["threads"]))
    if device.type == "cuda" and train_cfg["gpu_memory_fraction"]:
        torch.cuda.set_per_process_memory_fraction(float(train_cfg["gpu_memory_fraction"]), device)
    use_bf16 = train_cfg["precision"] == "bf16" or (
        train_cfg["precision"] == "auto" and device.type == "cuda"
    )
    return device, use_bf16


def _open_caches(data: dict[str, Any]):
    """The training cache (checked against ``data.expect``); the evaluation caches must come from the
    same teacher, view and resolution; no training image may be in them unless ``data.allow_leakage``.
    Returns the training cache and the leakage check's outcome (recorded with the result)."""
    from tinysiglip.cache import check_leakage, open_cache

    expect = dict(data.get("expect") or {})
    train_cache = open_cache(data["train_cache"], expect=expect or None)
    same_teacher = {
        key: train_cache.meta.get(key)
        for key in ("teacher_fingerprint", "teacher_view", "teacher_fingerprints", "embed_dim", "image_size")
    }
    for key in ("val_cache", "test_cache"):
        if data.get(key):
            open_cache(data[key], expect=same_teacher)
    leakage = check_leakage(
        train_cache, {"val": data["val_cache"], "test": data["test_cache"]}, allow=data["allow_leakage"]
    )
    return train_cache, leakage


def _build_student(config: dict[str, Any], train_cache, device: torch.device):
    """The student at the teacher's width and resolution, over the token ids the cache holds."""
    from tinysiglip.students import create_student

    student_cfg, loss_cfg = config["student"], config["loss"]
    model = create_student(
        student_cfg["name"],
        embed_dim=train_cache.embed_dim,
        image_size=train_cache.image_size,
        vocab=_make_vocab(train_cache),
        pretrained=bool(student_cfg["pretrained"]),
        scale=student_cfg["scale"],
        **dict(student_cfg["overrides"] or {}),
    ).to(device)
    model.config["training_cache"] = train_cache.training_record()  # eval refuses caches of other teachers
    with torch.no_grad():
        model.logit_scale.fill_(math.log(float(loss_cfg["init_logit_scale"])))
        model.logit_bias.fill_(float(loss_cfg["init_logit_bias"]))
    return model


def _build_criterion(loss_cfg: dict[str, Any]) -> DistillationLoss:
    weights = LossWeights(
        feat=float(loss_cfg["feat"]),
        affinity=float(loss_cfg["affinity"]),
        contrast=float(loss_cfg["contrast"]),
    )
    return DistillationLoss(weights, contrastive=loss_cfg["contrastive"])


def _training_pairs(config: dict[str, Any]):
    """One caption per image of the training cache (redrawn each epoch by ``set_epoch``)."""
    from tinysiglip.cache import TrainPairs

    data = config["data"]
    pairs = TrainPairs(
        data["train_cache"],
        seed=int(config["train"]["seed"]),
        embeddings_in_memory=bool(data["embeddings_in_memory"]),
    )
    batch_size = int(config["optim"]["batch_size"])
    if len(pairs) < batch_size:
        raise ConfigError(
            f"optim.batch_size={batch_size} is larger than the training cache ({len(pairs)} images in {data['train_cache']})"
        )
    return pairs


def _total_steps(config: dict[str, Any], num_pairs: int) -> int:
    """Optimiser steps of the whole run: full batches per epoch × epochs, capped by ``train.max_steps``."""
    total = (num_pairs // int(config["optim"]["batch_size"])) * int(config["train"]["epochs"])
    if config["train"]["max_steps"]:
        total = min(total, int(config["train"]["max_steps"]))
    return total


def _assemble_run(
    config, run_dir: Path, device, use_bf16: bool, train_cache, model, pairs, total_steps: int, started: float
) -> TrainingRun:
    """The run's objects around a built student: optimiser and schedule, losses, pixel normaliser."""
    optimizer, scheduler = _build_optimiser(model, config["optim"], total_steps)
    return TrainingRun(
        config=config,
        run_dir=run_dir,
        device=device,
        use_bf16=use_bf16,
        train_cache=train_cache,
        model=model,
        criterion=_build_criterion(config["loss"]),
        normalise=pixel_normaliser(train_cache, device),
        pairs=pairs,
        optimizer=optimizer,
        scheduler=scheduler,
        total_steps=total_steps,
        started=started,
    )


def _build_optimiser(model, optim_cfg: dict[str, Any], total_steps: int):
    """AdamW (no decay on biases, norms, logit scale/bias) with linear warm-up then cosine decay."""
    optimizer = torch.optim.AdamW(
        _param_groups(model, float(optim_cfg["weight_decay"])), lr=float(optim_cfg["lr"])
    )
    warmup = int(round(float(optim_cfg["warmup_fraction"]) * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total_steps, warmup))
    return optimizer, scheduler


# ---------------------------------------------------------------------------------------------
# one epoch


def _epoch_loader(run: TrainingRun, epoch: int) -> Iterable[dict[str, torch.Tensor]]:
    """The epoch's batches: each image with the caption drawn for this epoch, shuffled by (seed, epoch).

    One ``TrainLoader`` serves the whole run, so worker processes persist across epochs.
    """
    if run.loader is None:
        from tinysiglip.cache import TrainLoader

        run.loader = TrainLoader(
            run.pairs,
            run.batch_size,
            seed=run.seed,
            num_workers=int(run.config["data"]["num_workers"]),
            pin_memory=run.device.type == "cuda",
        )
    from tinysiglip.cache import batches_on_device

    return batches_on_device(run.loader.epoch(epoch), run.device)


def _train_one_epoch(run: TrainingRun, *, progress: bool = False) -> EpochOutcome:
    """Optimiser steps over one epoch (or up to ``total_steps``); stops early on a non-finite loss."""
    epoch, state = run.state.epoch, run.state
    batches = _epoch_loader(run, epoch)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=len(run.loader), desc=f"epoch {epoch + 1}/{run.epochs}", leave=False)
    # A non-finite loss ends the run. On a GPU, reading the flag every step would stall the
    # pipeline on a device sync, so it is read every `check_every` steps and at the end of the epoch.
    check_every = 1 if run.device.type == "cpu" else 50
    nonfinite = torch.zeros((), dtype=torch.bool, device=run.device)
    for batch in batches:
        if state.step >= run.total_steps:
            break
        terms = _loss_terms(run, batch)
        loss = sum(value for key, value in terms.items() if key.endswith("_loss"))
        nonfinite |= ~torch.isfinite(loss.detach())
        if (state.step + 1) % check_every == 0 and bool(nonfinite):
            values = {key: float(value.detach()) for key, value in terms.items()}
            where = "at" if check_every == 1 else "at or before"
            error = f"non-finite loss {where} step {state.step} (epoch {epoch + 1}): {values}"
            return EpochOutcome(loss, terms, error=error)
        _optimiser_step(run, loss)
        state.step += 1
    if bool(nonfinite):
        return EpochOutcome(
            loss, terms, error=f"non-finite loss before step {state.step} (epoch {epoch + 1})"
        )
    state.epoch = epoch + 1
    return EpochOutcome(loss, terms)


def _loss_terms(run: TrainingRun, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Student forward on one batch and the distillation terms against the cached teacher embeddings."""
    model, device = run.model, run.device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.use_bf16):
        student_image = model.encode_image(run.normalise(batch["pixels"]))
        student_text = model.encode_text(batch["input_ids"].to(device, non_blocking=True))
        return run.criterion(
            student_image=student_image.float(),
            student_text=student_text.float(),
            teacher_image=batch["teacher_image_embed"].to(device, non_blocking=True),
            teacher_text=batch["teacher_text_embed"].to(device, non_blocking=True),
            logit_scale=model.logit_scale.exp(),
            logit_bias=model.logit_bias,
            teacher_logit_scale=float(run.train_cache.logit_scale),
            image_index=batch["image_index"].to(device, non_blocking=True),
            caption_image_index=batch["image_index"].to(device, non_blocking=True),
        )


def _optimiser_step(run: TrainingRun, loss: torch.Tensor) -> None:
    grad_clip = run.config["optim"]["grad_clip"]
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), float(grad_clip))
    run.optimizer.step()
    run.scheduler.step()
    with torch.no_grad():  # SigLIP clamps its temperature; so do we
        run.model.logit_scale.clamp_(max=math.log(100.0))


# ---------------------------------------------------------------------------------------------
# evaluation


def _evaluation_due(run: TrainingRun) -> bool:
    """Every ``eval_every_epochs`` epochs, and always after the last one."""
    every = max(1, int(run.config["train"]["eval_every_epochs"]))
    return run.state.epoch % every == 0 or run.finished


def _evaluate(run: TrainingRun, outcome: EpochOutcome) -> dict[str, Any]:
    """Recall@K on the validation cache → the event that goes to ``report`` and the history."""
    metrics = evaluate_student(
        run.model, run.config["data"]["val_cache"], device=run.device, autocast=run.use_bf16
    )
    event = {
        "epoch": run.state.epoch,
        "step": run.state.step,
        "metrics": metrics,
        "objective": metrics[run.config["objective"]["metric"]],
        "loss": float(outcome.loss.detach()),
        "terms": {key: float(value.detach()) for key, value in outcome.terms.items()},
        "time_s": run.elapsed(),
    }
    run.state.val_history.append(event)
    run.state.elapsed_s = run.elapsed()
    return event


# ---------------------------------------------------------------------------------------------
# checkpoints


def _save_checkpoint(run: TrainingRun) -> None:
    save_checkpoint(
        run.run_dir,
        model=run.model,
        optimizer=run.optimizer,
        scheduler=run.scheduler,
        trainer_state=asdict(run.state),
        config=run.config,
    )


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """The parts of a config that must match for a checkpoint to be resumed."""
    keep = copy.deepcopy(config)
    keep["data"].pop("num_workers", None)
    keep["train"].pop("device", None)
    keep["train"].pop("threads", None)
    keep["train"].pop("gpu_memory_fraction", None)
    return keep


def _load_checkpoint(run: TrainingRun) -> bool:
    """Resume from ``run_dir/checkpoint`` when there is one (weights, optimiser, schedule, RNG and
    ``run.state``); False when there is none. A checkpoint of another config is an error; a damaged
    one is set aside (renamed, kept), said on stderr and in the result, and the run starts over."""
    folder = find_checkpoint(run.run_dir)
    if folder is None:
        return False
    try:
        if _comparable(read_checkpoint_config(folder)) != _comparable(run.config):
            raise ConfigError(
                f"{folder} holds a checkpoint of a different config; use another run directory or delete it "
                "to start over"
            )
        saved = restore_checkpoint(folder, model=run.model, optimizer=run.optimizer, scheduler=run.scheduler)
    except CheckpointDamaged as exc:
        moved = set_aside(folder)
        run.result["checkpoint_set_aside"] = {"path": str(moved), "error": str(exc)[:500]}
        print(
            f"warning: damaged checkpoint ({exc}); set aside as {moved}, training starts over",
            file=sys.stderr,
        )
        return False
    run.state = TrainerState(**saved)
    run.elapsed_before = float(run.state.elapsed_s)
    return True


# ---------------------------------------------------------------------------------------------
# the end of a run


def _test_and_export(run: TrainingRun) -> None:
    """A complete run: Recall@K on the test cache (final runs have one) and the exported student."""
    test_cache = run.config["data"].get("test_cache")
    run.result["test_metrics"] = run.result["test_ranks"] = None
    if test_cache:
        run.result["test_metrics"], run.result["test_ranks"] = evaluate_student_ranks(
            run.model, test_cache, device=run.device, autocast=run.use_bf16
        )
    _export_student(run.model, run.run_dir, run.config, run.train_cache)


def _finish(run: TrainingRun, status: str, error: str | None = None) -> dict[str, Any]:
    """The result (also written to ``run_dir/result.json``)."""
    history = run.state.val_history
    run.result.update(
        status=status,
        error=error,
        epochs_done=run.state.epoch,
        steps=run.state.step,
        val_history=history,
        val_metrics=history[-1]["metrics"] if history else None,
        wall_time_s=run.elapsed(),
    )
    saved = {k: v for k, v in run.result.items() if k != "test_ranks"}
    (run.run_dir / "result.json").write_text(json.dumps(saved, indent=2, default=str))
    ranks = run.result.get("test_ranks")
    if ranks:  # beside it, compact: the per-query ranks of the test split
        np.savez(run.run_dir / "test_ranks.npz", **{k: np.asarray(v, np.int32) for k, v in ranks.items()})
    return run.result


def _export_student(model, run_dir: Path, config: dict[str, Any], train_cache) -> None:
    """Save the trained student with its teacher's processor (when the teacher can be found)."""
    processor_source = config["teacher"].get("source") or train_cache.meta.get("teacher_source")
    processor = None
    if processor_source and Path(str(processor_source)).is_dir():
        processor = str(processor_source)
    model.save_pretrained(
        run_dir / "student", processor_dir=processor, extra_config={"training_config": config}
    )


# ---------------------------------------------------------------------------------------------
# step timing (the cost forecast)


def measure_step_seconds(config: Mapping[str, Any], *, steps: int = 5, warmup: int = 2) -> tuple[float, str]:
    """(seconds per optimiser step, device) of ``config`` on its device: the real student, loss, optimiser and
    step on random batches of the training cache's shapes (no data loading, no evaluation). The cost
    forecast (``tinysiglip.sweep.forecast``) multiplies it by the steps a study will run."""
    from tinysiglip.cache import open_cache

    config = resolve_config(config)
    threads = torch.get_num_threads()
    try:
        device, use_bf16 = _set_up_device(config["train"])
        train_cache = open_cache(config["data"]["train_cache"])
        model = _build_student(config, train_cache, device)
        run = _assemble_run(
            config, Path("."), device, use_bf16, train_cache, model, None, warmup + steps, time.time()
        )
        batch = _random_batch(
            train_cache, int(config["optim"]["batch_size"]), seed=int(config["train"]["seed"])
        )
        model.train()
        for i in range(warmup + steps):
            if i == warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                started = time.perf_counter()
            terms = _loss_terms(run, batch)
            _optimiser_step(run, sum(value for key, value in terms.items() if key.endswith("_loss")))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - started) / steps, str(device)
    finally:
        torch.set_num_threads(threads)


def _random_batch(cache, batch_size: int, *, seed: int) -> dict[str, torch.Tensor]:
    """A batch shaped like the training cache's (pixels, token ids it holds, unit teacher embeddings)."""
    generator = torch.Generator().manual_seed(seed)
    token_ids = torch.as_tensor(np.asarray(cache.token_ids_present, dtype=np.int64))
    picks = torch.randint(len(token_ids), (batch_size, int(cache.meta["max_length"])), generator=generator)
    embeds = torch.nn.functional.normalize(
        torch.randn(2, batch_size, cache.embed_dim, generator=generator), dim=-1
    )
    return {
        "pixels": torch.randint(
            0,
            256,
            (batch_size, 3, cache.image_size, cache.image_size),
            dtype=torch.uint8,
            generator=generator,
        ),
        "input_ids": token_ids[picks],
        "teacher_image_embed": embeds[0],
        "teacher_text_embed": embeds[1],
        "image_index": torch.arange(batch_size),
    }
