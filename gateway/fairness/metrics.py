"""Outcome audits of decision models: rates per group, parity differences and ratios, bootstrap intervals.

Definitions. The groups g are the distinct values of the sensitive attribute. Group g has n_g rows, P_g of
them with y_true = 1 and N_g with y_true = 0; y_pred = 1 means "selected".

- selection rate s_g = #{y_pred = 1} / n_g; accuracy a_g = #{y_pred = y_true} / n_g
- true-positive rate t_g = #{y_pred = 1, y_true = 1} / P_g; false-positive rate f_g = #{y_pred = 1, y_true = 0} / N_g
- demographic parity difference max_g s_g - min_g s_g; ratio min_g s_g / max_g s_g (1 when every s_g is 0)
- equal opportunity difference max_g t_g - min_g t_g
- equalized odds difference max(max_g t_g - min_g t_g, max_g f_g - min_g f_g)
- accuracy difference max_g a_g - min_g a_g

These are fairlearn's definitions (``demographic_parity_difference``, ``demographic_parity_ratio``,
``equal_opportunity_difference``, ``equalized_odds_difference`` with its defaults ``between_groups`` and
``worst_case``); the tests check agreement to 1e-12. The values come from one ``bincount`` over the rows (the
four cells (y_true, y_pred) per group), and everything after it, bootstrap included, works on those G x 4
counts: a million rows take well under a second, where fairlearn's ``MetricFrame`` takes seconds for 100k.

Minimum sample size. A rate's sample is the rows in its denominator: n_g for the selection rate and the
accuracy, P_g for the true-positive rate, N_g for the false-positive rate. A rate whose sample is below
``min_group_size``, and any difference or ratio over groups of which one is below it, is ``InsufficientData``
naming those groups. A small group is never left out of a comparison silently: it may be the one treated
worst.

Intervals (``bootstrap``): rows are resampled within each group (stratified by group, group sizes fixed),
``resamples`` times. Each rate gets its percentile interval; each difference the simultaneous-contrast
interval of ``bootstrap.max_abs_interval`` (so it can contain 0); the ratio the same interval on log selection
rates, since min/max = exp(-max over pairs |log s_i - log s_j|). A group whose observed rate is 0 or 1 has
the same rate in every resample: the bootstrap treats it as known.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from gateway.fairness._inputs import as_binary, as_codes, check_groups, check_lengths, check_settings
from gateway.fairness.bootstrap import FloatArray, IntArray, max_abs_interval, percentile_interval, resample_cells
from gateway.fairness.results import Estimate, GroupOutcome, InsufficientData, OutcomeAudit, Result

TN, FP, FN, TP = 0, 1, 2, 3  # cell index 2 * y_true + y_pred


def cell_counts(
    y_true: Iterable[Any], y_pred: Iterable[Any], sensitive: Iterable[Any]
) -> tuple[tuple[str, ...], IntArray]:
    """(the groups, sorted; counts of shape (groups, 4) in cells TN, FP, FN, TP), after checking the inputs."""
    truth, pred = as_binary(y_true, "y_true"), as_binary(y_pred, "y_pred")
    labels, codes = as_codes(sensitive, "sensitive")
    check_lengths(y_true=len(truth), y_pred=len(pred), sensitive=len(codes))
    check_groups(labels, "sensitive")
    cells: IntArray = np.bincount(codes * 4 + truth * 2 + pred, minlength=len(labels) * 4).reshape(-1, 4)
    return labels, cells


def rates(cells: IntArray) -> dict[str, FloatArray]:
    """The four rates per group from cell counts of shape (..., groups, 4); NaN where a denominator is 0."""
    tn, fp, fn, tp = (cells[..., c].astype(np.float64) for c in (TN, FP, FN, TP))
    n = tn + fp + fn + tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "selection_rate": (fp + tp) / n,
            "true_positive_rate": tp / (tp + fn),
            "false_positive_rate": fp / (fp + tn),
            "accuracy": (tn + tp) / n,
        }


def rate_result(
    value: float, samples: FloatArray, size: int, unit: str, minimum: int, confidence: float, group: str
) -> Result:
    """One group's rate: an estimate with its percentile interval, or too few rows in its denominator."""
    if size < minimum:
        return InsufficientData(f"{size} {unit}, fewer than the minimum of {minimum}", (group,), minimum)
    interval = percentile_interval(samples, confidence)
    if interval is None:  # pragma: no cover - needs every resample to miss all of >= minimum rows
        return InsufficientData(f"the rate is undefined in every resample ({size} {unit})", (group,), minimum)
    low, high, used = interval
    return Estimate(value, low, high, confidence, used)


