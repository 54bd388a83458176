"""Ctrl-C and SIGTERM stop a sweep cleanly: the running trials stop, keep their checkpoints and stay
RUNNING in Optuna (``--resume`` re-attaches them), the final phase is skipped, and the command exits
130 (SIGINT) or 143 (SIGTERM) saying how to finish.

Ray Tune's own SIGINT handler would end ``fit()`` as if the search were over (and the driver would
then run the final runs on the best trial *so far*); it is switched off (``TUNE_DISABLE_SIGINT_HANDLER``)
and :class:`StopSignals` takes both signals instead. Inside a Tune phase a signal only asks
:class:`~.callback.StopOnSignal` to stop every trial; outside one (or a second signal) it interrupts at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["StopSignals", "SweepInterrupted", "exit_code"]

_HANDLED = (signal.SIGINT, signal.SIGTERM)


def exit_code(signum: int) -> int:
    """The shell's convention: 128 + the signal's number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + int(signum)


class SweepInterrupted(KeyboardInterrupt):
    """The sweep stopped on a signal. A ``KeyboardInterrupt`` so that no ``except Exception`` swallows it."""

    def __init__(self, signum: int, message: str = ""):
        self.signum = int(signum)
        self.exit_code = exit_code(signum)
        super().__init__(message or f"stopped by {signal.Signals(signum).name}")


class StopSignals:
    """SIGINT/SIGTERM handlers for the driver: the first signal in a Tune phase requests a graceful stop."""

    def __init__(self, echo: Callable[[str], None] = print):
        self.echo = echo
        self.signum: int | None = None
        self.in_phase = False
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def install(self) -> None:
        """Take SIGINT and SIGTERM (only possible in the main thread; elsewhere nothing changes)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in _HANDLED:
            previous = signal.signal(sig, self._handle)
            self._previous.setdefault(sig, previous)

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]
        self._previous.clear()

    @contextmanager
    def phase(self) -> Iterator[None]:
        """While a Tune phase runs, a first signal only asks the phase to stop."""
        self.in_phase = True
        try:
            yield
        finally:
            self.in_phase = False

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None or not self.in_phase:
            self.signum = self.signum or signum
            raise SweepInterrupted(self.signum)
        self.signum = signum
        self.echo(
            f"{name} received: stopping the running trials (their checkpoints are kept), no final runs; "
            "send it again to stop at once"
        )
