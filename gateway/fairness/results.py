"""Result types of the fairness audits: frozen, JSON-ready, and never NaN.

A metric is either an ``Estimate`` (a value with a bootstrap interval) or ``InsufficientData`` (the reason,
and the groups that fell short): a group below the audit's minimum sample size gives no number at all, so a
report can never show a rate computed from three people as if it meant something. ``kind`` tells the two
apart once serialized.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Estimate:
    """A point value from all the data and its bootstrap interval ``[low, high]`` at ``confidence``.

    ``resamples`` counts the bootstrap resamples the interval was computed from: the audit's number, less any
    resample in which a rate of some group was undefined (see ``bootstrap``).
    """

    value: float
    low: float
    high: float
    confidence: float
    resamples: int
    kind: Literal["estimate"] = "estimate"


@dataclass(frozen=True)
class InsufficientData:
    """No value: too few samples (``groups`` lists the groups below ``minimum``), or fewer than two groups."""

    reason: str
    groups: tuple[str, ...] = ()
    minimum: int = 0
    kind: Literal["insufficient_data"] = "insufficient_data"


Result = Estimate | InsufficientData


@dataclass(frozen=True)
class GroupOutcome:
    """One group of an outcome audit: its counts and its rates (each with a marginal percentile interval).

    ``positives`` and ``negatives`` count true labels 1 and 0: they are the sample sizes of the true- and
    false-positive rates, as ``count`` is that of the selection rate and the accuracy.
    """

    group: str
    count: int
    positives: int
    negatives: int
    selection_rate: Result
    true_positive_rate: Result
    false_positive_rate: Result
    accuracy: Result


@dataclass(frozen=True)
class OutcomeAudit:
    """An outcome audit of a decision model; definitions in ``metrics.outcome_audit``."""

    groups: tuple[GroupOutcome, ...]
    demographic_parity_difference: Result
    demographic_parity_ratio: Result
    equal_opportunity_difference: Result
    equalized_odds_difference: Result
    accuracy_difference: Result
    rows: int
    min_group_size: int
    resamples: int
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for reports and the ledger)."""
        return asdict(self)


@dataclass(frozen=True)
class ProbeGroup:
    """One value of the sensitive attribute in a probe audit: its records, the probes it appears in, and the
    share of its records with outcome 1."""

    group: str
    records: int
    probes: int
    selection_rate: Result


@dataclass(frozen=True)
class ProbeAudit:
    """A counterfactual probe audit of a generative model; definitions in ``probes.probe_audit``.

    ``probes`` counts all probes, ``compared_probes`` those with at least two group values (the ones the flip
    rate is computed from) and ``compared_pairs`` their pairs of group values.
    """

    groups: tuple[ProbeGroup, ...]
    demographic_parity_difference: Result
    demographic_parity_ratio: Result
    counterfactual_flip_rate: Result
    records: int
    probes: int
    compared_probes: int
    compared_pairs: int
    min_probes: int
    resamples: int
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for reports and the ledger)."""
        return asdict(self)
