"""Copy a teacher cache to node-local disk once per node (a study's ``caches: {stage: node-local}``).

On a cluster the caches sit on the driver's disk or a slow shared file system; a trial reads them many
times per epoch. Before a node's first trial each cache is copied to ``<root>/<fingerprint>/<name>``:
one copy per node even when several trials start at once (an exclusive ``fcntl`` lock per cache),
atomic (written to ``.partial``, checked, then renamed), verified (the size the source reported, and
for a teacher cache ``open_cache`` with its ``request_fingerprint`` and ``verify=True``, which re-hashes
every dataset), and reused by later trials and studies with the same fingerprint. A staged copy that
no longer opens is replaced, never used.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

from tinysiglip.cache.format import CacheError

__all__ = ["default_stage_root", "stage_cache", "staged_path"]

Fetch = Callable[[], Iterable[bytes]]


def default_stage_root() -> Path:
    """``$TINYSIGLIP_STAGE_DIR``, else ``$XDG_CACHE_HOME/tinysiglip/caches`` (``~/.cache/...``)."""
    if os.environ.get("TINYSIGLIP_STAGE_DIR"):
        return Path(os.environ["TINYSIGLIP_STAGE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "tinysiglip" / "caches"


def staged_path(source: str | Path, fingerprint: str | None, root: str | Path | None = None) -> Path:
    """Where the staged copy of ``source`` lives: keyed by the cache's fingerprint (so another study
    with the same cache reuses it), else by a hash of the source path (files that are not caches)."""
    key = fingerprint or "path-" + hashlib.sha256(str(source).encode()).hexdigest()[:20]
    base = Path(root).expanduser() if root else default_stage_root()
    return base / key / Path(str(source)).name


@contextmanager
def _exclusive(lock_path: Path):
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the handle closes, also if this process dies
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _problem(path: Path, fingerprint: str | None, size: int | None, *, full: bool) -> str | None:
    """Why ``path`` is not a good copy (None when it is)."""
    have = path.stat().st_size
    if size is not None and have != size:
        return f"{have} bytes, the source has {size}"
    if fingerprint is None:
        return None
    from tinysiglip.cache.reader import open_cache

    try:
        open_cache(path, expect={"request_fingerprint": fingerprint}, verify=full)
    except Exception as exc:  # noqa: BLE001 - any failure to open means: not a usable copy
        return str(exc)
    return None


def _local_chunks(source: Path, chunk: int = 16 << 20) -> Iterable[bytes]:
    with open(source, "rb") as f:
        while block := f.read(chunk):
            yield block


def stage_cache(
    source: str | Path,
    *,
    fingerprint: str | None,
    root: str | Path | None = None,
    size: int | None = None,
    fetch: Fetch | None = None,
    echo: Callable[[str], None] = lambda _msg: None,
) -> Path:
    """The node-local copy of ``source`` (made now under a lock, or reused), checked as the module doc
    says. ``fetch`` yields the source's bytes when this node cannot open ``source`` itself (the driver
    serves them through Ray); ``size`` is the source's size in bytes, when known."""
    target = staged_path(source, fingerprint, root)
    with _exclusive(target.with_name(target.name + ".lock")):
        if target.exists():
            why = _problem(target, fingerprint, size, full=False)
            if why is None:
                return target
            echo(f"[stage] replacing the damaged staged copy {target}: {why}")
            target.unlink()
        partial = target.with_name(target.name + ".partial")
        if os.access(source, os.R_OK):
            chunks = _local_chunks(Path(source))
            if size is None:
                size = Path(source).stat().st_size
        elif fetch is not None:
            chunks = fetch()
        else:
            raise CacheError(f"cannot stage {source}: this node cannot read it and no other source was given")
        echo(f"[stage] copying {source} to {target}")
        with open(partial, "wb") as out:
            for block in chunks:
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        why = _problem(partial, fingerprint, size, full=True)
        if why is not None:
            partial.unlink(missing_ok=True)
            raise CacheError(
                f"the copy of {source} staged at {target} is not the cache it should be ({why}); nothing was "
                "kept. Check the source with `tinysiglip cache verify` and the node's disk, then retry."
            )
        os.replace(partial, target)
        return target
