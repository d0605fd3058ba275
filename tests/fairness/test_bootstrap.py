"""Bootstrap building blocks: order statistics of the percentile interval, the folded two-group interval,
and resampling that keeps group sizes (cells) or draws whole clusters."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.fairness.bootstrap import max_abs_interval, percentile_interval, resample_cells, resample_clusters


def test_percentile_interval_is_order_statistics_26_and_975() -> None:
    """1,000 distinct values at 95%: the 26th and 975th smallest, the usual 2.5% and 97.5% points."""
    values = np.random.default_rng(0).permutation(np.arange(1.0, 1001.0))
    assert percentile_interval(values, 0.95) == (26.0, 975.0, 1000)
    assert percentile_interval(values, 0.90) == (51.0, 950.0, 1000)


def test_percentile_interval_with_ties_and_nan() -> None:
    """Equal values give a point interval; NaN resamples are left out and counted."""
    assert percentile_interval(np.full(100, 0.25), 0.95) == (0.25, 0.25, 100)
    values = np.concatenate([np.arange(1.0, 1001.0), [np.nan] * 7])
    assert percentile_interval(values, 0.95) == (26.0, 975.0, 1000)
    assert percentile_interval(np.full(3, np.nan), 0.95) is None


def test_two_group_spread_is_the_folded_percentile_interval() -> None:
    """With two columns, max_abs_interval is the percentile interval of x0 - x1, folded at 0."""
    rng = np.random.default_rng(1)
    for shift, expect_zero in ((0.3, False), (0.0, True)):
        x = np.column_stack([rng.normal(shift, 0.05, 1000), rng.normal(0.0, 0.05, 1000)])
        signed = percentile_interval(x[:, 0] - x[:, 1], 0.95)
        folded = max_abs_interval(x, [(0, 1)], 0.95)
        assert signed is not None and folded is not None
        lo, hi, _ = signed
        if expect_zero:
            assert lo < 0 < hi
            assert folded == (0.0, max(-lo, hi), 1000)
        else:
            assert folded == pytest.approx((lo, hi, 1000), abs=1e-15)


def test_simultaneous_band_is_wider_than_one_pair() -> None:
    """Three groups: the band for all three pairs holds >= 95% of resamples at once, so it is at least as wide
    as one pair's own interval."""
    x = np.random.default_rng(2).normal(0.5, 0.05, size=(1000, 3))
    one = max_abs_interval(x, [(0, 1)], 0.95)
    band = max_abs_interval(x, [(0, 1), (0, 2), (1, 2)], 0.95)
    assert one is not None and band is not None
    assert band[1] >= one[1]


def test_resample_cells_keeps_group_sizes_and_row_distribution() -> None:
    """Per-group totals are fixed; a cell's resampled count has mean n p and variance n p (1 - p), as when
    drawing rows."""
    cells = np.array([[300, 100, 50, 550], [10, 20, 30, 40]])
    out = resample_cells(cells, 4000, np.random.default_rng(3))
    assert out.shape == (4000, 2, 4)
    assert (out.sum(axis=2) == cells.sum(axis=1)).all()
    tp = out[:, 0, 3]
    assert tp.mean() == pytest.approx(550, rel=0.01)
    assert tp.var() == pytest.approx(1000 * 0.55 * 0.45, rel=0.15)


def test_resample_clusters_draws_as_many_clusters_as_there_are() -> None:
    """The weights of each resample sum to the number of clusters, in one or several chunks, deterministically."""
    totals = np.column_stack([np.ones(5000), np.arange(5000.0)])
    out = resample_clusters(totals, 2000, np.random.default_rng(4))  # 2000 x 5000 weights: three chunks
    assert (out[:, 0] == 5000).all()
    assert out[:, 1].mean() == pytest.approx(totals[:, 1].sum(), rel=0.01)
    assert (resample_clusters(totals, 2000, np.random.default_rng(4)) == out).all()