def compare(
    value: float,
    samples: FloatArray,
    pairs: list[tuple[int, int]],
    short: dict[str, int],
    unit: str,
    minimum: int,
    confidence: float,
    groups: int,
    log_ratio: bool = False,
) -> Result:
    """A difference over groups (or, with ``log_ratio``, a min/max ratio from log rates) and its interval.

    ``short`` maps each group below ``minimum`` to its sample size; any such group makes the result
    ``InsufficientData``.
    """
    if groups < 2:
        return InsufficientData("only one group: a comparison needs at least two", (), minimum)
    if short:
        listed = ", ".join(f"{g} ({n})" for g, n in short.items())
        return InsufficientData(f"groups with fewer than {minimum} {unit}: {listed}", tuple(short), minimum)
    interval = max_abs_interval(samples, pairs, confidence)
    if interval is None:  # pragma: no cover - needs every resample to miss all of >= minimum rows of a group
        return InsufficientData("a rate is undefined in every resample", (), minimum)
    low, high, used = interval
    if log_ratio:
        low, high = math.exp(-high), math.exp(-low)
    return Estimate(value, low, high, confidence, used)


def _pairs(groups: int, offset: int = 0) -> list[tuple[int, int]]:
    return [(offset + i, offset + j) for i in range(groups) for j in range(i + 1, groups)]


def _spread(values: FloatArray) -> float:
    return float(values.max() - values.min())


def _log(values: FloatArray) -> FloatArray:
    with np.errstate(divide="ignore"):
        out: FloatArray = np.log(values)
    return out


def outcome_audit(
    y_true: Iterable[Any],
    y_pred: Iterable[Any],
    sensitive: Iterable[Any],
    *,
    rng: np.random.Generator,
    resamples: int = 1000,
    confidence: float = 0.95,
    min_group_size: int = 30,
) -> OutcomeAudit:
    """Audit binary decisions ``y_pred`` against outcomes ``y_true`` across the groups of ``sensitive``.

    ``y_true`` and ``y_pred`` hold 0/1 (numbers or booleans), ``sensitive`` strings, one value per row each.
    Raises ValueError on mismatched lengths, empty input, labels other than 0/1, non-string groups or more
    than ``_inputs.MAX_GROUPS`` groups. Definitions and intervals: see the module docstring.
    """
    check_settings(resamples, confidence, min_group_size, "min_group_size", rng)
    labels, cells = cell_counts(y_true, y_pred, sensitive)
    g = len(labels)
    n = cells.sum(axis=1)
    sizes = {
        "selection_rate": n,
        "accuracy": n,
        "true_positive_rate": cells[:, FN] + cells[:, TP],
        "false_positive_rate": cells[:, TN] + cells[:, FP],
    }
    units = {
        "selection_rate": "rows",
        "accuracy": "rows",
        "true_positive_rate": "positives (y_true = 1)",
        "false_positive_rate": "negatives (y_true = 0)",
    }
    point, boot = rates(cells), rates(resample_cells(cells, resamples, rng))

    def rate(name: str, i: int) -> Result:
        return rate_result(
            float(point[name][i]),
            boot[name][:, i],
            int(sizes[name][i]),
            units[name],
            min_group_size,
            confidence,
            labels[i],
        )

    def short(*names: str) -> dict[str, int]:
        return {
            labels[i]: int(min(sizes[m][i] for m in names))
            for i in range(g)
            if any(sizes[m][i] < min_group_size for m in names)
        }

    groups = tuple(
        GroupOutcome(
            group=labels[i],
            count=int(n[i]),
            positives=int(sizes["true_positive_rate"][i]),
            negatives=int(sizes["false_positive_rate"][i]),
            selection_rate=rate("selection_rate", i),
            true_positive_rate=rate("true_positive_rate", i),
            false_positive_rate=rate("false_positive_rate", i),
            accuracy=rate("accuracy", i),
        )
        for i in range(g)
    )

    def diff(
        value: float, samples: FloatArray, pairs: list[tuple[int, int]], names: tuple[str, ...], log_ratio: bool = False
    ) -> Result:
        unit = units[names[0]] if len(names) == 1 else "positives or negatives (rows with y_true = 1, = 0)"
        return compare(value, samples, pairs, short(*names), unit, min_group_size, confidence, g, log_ratio)

    sel, tpr, fpr, acc = (point[m] for m in ("selection_rate", "true_positive_rate", "false_positive_rate", "accuracy"))
    top = float(sel.max())
    both = np.hstack([boot["true_positive_rate"], boot["false_positive_rate"]])
    tpr_fpr = ("true_positive_rate", "false_positive_rate")
    return OutcomeAudit(
        groups=groups,
        demographic_parity_difference=diff(_spread(sel), boot["selection_rate"], _pairs(g), ("selection_rate",)),
        demographic_parity_ratio=diff(
            float(sel.min()) / top if top > 0 else 1.0,
            _log(boot["selection_rate"]),
            _pairs(g),
            ("selection_rate",),
            log_ratio=True,
        ),
        equal_opportunity_difference=diff(_spread(tpr), boot["true_positive_rate"], _pairs(g), ("true_positive_rate",)),
        equalized_odds_difference=diff(max(_spread(tpr), _spread(fpr)), both, _pairs(g) + _pairs(g, offset=g), tpr_fpr),
        accuracy_difference=diff(_spread(acc), boot["accuracy"], _pairs(g), ("accuracy",)),
        rows=int(n.sum()),
        min_group_size=min_group_size,
        resamples=resamples,
        confidence=confidence,
    )
