"""Thresholds applied to a probe or outcome audit: pass, fail, inconclusive or insufficient data, metric by metric.

The burden of proof is on the model. A metric **fails** when its measured value breaks the threshold. It
**passes** only when its whole confidence interval lies within the threshold: the data show, at the audit's
confidence, that the model meets it. Between the two (the value is within, the interval crosses the line) it
is **inconclusive**: more probes or repetitions (more labelled decisions, for an outcome audit) would decide. A
metric without a value (a group below the minimum sample) is **insufficient data**. The share of unreadable
answers is checked too: if one group's answers could not be read as often as the threshold allows, the rates
compare what was readable, not what the model did, and the audit fails. An outcome audit with an accuracy
baseline also checks the accuracy's drop below it (``accuracy_drop``, baseline minus accuracy).

An audit's status is the worst of its checks, in the order fail, insufficient data, inconclusive, pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from gateway.fairness.decisions import OutcomeThresholds
from gateway.fairness.probeset import Thresholds
from gateway.fairness.results import Estimate, OutcomeAudit, ProbeAudit, Result

Status = Literal["pass", "fail", "inconclusive", "insufficient_data"]
_ORDER: tuple[Status, ...] = ("fail", "insufficient_data", "inconclusive", "pass")


@dataclass(frozen=True)
class Check:
    """One metric against its threshold. ``value``, ``low`` and ``high`` are None without an estimate."""

    metric: str
    status: Status
    threshold: float
    bound: Literal["max", "min"]
    """Whether the threshold is the most (difference, flip rate, unread share) or the least (ratio) allowed."""
    value: float | None
    low: float | None
    high: float | None
    reason: str


def _judge(metric: str, result: Result, threshold: float, bound: Literal["max", "min"]) -> Check:
    if not isinstance(result, Estimate):
        return Check(metric, "insufficient_data", threshold, bound, None, None, None, result.reason)
    v, lo, hi = result.value, result.low, result.high
    word = "at most" if bound == "max" else "at least"
    if (v > threshold) if bound == "max" else (v < threshold):
        status: Status = "fail"
        reason = f"{v:.3f} breaks the threshold ({word} {threshold})"
    elif (hi <= threshold) if bound == "max" else (lo >= threshold):
        status = "pass"
        interval = f"the {result.confidence:.0%} interval [{lo:.3f}, {hi:.3f}]"
        reason = f"{interval} is within the threshold ({word} {threshold})"
    else:
        status = "inconclusive"
        reason = (
            f"{v:.3f} is within the threshold ({word} {threshold}) but the {result.confidence:.0%} interval "
            f"[{lo:.3f}, {hi:.3f}] crosses it: more data would decide"
        )
    return Check(metric, status, threshold, bound, v, lo, hi, reason)


def _unread(unread: dict[str, tuple[int, int]], limit: float, what: str) -> Check:
    """The worst group's share of unreadable answers against ``limit``; ``unread`` maps each group to
    (unreadable, total)."""
    shares = {g: (bad / asked if asked else 1.0) for g, (bad, asked) in unread.items()}
    worst = max(shares, key=lambda g: shares[g])
    bad, asked = unread[worst]
    return Check(
        "unread_share",
        "fail" if shares[worst] > limit else "pass",
        limit,
        "max",
        shares[worst],
        None,
        None,
        f"group {worst!r}: {bad} of {asked} {what} unreadable ({shares[worst]:.1%}; at most {limit:.1%} allowed)",
    )


def _nothing(metric: str, threshold: float, reason: str) -> Check:
    return Check(metric, "insufficient_data", threshold, "max", None, None, None, reason)


def judge(metrics: ProbeAudit | None, unread: dict[str, tuple[int, int]], thresholds: Thresholds) -> tuple[Check, ...]:
    """The checks of one attribute's audit. ``unread`` maps each group to (unreadable answers, requests);
    ``metrics`` is None when no answer at all could be read."""
    unread_check = _unread(unread, thresholds.max_unread_share, "answers")
    if metrics is None:
        missing = _nothing("demographic_parity_difference", thresholds.max_parity_difference, "no answer could be read")
        return (unread_check, missing)
    return (
        _judge(
            "demographic_parity_difference",
            metrics.demographic_parity_difference,
            thresholds.max_parity_difference,
            "max",
        ),
        _judge("demographic_parity_ratio", metrics.demographic_parity_ratio, thresholds.min_parity_ratio, "min"),
        _judge("counterfactual_flip_rate", metrics.counterfactual_flip_rate, thresholds.max_flip_rate, "max"),
        unread_check,
    )


def judge_outcomes(
    metrics: OutcomeAudit | None,
    drop: Result | None,
    unread: dict[str, tuple[int, int]],
    thresholds: OutcomeThresholds,
) -> tuple[Check, ...]:
    """The checks of an outcome audit. ``drop`` is the accuracy's fall below its baseline (None: no baseline);
    ``unread`` maps each group to (labelled decisions whose answer was unreadable, labelled decisions), and is
    empty when nothing is labelled; ``metrics`` is None when no labelled decision could be read."""
    t = thresholds
    checks = [_unread(unread, t.max_unread_share, "labelled decisions")] if unread else []
    if metrics is None:
        reason = "no labelled decision could be read" if unread else "no decision with an uploaded outcome"
        return (*checks, _nothing("equal_opportunity_difference", t.max_equal_opportunity_difference, reason))
    checks[:0] = [
        _judge("demographic_parity_difference", metrics.demographic_parity_difference, t.max_parity_difference, "max"),
        _judge("demographic_parity_ratio", metrics.demographic_parity_ratio, t.min_parity_ratio, "min"),
        _judge("equal_opportunity_difference", metrics.equal_opportunity_difference,
               t.max_equal_opportunity_difference, "max"),
        _judge("equalized_odds_difference", metrics.equalized_odds_difference, t.max_equalized_odds_difference, "max"),
        _judge("accuracy_difference", metrics.accuracy_difference, t.max_accuracy_difference, "max"),
    ]  # fmt: skip
    if drop is not None:
        checks.insert(5, _judge("accuracy_drop", drop, t.max_accuracy_drop, "max"))
    return tuple(checks)


def overall(statuses: Iterable[Status]) -> Status:
    """The worst status (fail, insufficient data, inconclusive, pass); pass for none."""
    seen = set(statuses)
    return next((s for s in _ORDER if s in seen), "pass")
