"""Bad input is refused with a ValueError that says what is wrong, before any computation."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from gateway.fairness.metrics import outcome_audit
from gateway.fairness.probes import probe_audit

RNG = np.random.default_rng(0)


@pytest.mark.parametrize(
    ("y_true", "y_pred", "sensitive", "message"),
    [
        ([0, 1, 1], [0, 1], ["a", "b", "a"], r"lengths differ: y_true=3, y_pred=2, sensitive=3"),
        ([0, 1], [0, 1], ["a"], r"lengths differ"),
        ([], [], [], r"inputs are empty"),
        ([0, 2, 1], [0, 1, 1], ["a", "b", "a"], r"y_true must hold only 0 and 1; found 2 at index 1"),
        ([0, 1, 1], [0, 1, -1], ["a", "b", "a"], r"y_pred must hold only 0 and 1; found -1"),
        ([0, 1, 0.5], [0, 1, 1], ["a", "b", "a"], r"y_true must hold only 0 and 1; found 0.5"),
        ([0, 1, float("nan")], [0, 1, 1], ["a", "b", "a"], r"y_true must hold only 0 and 1; found nan"),
        (["0", "1", "1"], [0, 1, 1], ["a", "b", "a"], r"y_true must hold 0/1 labels"),
        ([[0, 1], [1, 0]], [[0, 1], [1, 0]], ["a", "b"], r"y_true must be one-dimensional"),
        ([0, 1, 1], [0, 1, 1], ["a", None, "a"], r"sensitive must hold strings; found None"),
        ([0, 1, 1], [0, 1, 1], [1, 2, 1], r"sensitive must hold strings; found 1 of type int"),
        ([0, 1] * 101, [0, 1] * 101, [f"g{i}" for i in range(202)], r"202 distinct values; .* at most 100"),
    ],
)
def test_outcome_audit_refuses(y_true: Any, y_pred: Any, sensitive: Any, message: str) -> None:
    """Mismatched lengths, empty input, labels other than 0/1, missing or non-string groups, too many groups."""
    with pytest.raises(ValueError, match=message):
        outcome_audit(y_true, y_pred, sensitive, rng=RNG)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"resamples": 0}, r"resamples must be a positive integer"),
        ({"confidence": 1.0}, r"confidence must be strictly between 0 and 1"),
        ({"min_group_size": 0}, r"min_group_size must be a positive integer"),
    ],
)
def test_outcome_audit_refuses_bad_settings(kw: dict[str, Any], message: str) -> None:
    """Resamples, confidence and the minimum sample size are checked too."""
    with pytest.raises(ValueError, match=message):
        outcome_audit([0, 1], [0, 1], ["a", "b"], rng=RNG, **kw)


def test_rng_must_be_a_generator() -> None:
    """A seed or the legacy global state is not accepted: intervals come from the caller's Generator."""
    with pytest.raises(TypeError, match=r"numpy\.random\.Generator"):
        outcome_audit([0, 1], [0, 1], ["a", "b"], rng=7)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ((["p", "p"], ["a", "b"], [0, 0], [1]), r"lengths differ: probe_id=2, group=2, repetition=2, outcome=1"),
        (([], [], [], []), r"inputs are empty"),
        ((["p", "p"], ["a", "b"], [0, 0], [1, 3]), r"outcome must hold only 0 and 1; found 3"),
        ((["p", "p"], ["a", "b"], [0.5, 0], [1, 0]), r"repetition must be a one-dimensional sequence of integers"),
        (([1, 2], ["a", "b"], [0, 0], [1, 0]), r"probe_id must hold strings"),
    ],
)
def test_probe_audit_refuses(columns: tuple[Any, Any, Any, Any], message: str) -> None:
    """Probe records are checked the same way."""
    with pytest.raises(ValueError, match=message):
        probe_audit(*columns, rng=RNG)
