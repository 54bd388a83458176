"""One driver per study: a lease row in the study database (``tsl_leases``).

A sweep driver takes its study's lease before it touches the study and renews it (heartbeat) while it
runs. A second driver is refused, told who holds it; a lease whose holder is gone (same host: its
process no longer exists; any host: no heartbeat for ``ttl_s`` seconds) is taken over, and the caller
is told whose it was. Taking a lease is a compare-and-swap on the row, so two drivers starting at once
cannot both win, on SQLite or PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
import uuid

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from tinysiglip.results.schema import LeaseRow
from tinysiglip.results.store import StoreError, StudyStore, redact_url

__all__ = ["Lease", "LeaseHeld", "acquire_lease", "release_lease", "renew_lease", "stale_reason"]

DEFAULT_TTL_S = 90.0


class LeaseHeld(StoreError):
    """Another live driver holds the study's lease."""


@dataclasses.dataclass(frozen=True)
class Lease:
    study_name: str
    holder: str
    host: str
    pid: int
    acquired_at: float
    heartbeat_at: float
    ttl_s: float

    def describe(self, now: float | None = None) -> str:
        age = (now or time.time()) - self.heartbeat_at
        return f"pid {self.pid} on {self.host} (last heartbeat {age:.0f}s ago)"


def _lease(row: LeaseRow) -> Lease:
    return Lease(**{f.name: getattr(row, f.name) for f in dataclasses.fields(Lease)})


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def stale_reason(lease: Lease, now: float | None = None, host: str | None = None) -> str | None:
    """Why ``lease`` no longer protects a live driver, or None while it does."""
    now = time.time() if now is None else now
    if lease.host == (host or socket.gethostname()) and not _pid_alive(lease.pid):
        return f"its process {lease.pid} on {lease.host} is gone"
    if now - lease.heartbeat_at > lease.ttl_s:
        return f"no heartbeat for {now - lease.heartbeat_at:.0f}s (limit {lease.ttl_s:.0f}s)"
    return None


def acquire_lease(
    store: StudyStore,
    study_name: str,
    *,
    ttl_s: float = DEFAULT_TTL_S,
    now: float | None = None,
    host: str | None = None,
    pid: int | None = None,
) -> tuple[Lease, tuple[Lease, str] | None]:
    """Take the study's lease: ``(ours, None)``, or ``(ours, (stale lease taken over, why stale))``;
    :class:`LeaseHeld` when a live driver holds it."""
    host = host or socket.gethostname()
    pid = os.getpid() if pid is None else int(pid)
    for _ in range(5):  # a lost race is retried: the winner's row is then read and judged
        t = time.time() if now is None else now
        mine = dict(
            holder=f"{host}:{pid}:{uuid.uuid4().hex[:8]}",
            host=host,
            pid=pid,
            acquired_at=t,
            heartbeat_at=t,
            ttl_s=float(ttl_s),
        )
        try:
            with store.session() as s, s.begin():
                row = s.scalar(select(LeaseRow).where(LeaseRow.study_name == study_name))
                if row is None:
                    s.add(LeaseRow(study_name=study_name, **mine))
                    s.flush()
                    return Lease(study_name=study_name, **mine), None
                held = _lease(row)
                reason = stale_reason(held, t, host)
                if reason is None:
                    raise LeaseHeld(
                        f"study {study_name!r} in {redact_url(store.url)} is being run by another driver: "
                        f"{held.describe(t)}. Wait for it to end or stop it (Ctrl-C); a driver that died is "
                        f"taken over by the next one (at once on the same host, after {held.ttl_s:.0f}s "
                        "without heartbeat elsewhere)."
                    )
                swapped = s.execute(
                    update(LeaseRow)
                    .where(LeaseRow.study_name == study_name, LeaseRow.holder == held.holder)
                    .values(**mine)
                ).rowcount
                if swapped == 1:
                    return Lease(study_name=study_name, **mine), (held, reason)
        except IntegrityError:
            continue
    raise StoreError(f"could not take the lease of study {study_name!r}: other drivers keep racing for it")


def renew_lease(store: StudyStore, lease: Lease, now: float | None = None) -> bool:
    """Heartbeat; False when the lease is no longer ours (taken over as stale)."""
    with store.session() as s, s.begin():
        n = s.execute(
            update(LeaseRow)
            .where(LeaseRow.study_name == lease.study_name, LeaseRow.holder == lease.holder)
            .values(heartbeat_at=time.time() if now is None else now)
        ).rowcount
    return n == 1


def release_lease(store: StudyStore, lease: Lease) -> None:
    with store.session() as s, s.begin():
        s.execute(
            delete(LeaseRow).where(LeaseRow.study_name == lease.study_name, LeaseRow.holder == lease.holder)
        )
