"""Which Ray a sweep runs on, and whether the study's trials fit its nodes.

A sweep either attaches to a running Ray cluster (``--address``, else ``RAY_ADDRESS``, else the cluster
that ``ray start`` on this machine recorded in ``/tmp/ray/ray_current_cluster``, as Ray's own
auto-detection finds it) or starts a private single-machine Ray that listens on 127.0.0.1 only. The
pure parts (address resolution, node capacities, feasibility) take their inputs as arguments so tests
can hand them fake ``ray.nodes()`` output; nothing here starts Ray.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tinysiglip.sweep.options import SweepError

__all__ = [
    "LOCAL",
    "ClusterTarget",
    "NodeCapacity",
    "check_fits",
    "check_reachable",
    "cluster_nodes",
    "node_capacities",
    "resolve_target",
    "token_auth_note",
    "trial_request",
]

LOCAL = "local"  # --address local: always a private Ray, even where a cluster runs
_RAY_KEYS = {"CPU": "cpu", "GPU": "gpu"}


@dataclass(frozen=True)
class ClusterTarget:
    """Where the sweep's Ray is: ``address`` None means a private Ray; ``source`` says who chose it."""

    address: str | None
    source: str

    @property
    def attach(self) -> bool:
        return self.address is not None


def _current_cluster_file() -> str | None:
    """The address the last ``ray start --head`` on this machine recorded (Ray's auto-detection)."""
    try:
        from ray._private.utils import read_ray_address

        return read_ray_address()
    except Exception:  # noqa: BLE001 - an unreadable file is the same as none
        return None


def resolve_target(
    address: str | None,
    environ: Mapping[str, str] | None = None,
    *,
    recorded: Callable[[], str | None] = _current_cluster_file,
    reachable: Callable[[str], bool] | None = None,
) -> ClusterTarget:
    """``--address``, then ``RAY_ADDRESS``, then the cluster ``ray start`` recorded on this machine.

    An explicit address (flag or environment) is used as given (``auto`` means Ray's auto-detection,
    ``local`` a private Ray); a recorded address whose cluster is gone (stale file) is ignored, so a
    machine where a cluster once ran still runs studies."""
    environ = os.environ if environ is None else environ
    for value, source in ((address, "--address"), (environ.get("RAY_ADDRESS"), "RAY_ADDRESS")):
        if value:
            value = value.strip()
            return ClusterTarget(None if value == LOCAL else value, source)
    found = recorded()
    if found:
        if (reachable or _reachable)(found):
            return ClusterTarget(found, "the cluster `ray start` recorded on this machine")
        return ClusterTarget(None, f"private (the recorded cluster {found} is not running)")
    return ClusterTarget(None, "private")


def _host_port(address: str) -> tuple[str, int] | None:
    text = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def _reachable(address: str, timeout: float = 3.0) -> bool:
    hp = _host_port(address)
    if hp is None:
        return True  # not host:port (e.g. "auto"): let Ray decide
    try:
        with socket.create_connection(hp, timeout=timeout):
            return True
    except OSError:
        return False


def check_reachable(target: ClusterTarget, *, reachable: Callable[[str], bool] | None = None) -> None:
    """A clean error (exit 2) instead of Ray's long retry loop when the cluster's address is down."""
    if not target.attach or (reachable or _reachable)(target.address):
        return
    raise SweepError(
        f"cannot reach a Ray cluster at {target.address} (from {target.source}): nothing answers there. "
        "Start the cluster (`ray start --head --port PORT`), fix the address (host:port of the head "
        "node's GCS, or ray://host:10001), or run without --address/RAY_ADDRESS (--address local) "
        "for a private Ray on this machine."
    )


def token_auth_note(environ: Mapping[str, str] | None = None) -> str | None:
    """Where the cluster's auth token is, when Ray's token authentication is on (never the token)."""
    environ = os.environ if environ is None else environ
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled

        enabled = is_token_auth_enabled()
    except Exception:  # noqa: BLE001 - an older Ray without token auth
        enabled = environ.get("RAY_AUTH_MODE", "").lower() == "token"
    if not enabled:
        return None
    if environ.get("RAY_AUTH_TOKEN"):
        where = "the RAY_AUTH_TOKEN environment variable"
    else:
        where = environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return (
        f"token authentication is on: the token is in {where} (`ray get-auth-token` prints it); every "
        "node joining the cluster needs it (RAY_AUTH_TOKEN_PATH), and the dashboard and `ray job` ask "
        "for it (paste it at the dashboard's prompt, or send `Authorization: Bearer <token>`)"
    )


