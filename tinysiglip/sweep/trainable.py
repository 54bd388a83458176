"""The Ray Tune trainable, and the report protocol between a trial and the driver.

Ray workers import this module (and the training function it names), never the driver: it depends on
nothing else in the sweep package. A trial reports ``{"tsl_event": "eval", "epoch", "step",
"objective", "tsl_payload": json}`` after every evaluation and ``{"tsl_event": "final", "tsl_payload":
json}`` once at the end; :class:`~tinysiglip.sweep.state.SweepState` reads both in the driver.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Callable
from typing import Any

__all__ = [
    "DEFAULT_TRAIN_FN",
    "CacheNotReadable",
    "check_caches_readable",
    "stage_run_caches",
    "describe_device",
    "node_identity",
    "TrialDiverged",
    "finite_or_none",
    "function_path",
    "import_function",
    "tsl_trainable",
]

DEFAULT_TRAIN_FN = "tinysiglip.train:run_training"


class TrialDiverged(RuntimeError):
    """run_training returned status "diverged" (NaN loss). Kept for callers; the trainable no longer
    raises it: a divergence is deterministic, a retry from the checkpoint would diverge again."""


def import_function(path: str) -> Callable:
    """``"package.module:function"`` → the function (how Ray workers find the training function)."""
    module, _, name = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def function_path(fn: str | Callable | None) -> str:
    """The importable ``"module:function"`` name of a training function (the default when None)."""
    if fn is None:
        return DEFAULT_TRAIN_FN
    if isinstance(fn, str):
        return fn
    return f"{fn.__module__}:{fn.__qualname__}"


def finite_or_none(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def node_identity() -> dict[str, str | None]:
    """Where this trial runs: Ray's node id, the host name and IP (recorded per run in the database)."""
    import socket

    node_id = ip = None
    try:
        import ray

        node_id = ray.get_runtime_context().get_node_id()
        ip = ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - outside Ray (tests): host name only
        pass
    return {"node_id": node_id, "node_host": socket.gethostname(), "node_ip": ip}


def describe_device(device: str | None) -> str | None:
    """``"cuda:0"`` → ``"cuda:0 NVIDIA H100 80GB HBM3"`` (the GPU model), ``"cpu"`` as it is."""
    if not device or not str(device).startswith("cuda"):
        return device
    try:
        import torch

        index = int(str(device).partition(":")[2] or 0)
        return f"{device} {torch.cuda.get_device_name(index)}"[:64]
    except Exception:  # noqa: BLE001 - the model name is a nicety
        return device


def check_caches_readable(train_config: dict, node: dict) -> None:
    """Every cache the run needs can be read on this node, else an error naming node, path and fixes.

    On a cluster the driver's cache paths must be visible on every node; without this check a trial
    on a node that cannot see them fails deep inside h5py."""
    data = train_config.get("data") or {}
    missing = []
    for key in CACHE_KEYS:
        path = data.get(key)
        if not path or "://" in str(path):
            continue
        try:
            with open(path, "rb") as f:
                f.read(1)
        except OSError as exc:
            missing.append(f"data.{key} = {path} ({exc.strerror or exc})")
    if missing:
        where = (
            f"{node.get('node_host')} ({node.get('node_ip') or '?'}, Ray node {node.get('node_id') or '?'})"
        )
        raise CacheNotReadable(
            f"node {where} cannot read the cache(s) this run needs: {'; '.join(missing)}. Fix: put the "
            "caches on storage every node mounts at the same path (a shared file system) and point the "
            "study's cache root there, or set `caches: {stage: node-local}` in the study file so each node "
            "copies them to its own disk before its first trial."
        )


class CacheNotReadable(RuntimeError):
    """A trial's node cannot read a cache the driver named (not shared with this node)."""


CACHE_KEYS = ("train_cache", "val_cache", "test_cache")
FETCH_CHUNK = 32 << 20  # bytes per Ray task when a node pulls a cache from the driver's disk


def _read_range(path: str, offset: int, length: int) -> bytes:
    """Runs on the driver's node: one piece of a cache file, for a node that cannot see it."""
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def _pull_from_node(node_id: str, path: str, size: int):
    """A ``fetch`` for :func:`~tinysiglip.cache.staging.stage_cache`: the file's bytes, read on the
    driver's node by Ray tasks pinned there (two pieces in flight)."""

    def chunks():
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        read = ray.remote(num_cpus=0, max_retries=3)(_read_range).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)
        )
        offsets = list(range(0, size, FETCH_CHUNK))
        pending = [read.remote(path, o, FETCH_CHUNK) for o in offsets[:2]]
        for i in range(len(offsets)):
            block = ray.get(pending.pop(0))
            if i + 2 < len(offsets):
                pending.append(read.remote(path, offsets[i + 2], FETCH_CHUNK))
            yield block

    return chunks


