"""What one invocation of the sweep may change (the command line's flags), and the sweep's own error."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tinysiglip.errors import TinySigLIPError

__all__ = ["SweepError", "SweepOptions"]


class SweepError(TinySigLIPError):
    """The sweep cannot start or continue (the message says what to do)."""


@dataclass
class SweepOptions:
    resume: bool = False
    retry_failed: bool = False  # with resume: failed trials run again (they no longer count)
    max_concurrent: int | None = None
    dashboard: bool = False
    trials_per_cell: int | None = None  # small-budget overrides (tests, smoke runs)
    epochs: int | None = None
    seeds: list[int] | None = None
    num_cpus: int | None = None
    skip_final: bool = False
    train_fn: str | Callable | None = None  # "module:function" importable by Ray workers
    log_to_driver: bool = False
    address: str | None = None  # Ray cluster to attach to (None: RAY_ADDRESS, a recorded cluster, private)
    artifacts: str | None = None  # Tune storage_path: trial checkpoints and students (default run_dir/ray)
    echo: Callable[[str], None] = field(default=print)
