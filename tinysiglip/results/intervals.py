"""The report's 95% intervals: one paired bootstrap (:mod:`.bootstrap`) over a study's stored test ranks.

Which differences the tables print follows from the roles of :mod:`.report_data`:

* Table 1: best distilled - no KD, and teacher - best distilled;
* Table 2: each ablation cell - the full method;
* scaling (B): each cell - the cell of the same student with the smallest teacher;
* architectures (C): each cell - the table's first cell.

All of them come from ONE bootstrap call (the same resampled test images for every figure), so the
intervals of a table are consistent with each other and the report is reproducible (fixed seed). A cell
gets intervals only when every complete final run of it has stored ranks; a study whose database was
made before ranks were stored gets none, and the tables say so instead of printing numbers.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from tinysiglip.results.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, Interval, bootstrap_recall

if TYPE_CHECKING:
    from tinysiglip.results.ranks import QueryRanks, StudyRanks
    from tinysiglip.results.report_data import CellData, StudyData

__all__ = [
    "StudyIntervals",
    "comparisons_of",
    "intervals_for",
    "reference_cell",
    "study_intervals",
    "teacher_group",
]


def teacher_group(cell: CellData) -> str:
    """The bootstrap group name of a cell's teacher reference."""
    return f"teacher of {cell.name}"


@dataclasses.dataclass(frozen=True)
class StudyIntervals:
    """Intervals by group (cell name or :func:`teacher_group`) and by compared pair (a, b): a - b."""

    groups: dict[str, dict[str, Interval]]
    differences: dict[tuple[str, str], dict[str, Interval]]
    resamples: int = DEFAULT_RESAMPLES
    seed: int = DEFAULT_SEED
    num_images: int = 0
    missing: tuple[str, ...] = ()  # cells without stored ranks for every complete final run

    def of(self, group: str) -> dict[str, Interval] | None:
        return self.groups.get(group)

    def diff(self, a: str, b: str) -> dict[str, Interval] | None:
        return self.differences.get((a, b))

    def note(self) -> str:
        """What the intervals are (for a table's notes)."""
        if not self.groups:
            return (
                "No 95% intervals: the final runs have no stored per-query test ranks "
                "(a database made before they were stored; rerun the final runs to get them)."
            )
        text = (
            f"[low, high]: 95% percentile interval of a paired bootstrap over the {self.num_images} test "
            f"images (each resampled with its captions; seeds averaged inside each resample; "
            f"{self.resamples} resamples, seed {self.seed}); * = the interval of a difference excludes 0. "
            "It covers the choice of test images, not the spread between training seeds (± std)."
        )
        if self.missing:
            text += f" No interval for {', '.join(self.missing)}: ranks missing for some final runs."
        return text


def reference_cell(data: StudyData, cell: CellData, table: list[CellData]) -> CellData:
    """What a scaling (B) or architecture (C) row is compared with: in B the cell of the same student
    with the smallest teacher (by parameters; ties: table order), in C the table's first cell."""
    if table is not data.scaling:
        return table[0]

    def size(o: CellData) -> float:
        t = data.teacher_for(o)
        return t.params_total if t is not None and t.params_total else float("inf")

    same = [o for o in table if o.student == cell.student]
    return min(same, key=lambda o: (size(o), table.index(o)))


def _reference_pairs(data: StudyData, table: list[CellData]) -> list[tuple[str, str]]:
    pairs = [(c.name, reference_cell(data, c, table).name) for c in table]
    return [(a, b) for a, b in pairs if a != b]


def comparisons_of(data: StudyData) -> list[tuple[str, str]]:
    """Every (a, b) whose difference a - b the tables print."""
    pairs: list[tuple[str, str]] = []
    if data.no_kd is not None and data.best_distilled is not None:
        pairs.append((data.best_distilled.name, data.no_kd.name))
        if data.teacher_for(data.best_distilled) is not None:
            pairs.append((teacher_group(data.best_distilled), data.best_distilled.name))
    if data.has_ablation:
        pairs += [(c.name, data.full.name) for c in data.ablation if c is not data.full]
    pairs += _reference_pairs(data, data.scaling) + _reference_pairs(data, data.architecture)
    return list(dict.fromkeys(pairs))


def _cell_groups(data: StudyData, ranks: StudyRanks) -> tuple[dict[str, list[QueryRanks]], list[str]]:
    groups: dict[str, list[QueryRanks]] = {}
    missing = []
    for c in data.cells:
        seeds = [int(s) for s in c.complete_finals["seed"]] if len(c.complete_finals) else []
        have = [ranks.runs[(c.name, s)] for s in sorted(seeds) if (c.name, s) in ranks.runs]
        if seeds and len(have) == len(seeds):
            groups[c.name] = have
        elif seeds:
            missing.append(c.name)
        if c.name in ranks.teachers:
            groups[teacher_group(c)] = [ranks.teachers[c.name]]
    return groups, missing


def study_intervals(
    data: StudyData, ranks: StudyRanks, *, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED
) -> StudyIntervals:
    """The bootstrap intervals of every cell, teacher and printed difference of a study."""
    groups, missing = _cell_groups(data, ranks)
    if not groups:
        return StudyIntervals({}, {}, resamples, seed, 0, tuple(missing))
    pairs = [p for p in comparisons_of(data) if p[0] in groups and p[1] in groups]
    result = bootstrap_recall(groups, pairs, resamples=resamples, seed=seed)
    return StudyIntervals(
        result.groups, result.differences, resamples, seed, result.num_images, tuple(missing)
    )


def intervals_for(data: StudyData) -> StudyIntervals:
    """``data.intervals``, computed from ``data.ranks`` on first use (one bootstrap per report)."""
    if data.intervals is None:
        from tinysiglip.results.ranks import StudyRanks

        data.intervals = study_intervals(data, data.ranks or StudyRanks({}, {}))
    return data.intervals


# ------------------------------------------------------------------------------ table cells

CI_CSV_KEYS = ["i2t_r1_ci", "t2i_r1_ci", "mean_r1_ci"]
DELTA_CSV_KEYS = ["delta_i2t_r1", "delta_t2i_r1", "delta"]
CI_HEADER = "95% CI of R@1 (I2T / T2I)"


def interval_cells(intervals: dict[str, Interval] | None) -> dict[str, object]:
    """A row's own R@1 intervals: ``r1_ci`` for Markdown/LaTeX, ``*_r1_ci`` (bounds) for the CSV."""
    if intervals is None:
        return {"r1_ci": None}
    return {
        "r1_ci": f"{intervals['i2t'].bounds()} / {intervals['t2i'].bounds()}",
        **{key: intervals[d] for key, d in zip(CI_CSV_KEYS, ("i2t", "t2i", "mean"), strict=True)},
    }


def difference_cells(differences: dict[str, Interval] | None) -> dict[str, object]:
    """A compared pair's R@1 differences (``Difference`` values: shown with interval and mark)."""
    if differences is None:
        return {}
    return {key: differences[d] for key, d in zip(DELTA_CSV_KEYS, ("i2t", "t2i", "mean"), strict=True)}
