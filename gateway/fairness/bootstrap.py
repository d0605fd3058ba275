"""Bootstrap resampling and percentile intervals, vectorized: no Python loop over resamples or rows.

Every function takes the caller's ``numpy.random.Generator``: with a seeded generator, an audit's intervals
are the same on every run (same numpy version).

Resampling
    ``resample_cells`` resamples rows stratified by group: each group's n_g rows are drawn n_g times with
    replacement, independently across groups. Group sizes stay as observed, so every group is in every
    resample and a small group cannot vanish from one; the question an audit asks is the disparity between
    these groups at these sizes, not how often each group happens to be sampled. When a statistic depends on
    a row only through its cell (outcome audits: the pair (y_true, y_pred), four cells), the resampled cell
    counts of a group with cell counts c are exactly Multinomial(n_g, c / n_g): the same distribution as
    drawing row indices, at a cost that does not grow with the number of rows.

    ``resample_clusters`` resamples whole clusters with replacement (all rows of a drawn cluster, as often as
    it is drawn): multinomial weights over the clusters times their per-cluster totals. For rows that are
    not independent, such as the variants and repetitions of one probe, where resampling rows would
    understate the uncertainty.

Intervals
    ``percentile_interval``: order statistics k and B + 1 - k of the B resampled values, k the largest that
    keeps at least ``confidence * B`` of them inside (k = 26 for B = 1000 at 95% without ties: the 2.5% and
    97.5% points). Ties can only widen the interval.

    ``max_abs_interval``, for a spread over groups such as max_g r_g - min_g r_g = max over pairs |r_i - r_j|.
    The percentile interval of the resampled spread itself cannot contain 0 (every resampled spread is >= 0
    and almost always > 0): it would report a disparity where there is none. So the pairs' signed contrasts
    c_p = r_i - r_j get simultaneous percentile intervals I_p (Mandel & Betensky 2008: one k for all pairs,
    the largest for which at least ``confidence * B`` resamples lie inside every I_p at once), and since the
    spread is max_p |c_p|, it lies in [max_p dist(0, I_p), max_p max|I_p|] whenever every c_p lies in its
    I_p, so it covers the spread at least as often as the I_p jointly cover the contrasts (about
    ``confidence``; more when one pair clearly holds the maximum). With two groups it is the ordinary
    percentile interval of the difference, folded at 0: it contains 0 exactly when the signed interval does.

A resample in which a rate is undefined (0/0, such as a group's true-positive rate when the resample drew
none of its positives) is left out of the intervals that use that rate; the count of resamples used is
returned. With at least m positives the chance of that is at most exp(-m) per group and resample.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_CHUNK = 4_000_000  # multinomial weights drawn at once by resample_clusters (resamples x clusters), ~32 MB


def resample_cells(cells: IntArray, resamples: int, rng: np.random.Generator) -> IntArray:
    """Resampled cell counts, shape (resamples, groups, cells), from counts of shape (groups, cells).

    Each group's row is Multinomial(its total, its cell shares): rows resampled within each group.
    """
    n = cells.sum(axis=1)
    if (n == 0).any():
        raise ValueError("every group must have at least one row")
    resampled: IntArray = rng.multinomial(n, cells / n[:, None], size=(resamples, len(n)))
    return resampled


def resample_clusters(totals: FloatArray, resamples: int, rng: np.random.Generator) -> FloatArray:
    """Column totals over resampled clusters, shape (resamples, columns), from per-cluster totals (clusters,
    columns): each resample draws as many clusters as there are, uniformly with replacement."""
    t = totals.shape[0]
    shares = np.full(t, 1.0 / t)
    out = np.empty((resamples, totals.shape[1]), dtype=np.float64)
    step = max(1, _CHUNK // t)
    for start in range(0, resamples, step):  # chunks bound the memory of the weights, not a loop per resample
        stop = min(resamples, start + step)
        weights = rng.multinomial(t, shares, size=stop - start)
        out[start:stop] = weights @ totals
    return out


def _depth(values: FloatArray, ordered: FloatArray) -> IntArray:
    """How far each value lies from the nearer tail of ``ordered`` (the same values sorted): a value is within
    order statistics k and B + 1 - k (1-based) exactly when its depth is >= k, ties in its favour."""
    at_most = np.searchsorted(ordered, values, side="right")
    below = np.searchsorted(ordered, values, side="left")
    depth: IntArray = np.minimum(at_most, len(values) - below).astype(np.int64)
    return depth


def _order_k(depth: IntArray, confidence: float) -> int:
    """The largest k with at least ceil(confidence * B) depths >= k."""
    b = len(depth)
    need = max(1, math.ceil(confidence * b - 1e-9))  # 0.95 * 1000 is 950, not 950.0000000001
    return int(np.sort(depth)[b - need])


def percentile_interval(values: FloatArray, confidence: float) -> tuple[float, float, int] | None:
    """(low, high, resamples used) of the resampled ``values``, NaN ones left out; None if all are NaN."""
    x = values[~np.isnan(values)]
    if len(x) == 0:
        return None
    ordered = np.sort(x)
    k = _order_k(_depth(x, ordered), confidence)
    return float(ordered[k - 1]), float(ordered[len(x) - k]), len(x)


def _contrast(a: FloatArray, b: FloatArray) -> FloatArray:
    """a - b, with 0 where a == b (so two equal infinities, such as two log rates of 0, contrast to 0)."""
    with np.errstate(invalid="ignore"):
        out: FloatArray = np.where(a == b, 0.0, a - b)
    return out


def max_abs_interval(
    samples: FloatArray, pairs: list[tuple[int, int]], confidence: float
) -> tuple[float, float, int] | None:
    """Interval (low, high, resamples used) for max over ``pairs`` (i, j) of |x_i - x_j|, from resampled
    columns ``samples`` (resamples, columns), by simultaneous percentile intervals of the signed contrasts.

    Resamples with NaN in any column the pairs use are left out; None if none is left.
    """
    columns = sorted({c for pair in pairs for c in pair})
    x = samples[~np.isnan(samples[:, columns]).any(axis=1)]
    b = len(x)
    if b == 0 or not pairs:
        return None
    contrasts = [_contrast(x[:, i], x[:, j]) for i, j in pairs]
    ordered = [np.sort(c) for c in contrasts]
    depth = np.full(b, b, dtype=np.int64)
    for c, o in zip(contrasts, ordered, strict=True):
        depth = np.minimum(depth, _depth(c, o))
    k = _order_k(depth, confidence)
    low = high = 0.0
    for o in ordered:
        lo, hi = float(o[k - 1]), float(o[b - k])
        low = max(low, 0.0 if lo <= 0.0 <= hi else min(abs(lo), abs(hi)))
        high = max(high, abs(lo), abs(hi))
    return low, high, b
