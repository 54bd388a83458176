"""Paired bootstrap over test images: confidence intervals for Recall@K and for differences of it.

The unit resampled is a test image together with its captions (the captions of one image are not
independent queries). Every group (a cell's final runs, or a teacher) is evaluated on the same
resampled images, so a difference between two groups is paired: the variation shared by both (an easy
or a hard image) cancels. Seeds are averaged inside each resample: a group's value in one resample is
the mean over its runs of each run's Recall@K on that resample. What the interval covers is the choice
of test images; it does not see the spread between training seeds (with 2-3 seeds nothing reliable
could), which the tables report beside it as ± std.

Vectorised: each run's ranks become per-image hit counts once; resample b's statistics are then one
product ``counts[b] @ per_image_values`` for all groups and comparisons at once (the counts of how often
each image was drawn, in chunks of resamples). I2T R@K of a resample is the mean of its images' hits
(weighted by their draw counts); T2I R@K is the ratio of caption hits to captions over the drawn
images. Intervals are percentile intervals; the point estimate is the full test set's value. A fixed
``seed`` makes the report reproducible: the same database gives the same intervals.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from tinysiglip.results.ranks import QueryRanks

__all__ = [
    "DIRECTIONS",
    "BootstrapResult",
    "Difference",
    "Interval",
    "ImageHits",
    "bootstrap_recall",
    "image_hits",
    "resample_counts",
]

DIRECTIONS = ("i2t", "t2i", "mean")
DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0
_CHUNK = 250  # resamples per block of draw counts (chunk x images int64)


@dataclasses.dataclass(frozen=True)
class Interval:
    """A point estimate (on the whole test set) and its bootstrap interval, in percent."""

    estimate: float
    low: float
    high: float
    level: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def fmt(self, digits: int = 1, *, signed: bool = False, mark: bool = False) -> str:
        """``"+1.7 [+0.5, +2.9]*"`` (``*`` when ``mark`` and the interval excludes 0)."""
        f = f"{{:{'+' if signed else ''}.{digits}f}}"
        star = "*" if mark and self.excludes_zero else ""
        return f"{f.format(self.estimate)} {self.bounds(digits, signed=signed)}{star}"

    def bounds(self, digits: int = 1, *, signed: bool = False) -> str:
        f = f"{{:{'+' if signed else ''}.{digits}f}}"
        return f"[{f.format(self.low)}, {f.format(self.high)}]"


@dataclasses.dataclass(frozen=True)
class Difference(Interval):
    """The interval of a difference a - b: shown signed, with ``*`` when it excludes 0."""

    def fmt(self, digits: int = 1, *, signed: bool = True, mark: bool = True) -> str:
        return super().fmt(digits, signed=signed, mark=mark)


@dataclasses.dataclass(frozen=True)
class ImageHits:
    """Per-image numbers of a group (seeds averaged): I2T hit (0..1), T2I caption hits, captions."""

    i2t: np.ndarray
    t2i: np.ndarray
    captions: np.ndarray


def image_hits(runs: Sequence[QueryRanks], k: int = 1) -> ImageHits:
    """A group's per-image hits at R@K, averaged over its runs (which must rank the same queries)."""
    if not runs:
        raise ValueError("a bootstrap group needs at least one run with stored ranks")
    first = runs[0]
    for r in runs[1:]:
        if not r.same_queries(first):
            raise ValueError("the runs of one group ranked different test sets; they cannot be averaged")
    n = first.num_images
    captions = np.bincount(first.caption_image, minlength=n).astype(np.float64)
    i2t = np.mean([(r.image_ranks < k).astype(np.float64) for r in runs], axis=0)
    t2i = np.mean(
        [np.bincount(r.caption_image, weights=(r.text_ranks < k), minlength=n) for r in runs], axis=0
    )
    return ImageHits(i2t, t2i, captions)


