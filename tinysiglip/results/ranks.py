"""Per-query retrieval ranks in the study database (table ``tsl_query_ranks``).

A final run stores, for the test split, the rank of each image's first correct caption and of each
caption's image (``tinysiglip.evaluate.retrieval_ranks``), with each caption's image. Recall@K of any
subset of images follows from them, so the paired bootstrap (:mod:`.bootstrap`) recomputes every
difference from the database, without the models. The teacher reference stores the same for its
cached embeddings.

Arrays are stored as ``.npy`` bytes of int32 (read back with ``allow_pickle=False``): about 24 KB per
run at COCO 5k. No numpy/SQL types beyond bytes, so SQLite and PostgreSQL hold them alike.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping
from typing import Any

import numpy as np
from sqlalchemy import delete, inspect, select

from tinysiglip.results.schema import QueryRanksRow, RunRow, TeacherMetricsRow

__all__ = ["QueryRanks", "StudyRanks", "load_ranks", "save_run_ranks", "save_teacher_ranks"]


@dataclasses.dataclass(frozen=True)
class QueryRanks:
    """Ranks (0 = first) of one model's test queries; ``caption_image[j]`` is caption j's image."""

    image_ranks: np.ndarray
    text_ranks: np.ndarray
    caption_image: np.ndarray

    def __post_init__(self) -> None:
        for name in ("image_ranks", "text_ranks", "caption_image"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.int64).reshape(-1))
        if self.text_ranks.shape != self.caption_image.shape:
            raise ValueError(
                f"text_ranks has {self.text_ranks.size} entries but caption_image {self.caption_image.size}"
            )
        n = self.image_ranks.size
        if self.caption_image.size and (self.caption_image.min() < 0 or self.caption_image.max() >= n):
            raise ValueError(f"caption_image points outside the {n} images")
        if (self.image_ranks < 0).any() or (self.text_ranks < 0).any():
            raise ValueError("ranks must be >= 0")

    @property
    def num_images(self) -> int:
        return int(self.image_ranks.size)

    @property
    def num_texts(self) -> int:
        return int(self.text_ranks.size)

    def as_payload(self) -> dict[str, list[int]]:
        """Plain lists (for a JSON result passed from a Ray worker to the driver)."""
        return {
            "image_ranks": self.image_ranks.tolist(),
            "text_ranks": self.text_ranks.tolist(),
            "caption_image": self.caption_image.tolist(),
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> QueryRanks:
        missing = [k for k in ("image_ranks", "text_ranks", "caption_image") if k not in payload]
        if missing:
            raise ValueError(f"ranks payload lacks {', '.join(missing)}")
        return cls(payload["image_ranks"], payload["text_ranks"], payload["caption_image"])

    def same_queries(self, other: QueryRanks) -> bool:
        """True when both rank the same images and captions (a paired comparison is possible)."""
        return self.num_images == other.num_images and np.array_equal(self.caption_image, other.caption_image)


@dataclasses.dataclass(frozen=True)
class StudyRanks:
    """A study's stored ranks on one split: final runs by (cell, seed), teacher references by cell."""

    runs: dict[tuple[str, int], QueryRanks]
    teachers: dict[str, QueryRanks]

    def cell_runs(self, cell: str) -> list[QueryRanks]:
        """The cell's final runs in seed order."""
        return [r for (c, _seed), r in sorted(self.runs.items()) if c == cell]


def _to_bytes(values: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(values, dtype=np.int32), allow_pickle=False)
    return buffer.getvalue()


def _from_bytes(blob: bytes) -> np.ndarray:
    return np.load(io.BytesIO(blob), allow_pickle=False).astype(np.int64)


def _row_values(ranks: QueryRanks, split: str) -> dict[str, Any]:
    return {
        "split": split,
        "num_images": ranks.num_images,
        "num_texts": ranks.num_texts,
        "image_ranks": _to_bytes(ranks.image_ranks),
        "text_ranks": _to_bytes(ranks.text_ranks),
        "caption_image": _to_bytes(ranks.caption_image),
    }


def _from_row(row: QueryRanksRow) -> QueryRanks:
    return QueryRanks(
        _from_bytes(row.image_ranks), _from_bytes(row.text_ranks), _from_bytes(row.caption_image)
    )


def _replace(store, owner_column, owner_id: int, ranks: QueryRanks, split: str) -> None:
    """One row per (owner, split): a rerun replaces the earlier ranks."""
    with store.session() as s, s.begin():
        s.execute(delete(QueryRanksRow).where(owner_column == owner_id, QueryRanksRow.split == split))
        s.add(QueryRanksRow(**{owner_column.key: owner_id}, **_row_values(ranks, split)))


def save_run_ranks(store, run_id: int, ranks: QueryRanks, *, split: str = "test") -> None:
    """Store a run's per-query ranks on ``split`` (replacing any stored before)."""
    _replace(store, QueryRanksRow.run_id, run_id, ranks, split)


def save_teacher_ranks(store, teacher_metrics_id: int, ranks: QueryRanks, *, split: str = "test") -> None:
    """Store a teacher reference's per-query ranks (``teacher_metrics_id``: its tsl_teacher_metrics row)."""
    _replace(store, QueryRanksRow.teacher_metrics_id, teacher_metrics_id, ranks, split)


def load_ranks(store, study_name: str, *, split: str = "test") -> StudyRanks:
    """The stored ranks of a study's COMPLETE final runs and teacher references on ``split``.

    A database made before ranks were stored (no ``tsl_query_ranks`` table, or runs without a row)
    gives empty mappings: the report then shows no intervals rather than failing."""
    if not inspect(store.engine).has_table(QueryRanksRow.__tablename__):
        return StudyRanks({}, {})
    runs: dict[tuple[str, int], QueryRanks] = {}
    teachers: dict[str, QueryRanks] = {}
    with store.session() as s:
        q = (
            select(RunRow.cell, RunRow.seed, QueryRanksRow)
            .join(RunRow, RunRow.id == QueryRanksRow.run_id)
            .where(
                RunRow.study_name == study_name,
                RunRow.kind == "final",
                RunRow.status == "complete",
                QueryRanksRow.split == split,
            )
        )
        for cell, seed, row in s.execute(q):
            runs[(cell, int(seed or 0))] = _from_row(row)
        q = (
            select(TeacherMetricsRow.cell, QueryRanksRow)
            .join(TeacherMetricsRow, TeacherMetricsRow.id == QueryRanksRow.teacher_metrics_id)
            .where(TeacherMetricsRow.study_name == study_name, QueryRanksRow.split == split)
        )
        for cell, row in s.execute(q):
            teachers[cell] = _from_row(row)
    return StudyRanks(runs, teachers)