def stage_run_caches(train_config: dict, stage: dict, echo=print) -> dict:
    """The run's config with every cache path replaced by its node-local copy (``caches.stage:
    node-local``): copied once per node from the driver's path (directly when this node can read it,
    else through Ray from the driver's node), verified, reused by later trials on this node."""
    from tinysiglip.cache.staging import stage_cache

    data = dict(train_config.get("data") or {})
    for key in CACHE_KEYS:
        path = data.get(key)
        if not path:
            continue
        info = (stage.get("caches") or {}).get(key) or {}
        size = info.get("size")
        fetch = None
        if stage.get("source_node") and size is not None:
            fetch = _pull_from_node(stage["source_node"], str(path), int(size))
        staged = stage_cache(
            path,
            fingerprint=info.get("fingerprint"),
            root=stage.get("root"),
            size=size,
            fetch=fetch,
            echo=echo,
        )
        data[key] = str(staged)
    return {**train_config, "data": data}


def _restore_tune_checkpoint(run_dir: str) -> bool:
    """A retried trial (maybe on another node) starts from the checkpoint it last reported to Tune.

    The copy Tune persisted under the storage path replaces what this node's run folder holds, which
    is either nothing (a new node) or not newer (each checkpoint is reported right after it is saved)."""
    import shutil
    from pathlib import Path

    from ray import tune

    ckpt = tune.get_checkpoint()
    if ckpt is None:
        return False
    target = Path(run_dir) / "checkpoint"
    staging = Path(run_dir) / "checkpoint.restore"
    if staging.exists():
        shutil.rmtree(staging)
    staging.parent.mkdir(parents=True, exist_ok=True)
    ckpt.to_directory(str(staging))
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return True


def _tune_checkpoint(folder):
    """The folder as a Tune checkpoint (persisted to the storage path by ``tune.report``), if it exists."""
    from pathlib import Path

    from ray.tune import Checkpoint

    return Checkpoint.from_directory(str(folder)) if Path(folder).is_dir() else None


def tsl_trainable(config: dict) -> None:
    """The one Ray Tune trainable: run the training function for one trial or final run.

    Every evaluation goes to ``tune.report`` with the run's checkpoint folder (Tune copies it to the
    storage path, so a retry on another node resumes there); the final result is reported once more
    with ``tsl_event="final"`` and the exported student (or last checkpoint). A run that raises is
    retried by Ray up to the study's ``max_failures``; a diverged run (NaN loss) reports its status
    instead and the driver records it failed, not retried (the same steps would diverge again). Each
    report carries the node the trial runs on."""
    import os

    from ray import tune

    spec = config["tsl"]
    train_fn = import_function(spec["train_fn"])
    node = node_identity()
    if spec.get("stage"):
        spec = {**spec, "train_config": stage_run_caches(spec["train_config"], spec["stage"])}
    check_caches_readable(spec["train_config"], node)
    restored = _restore_tune_checkpoint(spec["run_dir"])
    checkpoint_dir = os.path.join(spec["run_dir"], "checkpoint")

    def report(event: dict) -> None:
        metrics = event.get("metrics") or {}
        tune.report(
            {
                "tsl_event": "eval",
                "epoch": int(event.get("epoch", 0)),
                "step": int(event.get("step", 0)),
                "objective": finite_or_none(event.get("objective")),
                "tsl_payload": json.dumps(
                    {
                        "epoch": event.get("epoch"),
                        "step": event.get("step"),
                        "metrics": metrics,
                        "objective": finite_or_none(event.get("objective")),
                        "node": node,
                        "restored_from_tune": bool(restored),
                    },
                    default=str,
                ),
            },
            checkpoint=_tune_checkpoint(checkpoint_dir),
        )
        return None

    result = train_fn(spec["train_config"], run_dir=spec["run_dir"], report=report)
    if result.get("status") not in (None, "complete", "stopped", "diverged"):
        raise RuntimeError(f"training ended with status {result.get('status')!r}: {result.get('error')}")
    payload = {k: v for k, v in result.items() if k not in ("config",)}
    payload["device"] = describe_device(payload.get("device"))
    payload["node"] = node
    student = os.path.join(spec["run_dir"], "student")
    artifact = student if os.path.isdir(student) else checkpoint_dir
    payload["student_path"] = student if os.path.isdir(student) else None
    tune.report(
        {"tsl_event": "final", "tsl_payload": json.dumps(payload, default=str)},
        checkpoint=_tune_checkpoint(artifact),
    )
