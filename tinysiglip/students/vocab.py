"""Compact token vocabulary: teacher token ids -> rows of a small embedding table.

The teacher's tokenizer (e.g. Gemma's 256,000 ids for SigLIP 2) is kept as is: the student reads the
very same token ids the teacher read. A full 256k x 384 embedding table would cost ~98M parameters,
most of them for ids that never occur in the training captions. :class:`TokenVocab` keeps one row per
id that occurs in the training cache (``TeacherCache.token_ids_present``) plus the teacher's special
ids (pad, eos, bos, unk), and sends every other id -- including ids outside ``[0, teacher_vocab_size)``
-- to one shared UNKNOWN row (row 0).

The lookup is a ``torch.searchsorted`` over a sorted, registered (persistent, non-trainable) int64
buffer, so it follows the module to any device and is saved in the student's state dict; the same
table is also written as ``vocab.json`` by ``TinySigLIP.save_pretrained``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

VOCAB_FORMAT_VERSION = 1


def _as_id_array(ids: Any, what: str) -> np.ndarray:
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids)
    if arr.size == 0:
        return np.zeros((0,), dtype=np.int64)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D sequence of token ids, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.mod(arr, 1) == 0):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"{what} must contain integer token ids, got dtype {arr.dtype}")
    return arr.astype(np.int64)


class TokenVocab(nn.Module):
    """Map teacher token ids to compact embedding rows.

    Args:
        token_ids: ids present in the training data (any order, duplicates allowed), e.g.
            ``cache.token_ids_present``.
        pad_id: the teacher tokenizer's pad id (also used by the text tower for its attention mask).
        special_ids: the teacher's special ids (pad/eos/bos/unk...), as a list or a ``{name: id}``
            mapping; they always get their own row.
        teacher_vocab_size: size of the teacher's vocabulary, if known; present ids must lie in
            ``[0, teacher_vocab_size)``.

    Row 0 is UNKNOWN; kept id ``ids[i]`` (sorted ascending) gets row ``i + 1``.
    """

    UNKNOWN_ROW = 0

    def __init__(
        self,
        token_ids: Iterable[int] | np.ndarray | torch.Tensor,
        *,
        pad_id: int,
        special_ids: Mapping[str, int] | Iterable[int] = (),
        teacher_vocab_size: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(special_ids, Mapping):
            named = {str(k): int(v) for k, v in special_ids.items() if v is not None}
        else:
            named = {}
            special_list = [int(v) for v in special_ids if v is not None]
            for v in special_list:
                named[f"special_{v}"] = v
        pad_id = int(pad_id)
        named.setdefault("pad", pad_id)
        present = _as_id_array(token_ids, "token_ids")
        specials = np.asarray(sorted(set(named.values())), dtype=np.int64)
        all_ids = np.unique(np.concatenate([present, specials]))
        if all_ids.size and all_ids[0] < 0:
            raise ValueError(f"token ids must be >= 0, got {int(all_ids[0])}")
        if teacher_vocab_size is not None:
            teacher_vocab_size = int(teacher_vocab_size)
            if all_ids.size and all_ids[-1] >= teacher_vocab_size:
                raise ValueError(
                    f"token id {int(all_ids[-1])} is outside the teacher vocabulary [0, {teacher_vocab_size})"
                )
        self.pad_id = pad_id
        self.special_ids: dict[str, int] = named
        self.teacher_vocab_size = teacher_vocab_size
        self.register_buffer("token_ids", torch.from_numpy(all_ids.copy()), persistent=True)

    # ------------------------------------------------------------------ lookup
    @property
    def num_rows(self) -> int:
        """Rows of the embedding table: kept ids + 1 UNKNOWN row."""
        return int(self.token_ids.numel()) + 1

    @property
    def num_kept(self) -> int:
        return int(self.token_ids.numel())

    def __len__(self) -> int:
        return self.num_rows

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Teacher ids (any shape, any integer dtype) -> row indices (same shape, int64)."""
        ids = input_ids.to(device=self.token_ids.device, dtype=torch.long)
        table = self.token_ids
        if table.numel() == 0:
            return torch.zeros_like(ids)
        pos = torch.searchsorted(table, ids.contiguous())
        pos_clamped = pos.clamp(max=table.numel() - 1)
        found = table[pos_clamped] == ids
        return torch.where(found, pos_clamped + 1, torch.zeros_like(pos_clamped))

    lookup = forward

    def row_of(self, token_id: int) -> int:
        return int(self.forward(torch.tensor([int(token_id)]))[0])

    # --------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": VOCAB_FORMAT_VERSION,
            "pad_id": self.pad_id,
            "special_ids": dict(self.special_ids),
            "teacher_vocab_size": self.teacher_vocab_size,
            "unknown_row": self.UNKNOWN_ROW,
            "token_ids": [int(x) for x in self.token_ids.cpu().tolist()],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TokenVocab:
        version = data.get("format_version", VOCAB_FORMAT_VERSION)
        if version != VOCAB_FORMAT_VERSION:
            raise ValueError(f"unsupported vocab format_version {version} (expected {VOCAB_FORMAT_VERSION})")
        missing = [k for k in ("pad_id", "token_ids") if k not in data]
        if missing:
            raise ValueError(f"vocab data lacks {missing}")
        return cls(
            data["token_ids"],
            pad_id=int(data["pad_id"]),
            special_ids=data.get("special_ids") or {},
            teacher_vocab_size=data.get("teacher_vocab_size"),
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict()))
        return path

    @classmethod
    def load(cls, path: str | Path) -> TokenVocab:
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def from_cache(
        cls,
        cache: Any,
        *,
        pad_id: int,
        special_ids: Mapping[str, int] | Iterable[int] = (),
        teacher_vocab_size: int | None = None,
    ) -> TokenVocab:
        """Build from a ``TeacherCache`` (uses its ``token_ids_present``)."""
        return cls(
            cache.token_ids_present,
            pad_id=pad_id,
            special_ids=special_ids,
            teacher_vocab_size=teacher_vocab_size,
        )

    def extra_repr(self) -> str:
        return (
            f"kept_ids={self.num_kept}, rows={self.num_rows}, pad_id={self.pad_id}, "
            f"teacher_vocab_size={self.teacher_vocab_size}"
        )
