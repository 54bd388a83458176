"""Differences the report prints: bootstrap intervals where ranks are stored, else a standard error.

``delta`` (a - b of seed means, with the standard error of the difference) is the fallback for a
database made before per-query ranks were stored; :mod:`.intervals` gives the paired bootstrap.
"""

from __future__ import annotations

from typing import Any

from tinysiglip.results.intervals import difference_cells, intervals_for, reference_cell, teacher_group
from tinysiglip.results.report_data import CellData, Stat, StudyData

__all__ = ["delta", "reference_differences", "table1_differences"]


def delta(a: Stat, b: Stat) -> Stat | None:
    """a - b with the standard error of the difference as its spread (n = min(n_a, n_b))."""
    if a.mean is None or b.mean is None:
        return None
    return _DeltaStat(a.mean - b.mean, ((a.std**2) / a.n + (b.std**2) / b.n) ** 0.5, min(a.n, b.n))


class _DeltaStat(Stat):
    def __init__(self, value: float, se: float, n: int):
        object.__setattr__(self, "values", (value,))
        object.__setattr__(self, "run_ids", ())
        object.__setattr__(self, "_se", se)
        object.__setattr__(self, "_n", n)

    @property
    def mean(self) -> float:
        return self.values[0]

    @property
    def std(self) -> float:
        return self._se

    @property
    def n(self) -> int:
        return self._n

    def fmt(self, digits: int = 1, *, with_n: bool = False) -> str:
        return f"{self.mean:+.{digits}f} ± {self.std:.{digits}f}"


def table1_differences(data: StudyData, *, with_teacher: bool) -> list[dict[str, Any]]:
    """Rows "Δ distilled − no KD" and "Δ teacher − distilled": bootstrap intervals where the runs
    stored ranks, else the standard error of the difference of seed means."""
    best, no_kd = data.best_distilled, data.no_kd
    pairs = [("Δ distilled − no KD", best.name, no_kd.name, f"{best.name} − {no_kd.name}")]
    if with_teacher:
        pairs.append(("Δ teacher − distilled", teacher_group(best), best.name, f"teacher − {best.name}"))
    rows = []
    for label, a, b, cell in pairs:
        diff = intervals_for(data).diff(a, b)
        if diff is not None:
            values = {"i2t_r1": diff["i2t"], "t2i_r1": diff["t2i"], **difference_cells(diff)}
        elif a == best.name:
            values = {m: delta(best.metrics[m], no_kd.metrics[m]) for m in ("i2t_r1", "t2i_r1")}
        else:
            continue  # teacher minus student needs the ranks of both
        rows.append({"model": label, "cell": cell, **values})
    return rows


def reference_differences(data: StudyData, cell: CellData, table: list[CellData]) -> dict[str, Any]:
    """A scaling/architecture row's difference from its reference cell (``reference_cell``)."""
    ref = reference_cell(data, cell, table)
    if ref is cell:
        return {"reference": "-", "delta": "-"}
    diff = intervals_for(data).diff(cell.name, ref.name)
    if diff is not None:
        return {"reference": ref.name, **difference_cells(diff)}
    return {"reference": ref.name, "delta": delta(cell.metrics["mean_r1"], ref.metrics["mean_r1"])}
