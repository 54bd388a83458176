"""A teacher's identity by content: what its files hold, not where they lie.

Two folders hold the same teacher when their weights, model config and processor/tokenizer files
hold the same content, so ``cp -r`` of a teacher (or of a whole local world) keeps its identity and a
retrained teacher saved over the old folder does not. The fingerprint is computed from the files,
without loading the model, so a sweep can check the caches it reuses in seconds.

What counts: every ``*.json`` (except ``tinysiglip_*`` markers, which hold timings), weight files
(``*.safetensors``, ``*.bin``, ``*.msgpack``, ``*.h5``) and SentencePiece/BPE files. Config-sized JSON
files (up to 1 MB) are compared by content: key order, whitespace and the keys transformers stamps on
every save (``transformers_version``, ``_name_or_path``, ``_commit_hash``) do not count. Weight files
and big JSON (``tokenizer.json``) count byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".msgpack", ".h5")
TOKENIZER_FILES = ("tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "merges.txt", "vocab.txt")
VOLATILE_JSON_KEYS = frozenset({"transformers_version", "_name_or_path", "_commit_hash"})
FINGERPRINT_PREFIX = "sha256:"
# Config-sized JSON is compared by content; bigger JSON (tokenizer.json: megabytes) byte for byte.
CANONICAL_JSON_MAX_BYTES = 1 << 20

_MEMO: dict[tuple[str, int, int, int], str] = {}
_MEMO_LOCK = threading.Lock()


def _counts(name: str) -> bool:
    if name.startswith(".") or name.startswith("tinysiglip"):
        return False
    return name.endswith(".json") or name.endswith(WEIGHT_SUFFIXES) or name in TOKENIZER_FILES


def _strip_volatile(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_volatile(v) for k, v in value.items() if k not in VOLATILE_JSON_KEYS}
    if isinstance(value, list):
        return [_strip_volatile(v) for v in value]
    return value


def _hash_file(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    with _MEMO_LOCK:
        if key in _MEMO:
            return _MEMO[key]
    if path.name.endswith(".json") and stat.st_size <= CANONICAL_JSON_MAX_BYTES:
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
            canonical = json.dumps(_strip_volatile(content), sort_keys=True, separators=(",", ":"))
            digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
        except (UnicodeDecodeError, json.JSONDecodeError):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
    else:
        hasher = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(8 << 20), b""):
                hasher.update(block)
        digest = hasher.hexdigest()
    with _MEMO_LOCK:
        _MEMO[key] = digest
    return digest


def file_fingerprints(folder: str | Path) -> dict[str, str]:
    """{file name: sha256} of the files that make up the teacher in ``folder`` (see module doc)."""
    folder = Path(folder)
    names = sorted(name for name in os.listdir(folder) if _counts(name) and (folder / name).is_file())
    return {name: _hash_file(folder / name) for name in names}


def combine(files: Mapping[str, str]) -> str:
    """One fingerprint over {name: sha256}."""
    text = "\n".join(f"{name}\t{digest}" for name, digest in sorted(files.items()))
    return FINGERPRINT_PREFIX + hashlib.sha256(text.encode("utf-8")).hexdigest()


def content_fingerprint(folder: str | Path) -> str:
    return combine(file_fingerprints(folder))


def teacher_folder(source: str | Path, revision: str | None = None) -> Path | None:
    """The folder holding a teacher's files: the folder itself, or a Hub id's snapshot in the local
    Hugging Face cache; None when the files are not on this machine."""
    path = Path(str(source)).expanduser()
    if path.is_dir():
        return path.resolve()
    if str(source).startswith((".", "/", "~")):
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(source), revision=revision, local_files_only=True))
    except Exception as error:  # noqa: BLE001 - not cached here (or not a repo id): unknown
        logger.debug("no local files for teacher %s: %s", source, error)
        return None


def describe_difference(expected: Mapping[str, str], found: Mapping[str, str]) -> str:
    """Which files differ between two {name: sha256} maps (for error messages)."""
    changed = sorted(n for n in set(expected) & set(found) if expected[n] != found[n])
    only_expected = sorted(set(expected) - set(found))
    only_found = sorted(set(found) - set(expected))
    parts = []
    if changed:
        parts.append("different " + ", ".join(changed))
    if only_expected:
        parts.append("only in the expected teacher: " + ", ".join(only_expected))
    if only_found:
        parts.append("only in the cache's teacher: " + ", ".join(only_found))
    return "; ".join(parts) or "same files"


def config_facts(folder: str | Path) -> dict[str, Any]:
    """What ``config.json`` says about the embedding, without loading the model: {"embed_dim", "model_type"}."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    vision = config.get("vision_config") or {}
    facts: dict[str, Any] = {"model_type": config.get("model_type")}
    if "hidden_size" in vision:
        facts["embed_dim"] = int(vision["hidden_size"])
    return facts
