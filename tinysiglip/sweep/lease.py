"""The driver's hold on its study (:mod:`tinysiglip.results.leases`): taken before the study is touched,
renewed by a heartbeat thread while the sweep runs, given back at the end (also on errors and signals)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from tinysiglip.results.leases import DEFAULT_TTL_S, Lease, acquire_lease, release_lease, renew_lease
from tinysiglip.results.store import StudyStore

__all__ = ["DriverLease"]


class DriverLease:
    """``with DriverLease(store, name, echo):`` — the study is this driver's until the block ends."""

    def __init__(
        self, store: StudyStore, study_name: str, echo: Callable[[str], None], ttl_s: float = DEFAULT_TTL_S
    ):
        self.store = store
        self.study_name = study_name
        self.echo = echo
        self.ttl_s = float(ttl_s)
        self.lease: Lease | None = None
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> DriverLease:
        self.lease, taken = acquire_lease(self.store, self.study_name, ttl_s=self.ttl_s)
        if taken is not None:
            old, why = taken
            self.echo(
                f"  took over the study's lease from a driver that is gone (pid {old.pid} on {old.host}: {why})"
            )
        self._thread = threading.Thread(target=self._beat, name="tsl-lease-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                if not renew_lease(self.store, self.lease):
                    self.lost = True
                    self.echo(
                        "  warning: another driver took over this study's lease (this driver's heartbeat was "
                        "late); stop this one (Ctrl-C) and let the other finish"
                    )
                    return
            except Exception as exc:  # noqa: BLE001 - a missed heartbeat is retried at the next beat
                self.echo(f"  warning: lease heartbeat failed: {exc}")

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.lease is not None and not self.lost:
            try:
                release_lease(self.store, self.lease)
            except Exception as err:  # noqa: BLE001 - a lease left behind is taken over as stale
                self.echo(f"  warning: could not release the study's lease: {err}")
