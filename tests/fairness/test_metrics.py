"""Outcome audits: definitions on hand-counted data, planted disparities found, none invented, interval
coverage over repeated draws, and insufficient data below the minimum sample size.

Every draw comes from a fixed seed, so each test gives the same answer on every run. The coverage checks
use 200 draws: at a true coverage of 95% the observed share has a standard deviation of 1.5 points, so the
bounds [0.90, 0.99] sit more than three of them away from nominal.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from gateway.fairness.metrics import outcome_audit
from gateway.fairness.results import Estimate, InsufficientData, OutcomeAudit

from .conftest import decisions

DRAWS = 200
# Base rate 0.5. a: TPR 0.9, FPR 0.3, selection 0.6, accuracy 0.8; b: TPR 0.5, FPR 0.1, selection 0.3,
# accuracy 0.7. So DP difference 0.3, ratio 0.5, equal opportunity 0.4, equalized odds max(0.4, 0.2) = 0.4.
PLANTED = {"a": (400, 0.5, 0.9, 0.3), "b": (400, 0.5, 0.5, 0.1)}
TRUE = {
    "demographic_parity_difference": 0.3,
    "demographic_parity_ratio": 0.5,
    "equal_opportunity_difference": 0.4,
    "equalized_odds_difference": 0.4,
    "accuracy_difference": 0.1,
}
NULL = {"a": (400, 0.5, 0.7, 0.2), "b": (400, 0.5, 0.7, 0.2), "c": (300, 0.5, 0.7, 0.2)}


def audit(seed: int, groups: dict[str, tuple[int, float, float, float]], **kw: int) -> OutcomeAudit:
    y_true, y_pred, sensitive = decisions(seed, groups)
    return outcome_audit(y_true, y_pred, sensitive, rng=np.random.default_rng(10_000 + seed), **kw)


def est(result: Estimate | InsufficientData) -> Estimate:
    assert isinstance(result, Estimate), result
    return result


def test_definitions_on_hand_counted_rows() -> None:
    """Each rate and difference equals its definition on rows counted by hand."""
    # group x, 10 rows: TP 3, FN 1, FP 2, TN 4; group y, the last 4 rows: TP 1, FN 1, TN 2
    y_true = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0]
    y_pred = [1, 1, 1, 0, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0]
    sensitive = ["x"] * 10 + ["y"] * 4
    a = outcome_audit(y_true, y_pred, sensitive, rng=np.random.default_rng(0), min_group_size=1)
    x, y = a.groups
    assert (x.group, x.count, x.positives, x.negatives) == ("x", 10, 4, 6)
    assert (y.group, y.count, y.positives, y.negatives) == ("y", 4, 2, 2)
    assert [est(r).value for r in (x.selection_rate, x.true_positive_rate, x.false_positive_rate, x.accuracy)] == [
        5 / 10,
        3 / 4,
        2 / 6,
        7 / 10,
    ]
    assert [est(r).value for r in (y.selection_rate, y.true_positive_rate, y.false_positive_rate, y.accuracy)] == [
        1 / 4,
        1 / 2,
        0 / 2,
        3 / 4,
    ]
    assert est(a.demographic_parity_difference).value == pytest.approx(0.5 - 0.25, abs=1e-15)
    assert est(a.demographic_parity_ratio).value == pytest.approx(0.25 / 0.5, abs=1e-15)
    assert est(a.equal_opportunity_difference).value == pytest.approx(0.75 - 0.5, abs=1e-15)
    assert est(a.equalized_odds_difference).value == pytest.approx(max(0.25, 2 / 6), abs=1e-15)
    assert est(a.accuracy_difference).value == pytest.approx(0.75 - 0.7, abs=1e-15)
    assert a.rows == 14


def test_planted_disparity_is_found() -> None:
    """Selection 0.6 against 0.3 on 4,000 rows each: DP difference near 0.3, its interval covers 0.3, not 0."""
    a = audit(1, {"a": (4000, 0.5, 0.9, 0.3), "b": (4000, 0.5, 0.5, 0.1)})
    dp = est(a.demographic_parity_difference)
    assert dp.value == pytest.approx(0.3, abs=0.03)
    assert dp.low < 0.3 < dp.high
    assert dp.low > 0.2  # far from 0: a clear finding
    ratio = est(a.demographic_parity_ratio)
    assert 0.4 < ratio.low <= ratio.value <= ratio.high < 0.8  # below four fifths: a finding
    eo = est(a.equal_opportunity_difference)
    assert eo.low < 0.4 < eo.high and eo.low > 0.3
    assert est(a.equalized_odds_difference).low > 0.3
    assert (dp.confidence, dp.resamples) == (0.95, 1000)


def test_no_disparity_is_invented() -> None:
    """Three groups treated alike: the difference intervals contain 0 and the ratio interval 1, in >= 90% of
    200 draws (a percentile interval of max - min itself would contain 0 in none)."""
    covered = {
        "demographic_parity_difference": 0,
        "demographic_parity_ratio": 0,
        "equal_opportunity_difference": 0,
        "equalized_odds_difference": 0,
        "accuracy_difference": 0,
    }
    for seed in range(DRAWS):
        a = audit(seed, NULL)
        for name in covered:
            r = est(getattr(a, name))
            target = 1.0 if name == "demographic_parity_ratio" else 0.0
            covered[name] += r.low <= target <= r.high
    shares = {k: v / DRAWS for k, v in covered.items()}
    assert all(s >= 0.90 for s in shares.values()), shares


def test_intervals_cover_the_planted_values() -> None:
    """Over 200 independent draws, the 95% intervals contain the planted values 90-99% of the time
    (equalized odds, a maximum over two rates' bands, only from below: it is conservative)."""
    covered = dict.fromkeys(TRUE, 0)
    for seed in range(DRAWS):
        a = audit(seed, PLANTED)
        for name, true in TRUE.items():
            r = est(getattr(a, name))
            covered[name] += r.low <= true <= r.high
    shares = {k: v / DRAWS for k, v in covered.items()}
    assert all(s >= 0.90 for s in shares.values()), shares
    assert all(s <= 0.99 for k, s in shares.items() if k != "equalized_odds_difference"), shares


def test_insufficient_data_below_the_minimum() -> None:
    """A group of 20 rows with min_group_size 30: its rates and every comparison say so, naming it."""
    a = audit(3, {"a": (500, 0.5, 0.8, 0.2), "b": (500, 0.5, 0.8, 0.2), "small": (20, 0.5, 0.8, 0.2)})
    small = a.groups[2]
    assert small.group == "small" and small.count == 20
    for r in (small.selection_rate, small.true_positive_rate, small.false_positive_rate, small.accuracy):
        assert isinstance(r, InsufficientData) and r.groups == ("small",) and r.minimum == 30
    for name in TRUE:
        r = getattr(a, name)
        assert isinstance(r, InsufficientData), name
        assert r.groups == ("small",) and "small" in r.reason and "30" in r.reason
    assert isinstance(a.groups[0].selection_rate, Estimate)


def test_minimum_applies_to_each_rates_own_denominator() -> None:
    """300 rows but 12 positives: selection rate and DP are estimated, TPR and equal opportunity are not."""
    a = audit(4, {"a": (300, 0.5, 0.8, 0.2), "rare": (300, 0.04, 0.8, 0.2)})
    rare = a.groups[1]
    assert rare.positives < 30 <= rare.negatives
    assert isinstance(rare.selection_rate, Estimate) and isinstance(rare.false_positive_rate, Estimate)
    assert isinstance(rare.true_positive_rate, InsufficientData)
    assert isinstance(a.demographic_parity_difference, Estimate)
    assert isinstance(a.equal_opportunity_difference, InsufficientData)
    assert isinstance(a.equalized_odds_difference, InsufficientData)
    assert "positives" in a.equal_opportunity_difference.reason


def test_one_group_is_not_a_comparison() -> None:
    """With a single group the rates are estimated and every comparison is insufficient data."""
    a = audit(5, {"only": (200, 0.5, 0.8, 0.2)})
    assert isinstance(a.groups[0].accuracy, Estimate)
    assert isinstance(a.demographic_parity_difference, InsufficientData)
    assert "one group" in a.demographic_parity_difference.reason


def test_nobody_selected_is_parity() -> None:
    """No group selected anyone: difference 0 in [0, 0], ratio 1 in [1, 1] (never 0/0)."""
    a = outcome_audit([0, 1] * 50, [0] * 100, ["a", "b"] * 50, rng=np.random.default_rng(0))
    dp, ratio = est(a.demographic_parity_difference), est(a.demographic_parity_ratio)
    assert (dp.value, dp.low, dp.high) == (0.0, 0.0, 0.0)
    assert (ratio.value, ratio.low, ratio.high) == (1.0, 1.0, 1.0)


def test_seeded_runs_repeat_and_serialize() -> None:
    """The same seed gives the same audit; another seed the same values with other intervals; to_dict is JSON."""
    first, again = audit(6, PLANTED), audit(6, PLANTED)
    assert first == again
    y_true, y_pred, sensitive = decisions(6, PLANTED)
    other = outcome_audit(y_true, y_pred, sensitive, rng=np.random.default_rng(1))
    assert est(other.demographic_parity_difference).value == est(first.demographic_parity_difference).value
    assert est(other.demographic_parity_difference).low != est(first.demographic_parity_difference).low
    data = json.loads(json.dumps(first.to_dict()))
    assert data["demographic_parity_difference"]["kind"] == "estimate"
    assert data["groups"][0]["group"] == "a"


def test_inputs_as_lists_and_booleans() -> None:
    """Python lists, booleans and 0.0/1.0 floats give the same audit as int64 arrays."""
    y_true, y_pred, sensitive = decisions(7, PLANTED)
    base = outcome_audit(y_true, y_pred, sensitive, rng=np.random.default_rng(2))
    alt = outcome_audit(
        y_true.astype(bool).tolist(), y_pred.astype(float), sensitive.tolist(), rng=np.random.default_rng(2)
    )
    assert alt == base
