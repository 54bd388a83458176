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
    "TrialDiverged",
    "finite_or_none",
    "function_path",
    "import_function",
    "tsl_trainable",
]

DEFAULT_TRAIN_FN = "tinysiglip.train:run_training"


class TrialDiverged(RuntimeError):
    """run_training returned status "diverged" (NaN loss): a failure Ray retries from the checkpoint."""


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


def tsl_trainable(config: dict) -> None:
    """The one Ray Tune trainable: run the training function for one trial or final run.

    Every evaluation goes to ``tune.report`` (the driver records it and decides on pruning); the final
    result is reported once more with ``tsl_event="final"``. A diverged run raises, so Ray retries it
    (from ``run_dir/checkpoint``) up to the study's ``max_failures``."""
    from ray import tune

    spec = config["tsl"]
    train_fn = import_function(spec["train_fn"])

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
                    },
                    default=str,
                ),
            }
        )
        return None

    result = train_fn(spec["train_config"], run_dir=spec["run_dir"], report=report)
    if result.get("status") == "diverged":
        raise TrialDiverged(result.get("error") or "training diverged (non-finite loss)")
    if result.get("status") not in (None, "complete", "stopped"):
        raise RuntimeError(f"training ended with status {result.get('status')!r}: {result.get('error')}")
    payload = {k: v for k, v in result.items() if k not in ("config",)}
    tune.report({"tsl_event": "final", "tsl_payload": json.dumps(payload, default=str)})
