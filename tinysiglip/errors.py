"""Errors that the tool reports to its users."""

from __future__ import annotations

import contextlib
from pathlib import Path


class TinySigLIPError(Exception):
    """Base class of every error the tool raises on purpose."""


def check_writable_folder(folder: str | Path, flag: str) -> None:
    """Refuse, before any work, a folder that cannot be created or written (a clean error naming
    ``flag``). Folders made only for the test are removed again: a refused command leaves nothing."""
    folder = Path(folder).expanduser()
    made = []
    parent = folder
    while not parent.exists() and parent != parent.parent:
        made.append(parent)
        parent = parent.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".tsl-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise TinySigLIPError(
            f"{flag} {folder}: cannot create or write this folder ({error.strerror or error}); "
            "give a writable folder"
        ) from None
    finally:
        for path in made:  # innermost first
            with contextlib.suppress(OSError):
                path.rmdir()
