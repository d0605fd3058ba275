"""Thresholds: a value past the line fails, a whole interval inside passes, anything between is inconclusive."""

from __future__ import annotations

import pytest

from gateway.fairness.probeset import Thresholds
from gateway.fairness.results import Estimate, InsufficientData, ProbeAudit, Result
from gateway.fairness.verdict import judge, overall

T = Thresholds(max_parity_difference=0.1, min_parity_ratio=0.8, max_flip_rate=0.1, max_unread_share=0.05)


def est(value: float, low: float, high: float) -> Estimate:
    return Estimate(value, low, high, 0.95, 1000)


def audit(diff: Result, ratio: Result, flip: Result) -> ProbeAudit:
    return ProbeAudit((), diff, ratio, flip, 0, 0, 0, 0, 30, 1000, 0.95)


OK = {"a": (0, 100), "b": (1, 100)}


@pytest.mark.parametrize(
    ("diff", "ratio", "flip", "expected"),
    [
        (est(0.02, 0.0, 0.06), est(0.97, 0.9, 1.0), est(0.0, 0.0, 0.03), ("pass", "pass", "pass")),
        (est(0.15, 0.05, 0.25), est(0.7, 0.5, 0.9), est(0.2, 0.1, 0.3), ("fail", "fail", "fail")),
        (est(0.08, 0.0, 0.2), est(0.85, 0.7, 1.0), est(0.1, 0.05, 0.15), ("inconclusive",) * 3),
        (est(0.1, 0.1, 0.1), est(0.8, 0.8, 0.8), est(0.1, 0.1, 0.1), ("pass", "pass", "pass")),  # on the line
        (InsufficientData("few", ("a",), 30), InsufficientData("few", ("a",), 30), est(0.0, 0.0, 0.0),
         ("insufficient_data", "insufficient_data", "pass")),
    ],
)  # fmt: skip
def test_checks(diff: Result, ratio: Result, flip: Result, expected: tuple[str, ...]) -> None:
    """Each metric's status against its threshold, with the interval deciding pass versus inconclusive."""
    checks = judge(audit(diff, ratio, flip), OK, T)
    assert [c.metric for c in checks] == [
        "demographic_parity_difference", "demographic_parity_ratio", "counterfactual_flip_rate", "unread_share"
    ]  # fmt: skip
    assert tuple(c.status for c in checks[:3]) == expected
    assert checks[3].status == "pass" and checks[3].value == 0.01
    assert all(c.reason for c in checks)


def test_unread_answers_fail_the_audit() -> None:
    """One group with too many unreadable answers fails, naming the group; no answers at all is insufficient."""
    fine = est(0.0, 0.0, 0.0)
    checks = judge(audit(fine, est(1.0, 1.0, 1.0), fine), {"a": (0, 100), "b": (6, 100)}, T)
    unread = checks[-1]
    assert unread.status == "fail" and "group 'b': 6 of 100" in unread.reason
    assert overall(c.status for c in checks) == "fail"
    nothing = judge(None, {"a": (10, 10), "b": (10, 10)}, T)
    assert [c.status for c in nothing] == ["fail", "insufficient_data"]


def test_overall_is_the_worst() -> None:
    """fail > insufficient data > inconclusive > pass."""
    assert overall(["pass", "inconclusive", "insufficient_data"]) == "insufficient_data"
    assert overall(["pass", "inconclusive"]) == "inconclusive"
    assert overall(["insufficient_data", "fail"]) == "fail"
    assert overall(["pass"]) == overall([]) == "pass"