def resample_counts(num_images: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """How often each image is drawn in each resample, in chunks of shape (chunk, num_images).

    Drawn as indices (``Generator.integers``) and counted, so a slow reference can draw the same
    resamples: chunk c uses ``np.random.default_rng([seed, c])``."""
    for c, start in enumerate(range(0, resamples, _CHUNK)):
        rows = min(_CHUNK, resamples - start)
        idx = np.random.default_rng([seed, c]).integers(0, num_images, size=(rows, num_images))
        flat = (np.arange(rows)[:, None] * num_images + idx).ravel()
        yield np.bincount(flat, minlength=rows * num_images).reshape(rows, num_images)


@dataclasses.dataclass(frozen=True)
class BootstrapResult:
    """Intervals per group and per compared pair (a - b), each for ``DIRECTIONS``."""

    groups: dict[str, dict[str, Interval]]
    differences: dict[tuple[str, str], dict[str, Interval]]
    k: int
    resamples: int
    seed: int
    num_images: int
    num_texts: int


def _value_columns(hits: ImageHits) -> np.ndarray:
    """Columns whose weighted sums give I2T hits and T2I caption hits of a resample."""
    return np.stack([hits.i2t, hits.t2i], axis=1)


def _recall(sums: np.ndarray, drawn: np.ndarray, caption_sums: np.ndarray) -> np.ndarray:
    """(i2t, t2i, mean) in percent from the resampled sums (last axis: i2t hits, t2i hits)."""
    i2t = 100.0 * sums[..., 0] / drawn
    t2i = 100.0 * sums[..., 1] / caption_sums
    return np.stack([i2t, t2i, (i2t + t2i) / 2], axis=-1)


def bootstrap_recall(
    groups: Mapping[str, Sequence[QueryRanks]],
    comparisons: Sequence[tuple[str, str]] = (),
    *,
    k: int = 1,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    level: float = 0.95,
) -> BootstrapResult:
    """Percentile intervals of each group's R@K and of each comparison's difference ``a - b``.

    ``groups``: name -> the runs (seeds) of that group; all must rank the same test queries."""
    if resamples < 1:
        raise ValueError("resamples must be >= 1")
    if not 0 < level < 1:
        raise ValueError("level must be between 0 and 1")
    names = list(groups)
    unknown = sorted({n for pair in comparisons for n in pair} - set(names))
    if unknown:
        raise ValueError(f"comparisons name unknown groups: {', '.join(unknown)}")
    if not names:
        return BootstrapResult({}, {}, k, resamples, seed, 0, 0)
    reference = groups[names[0]][0]
    mismatched = [n for n in names if not all(r.same_queries(reference) for r in groups[n])]
    if mismatched:
        raise ValueError(
            f"groups {', '.join(mismatched)} ranked a different test set than {names[0]}; "
            "a paired bootstrap needs the same images and captions"
        )
    hits = {n: image_hits(groups[n], k) for n in names}
    captions = hits[names[0]].captions
    values = np.stack([_value_columns(hits[n]) for n in names], axis=1)  # images x groups x 2
    n_img = values.shape[0]

    index = {n: i for i, n in enumerate(names)}
    pairs = list(dict.fromkeys(comparisons))
    # Differences are resampled from per-image differences: identical groups give exactly 0.
    deltas = (
        np.stack([values[:, index[a]] - values[:, index[b]] for a, b in pairs], axis=1) if pairs else None
    )
    # Each column: i2t hits, t2i caption hits; groups first, then the compared pairs.
    columns = values if deltas is None else np.concatenate([values, deltas], axis=1)
    full = _recall(columns.sum(axis=0), float(n_img), np.full(columns.shape[1], captions.sum()))
    stats = []  # resamples x columns x 3
    for counts in resample_counts(n_img, resamples, seed):
        weights = counts.astype(np.float64)
        sums = np.einsum("bi,igv->bgv", weights, columns)
        drawn = weights.sum(axis=1)[:, None]
        caption_sums = (weights @ captions)[:, None]
        stats.append(_recall(sums, drawn, caption_sums))
    boot = np.concatenate(stats)
    tail = (1 - level) / 2 * 100

    def interval(estimate: float, samples: np.ndarray, kind: type[Interval] = Interval) -> Interval:
        low, high = np.percentile(samples, [tail, 100 - tail])
        return kind(float(estimate), float(low), float(high), level)

    columns_of = {n: index[n] for n in names} | {p: len(names) + i for i, p in enumerate(pairs)}
    out = {
        key: {
            d: interval(full[col, j], boot[:, col, j], Difference if key in pairs else Interval)
            for j, d in enumerate(DIRECTIONS)
        }
        for key, col in columns_of.items()
    }
    out_groups = {n: out[n] for n in names}
    out_diffs = {p: out[p] for p in pairs}
    return BootstrapResult(out_groups, out_diffs, k, resamples, seed, n_img, int(captions.sum()))