# ------------------------------------------------------------------------------------- resources


@dataclass(frozen=True)
class NodeCapacity:
    """What one alive node of the cluster offers (``ray.nodes()`` → ``Resources``)."""

    node_id: str
    host: str
    cpu: float = 0.0
    gpu: float = 0.0
    custom: dict[str, float] = field(default_factory=dict)

    def amount(self, resource: str) -> float:
        if resource == "cpu":
            return self.cpu
        if resource == "gpu":
            return self.gpu
        return float(self.custom.get(resource, 0.0))

    def describe(self) -> str:
        extra = "".join(f", {v:g} {k}" for k, v in sorted(self.custom.items()))
        return f"{self.host} ({self.cpu:g} CPU, {self.gpu:g} GPU{extra})"


def _is_internal(resource: str) -> bool:
    """Ray's own per-node markers (node:IP, accelerator types, memory) are not study resources."""
    return (
        resource.startswith("node:")
        or resource.startswith("accelerator_type:")
        or resource in ("memory", "object_store_memory")
    )


def node_capacities(nodes: Iterable[Mapping]) -> list[NodeCapacity]:
    """The alive nodes of ``ray.nodes()`` output, with their CPU, GPU and custom resources."""
    out = []
    for n in nodes:
        if not n.get("Alive", n.get("alive", True)):
            continue
        res = dict(n.get("Resources") or {})
        custom = {k: float(v) for k, v in res.items() if k not in _RAY_KEYS and not _is_internal(k)}
        out.append(
            NodeCapacity(
                node_id=str(n.get("NodeID", "")),
                host=str(n.get("NodeManagerHostname") or n.get("NodeManagerAddress") or n.get("NodeID")),
                cpu=float(res.get("CPU", 0.0)),
                gpu=float(res.get("GPU", 0.0)),
                custom=custom,
            )
        )
    return out


def cluster_nodes(address: str) -> list[dict]:
    """``ray.nodes()`` of the cluster at ``address`` (connects and disconnects; for --dry-run)."""
    import ray

    if ray.is_initialized():
        return ray.nodes()
    try:
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    except Exception as exc:  # noqa: BLE001 - Ray raises several types for a cluster it cannot join
        raise SweepError(f"cannot attach to the Ray cluster at {address}: {exc}") from exc
    try:
        return ray.nodes()
    finally:
        ray.shutdown()


def trial_request(study) -> dict[str, float]:
    """What one trial asks of a single node: ``{"cpu", "gpu"?, custom...}`` (the local world: no GPU)."""
    res = study.resources
    out = {"cpu": float(res.cpus_per_trial or 1.0)}
    gpus = 0.0 if study.local else float(res.gpus_per_trial or 0.0)
    if gpus:
        out["gpu"] = gpus
    out.update({k: float(v) for k, v in (getattr(res, "custom", None) or {}).items()})
    return out


def check_fits(request: Mapping[str, float], nodes: list[NodeCapacity], *, where: str) -> NodeCapacity:
    """The first node that can run one trial; else a SweepError naming what no node has enough of.

    Ray places a trial on one node, so the check is per node (a cluster's total does not help)."""
    if not nodes:
        raise SweepError(f"{where}: the Ray cluster has no alive node")
    for n in nodes:
        if all(n.amount(k) >= v for k, v in request.items() if v > 0):
            return n
    short = []
    for k, v in request.items():
        if v <= 0:
            continue
        best = max(nodes, key=lambda n, k=k: n.amount(k))
        if best.amount(k) < v:
            short.append(
                f"{v:g} {k.upper() if k in ('cpu', 'gpu') else k} per trial, but the biggest node "
                f"has {best.amount(k):g} ({best.describe()})"
            )
    if not short:  # each resource fits somewhere, never together
        short.append("no single node has all of " + ", ".join(f"{v:g} {k}" for k, v in request.items()))
    listing = "; ".join(n.describe() for n in nodes)
    raise SweepError(
        f"{where}: no node of the Ray cluster can run a trial: {'; '.join(short)}. Nodes: {listing}. "
        "Lower resources.cpus_per_trial / gpus_per_trial / custom in the study, or add a node that has them "
        "(`ray start --address HEAD:PORT --num-cpus N --num-gpus N --resources '{...}'`)."
    )
