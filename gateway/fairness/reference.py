"""fairlearn's computation of the outcome metrics, for cross-checks and reports; never on a hot path.

fairlearn (and scikit-learn, pandas and scipy with it, about a second) is imported on first use, so importing
``gateway.fairness`` costs nothing. ``metrics.outcome_audit`` computes the same values from cell counts; the
tests hold the two to 1e-12.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ReferenceMetrics:
    """fairlearn's values: ``by_group`` maps each group to its selection_rate, true_positive_rate,
    false_positive_rate, accuracy and count; the rest are fairlearn's between-groups differences and ratio."""

    by_group: dict[str, dict[str, float]]
    demographic_parity_difference: float
    demographic_parity_ratio: float
    equal_opportunity_difference: float
    equalized_odds_difference: float
    accuracy_difference: float


def group_frame(y_true: Iterable[Any], y_pred: Iterable[Any], sensitive: Iterable[Any]) -> Any:
    """fairlearn's ``MetricFrame`` of the four rates and the count per group."""
    from fairlearn import metrics as fm
    from sklearn.metrics import accuracy_score

    return fm.MetricFrame(
        metrics={
            "selection_rate": fm.selection_rate,
            "true_positive_rate": fm.true_positive_rate,
            "false_positive_rate": fm.false_positive_rate,
            "accuracy": accuracy_score,
            "count": fm.count,
        },
        y_true=y_true,
        y_pred=y_pred,
        sensitive_features=sensitive,
    )


def fairlearn_outcome_metrics(
    y_true: Iterable[Any], y_pred: Iterable[Any], sensitive: Iterable[Any]
) -> ReferenceMetrics:
    """The outcome audit's point values as fairlearn computes them (no intervals, no minimum sample size)."""
    from fairlearn import metrics as fm

    y_true, y_pred, sensitive = list(y_true), list(y_pred), list(sensitive)
    frame = group_frame(y_true, y_pred, sensitive)
    by_group = {str(g): {k: float(v) for k, v in row.items()} for g, row in frame.by_group.to_dict("index").items()}
    features = {"sensitive_features": sensitive}
    if hasattr(fm, "equal_opportunity_difference"):  # fairlearn >= 0.11
        opportunity = fm.equal_opportunity_difference(y_true, y_pred, **features)
    else:  # pragma: no cover - older fairlearn: the same value from the MetricFrame
        opportunity = frame.difference()["true_positive_rate"]
    return ReferenceMetrics(
        by_group=by_group,
        demographic_parity_difference=float(fm.demographic_parity_difference(y_true, y_pred, **features)),
        demographic_parity_ratio=float(fm.demographic_parity_ratio(y_true, y_pred, **features)),
        equal_opportunity_difference=float(opportunity),
        equalized_odds_difference=float(fm.equalized_odds_difference(y_true, y_pred, **features)),
        accuracy_difference=float(frame.difference()["accuracy"]),
    )


@dataclass(frozen=True)
class SelectionReference:
    """fairlearn's view of a probe audit's records: per group ``selection_rate`` and ``count`` (from a
    ``MetricFrame``), and its demographic parity difference and ratio. No intervals, no minimum sample size."""

    by_group: dict[str, dict[str, float]]
    demographic_parity_difference: float
    demographic_parity_ratio: float


def fairlearn_selection_metrics(outcome: Iterable[Any], sensitive: Iterable[Any]) -> SelectionReference:
    """Selection rates per group and demographic parity as fairlearn computes them (``y_pred`` is the outcome;
    selection rates do not read ``y_true``, which fairlearn still requires: the outcome is passed again)."""
    from fairlearn import metrics as fm

    outcome, sensitive = list(outcome), list(sensitive)
    frame = fm.MetricFrame(
        metrics={"selection_rate": fm.selection_rate, "count": fm.count},
        y_true=outcome,
        y_pred=outcome,
        sensitive_features=sensitive,
    )
    by_group = {str(g): {k: float(v) for k, v in row.items()} for g, row in frame.by_group.to_dict("index").items()}
    features = {"sensitive_features": sensitive}
    return SelectionReference(
        by_group=by_group,
        demographic_parity_difference=float(fm.demographic_parity_difference(outcome, outcome, **features)),
        demographic_parity_ratio=float(fm.demographic_parity_ratio(outcome, outcome, **features)),
    )


def fairlearn_weighted_outcome_metrics(
    y_true: list[int], y_pred: list[int], sensitive: list[str], weight: list[int]
) -> ReferenceMetrics:
    """``fairlearn_outcome_metrics`` of rows given as distinct (y_true, y_pred, group) cells with their counts.

    fairlearn weighs each row by ``weight`` (``sample_weight``), which gives exactly the values of the rows
    repeated: an outcome audit of a million decisions passes fairlearn at most four rows per group. ``count``
    per group is the sum of the weights.
    """
    from fairlearn import metrics as fm
    from sklearn.metrics import accuracy_score

    rates = {"selection_rate": fm.selection_rate, "true_positive_rate": fm.true_positive_rate,
             "false_positive_rate": fm.false_positive_rate, "accuracy": accuracy_score}  # fmt: skip
    frame = fm.MetricFrame(
        metrics=rates,
        y_true=y_true,
        y_pred=y_pred,
        sensitive_features=sensitive,
        sample_params={name: {"sample_weight": weight} for name in rates},
    )
    by_group = {str(g): {k: float(v) for k, v in row.items()} for g, row in frame.by_group.to_dict("index").items()}
    for g in by_group:
        by_group[g]["count"] = float(sum(w for w, s in zip(weight, sensitive, strict=True) if s == g))
    kw = {"sensitive_features": sensitive, "sample_weight": weight}
    return ReferenceMetrics(
        by_group=by_group,
        demographic_parity_difference=float(fm.demographic_parity_difference(y_true, y_pred, **kw)),
        demographic_parity_ratio=float(fm.demographic_parity_ratio(y_true, y_pred, **kw)),
        equal_opportunity_difference=float(fm.equal_opportunity_difference(y_true, y_pred, **kw)),
        equalized_odds_difference=float(fm.equalized_odds_difference(y_true, y_pred, **kw)),
        accuracy_difference=float(frame.difference()["accuracy"]),
    )
