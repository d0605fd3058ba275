"""The fast path computes fairlearn's definitions: every rate, count, difference and ratio agrees to 1e-12."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.fairness.metrics import outcome_audit
from gateway.fairness.reference import fairlearn_outcome_metrics
from gateway.fairness.results import Estimate

TOL = 1e-12
RATES = ("selection_rate", "true_positive_rate", "false_positive_rate", "accuracy")
SCALARS = (
    "demographic_parity_difference",
    "demographic_parity_ratio",
    "equal_opportunity_difference",
    "equalized_odds_difference",
    "accuracy_difference",
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_path_matches_fairlearn(seed: int) -> None:
    """Five groups of unequal sizes, base rates and decision rates: the audit's values are fairlearn's."""
    rng = np.random.default_rng(seed)
    n = 20_000
    names = np.array(["alpha", "beta", "gamma", "delta", "eps"])
    group = rng.choice(5, size=n, p=[0.4, 0.3, 0.15, 0.1, 0.05])
    y_true = (rng.random(n) < np.array([0.3, 0.5, 0.6, 0.2, 0.45])[group]).astype(int)
    y_pred = (rng.random(n) < np.array([0.5, 0.35, 0.7, 0.25, 0.6])[group] * (0.6 + 0.6 * y_true)).astype(int)
    sensitive = names[group].tolist()

    ours = outcome_audit(y_true, y_pred, sensitive, rng=np.random.default_rng(seed), min_group_size=1, resamples=50)
    ref = fairlearn_outcome_metrics(y_true, y_pred, sensitive)

    assert sorted(ref.by_group) == [g.group for g in ours.groups]
    for g in ours.groups:
        want = ref.by_group[g.group]
        assert g.count == want["count"]
        for rate in RATES:
            got = getattr(g, rate)
            assert isinstance(got, Estimate)
            assert abs(got.value - want[rate]) <= TOL, (g.group, rate, got.value, want[rate])
    for name in SCALARS:
        got = getattr(ours, name)
        assert isinstance(got, Estimate)
        assert abs(got.value - getattr(ref, name)) <= TOL, (name, got.value, getattr(ref, name))
