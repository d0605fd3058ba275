"""Input checks and encodings shared by the audits: every bad input is a ValueError that names the argument."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

MAX_GROUPS = 100  # the intervals compare every pair of groups: 4,950 pairs at 100 groups


def as_binary(values: Iterable[Any], name: str) -> npt.NDArray[np.int64]:
    """``values`` as a 1-D int64 array of 0 and 1; booleans and numbers equal to 0 or 1 are accepted."""
    arr = np.asarray(values if isinstance(values, np.ndarray) else list(values))
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, not of shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr.astype(np.int64)
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must hold 0/1 labels (numbers or booleans), not values of dtype {arr.dtype}")
    ok = (arr == 0) | (arr == 1)
    if not ok.all():
        bad = arr[~ok][0].item()  # a Python number: its repr is the same under numpy 1 and 2
        raise ValueError(f"{name} must hold only 0 and 1; found {bad!r} at index {int(np.argmin(ok))}")
    return arr.astype(np.int64)


def as_codes(values: Iterable[Any], name: str) -> tuple[tuple[str, ...], npt.NDArray[np.int64]]:
    """Factorize string labels: (the distinct labels sorted, each value's index among them).

    A dict lookup per value: about 0.1 s per million, several times faster than sorting the strings with
    ``np.unique``. Only strings are accepted (a missing attribute must be given as a label of its own).
    """
    if isinstance(values, np.ndarray) and values.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, not of shape {values.shape}")
    items = values.tolist() if isinstance(values, np.ndarray) else list(values)
    if not all(isinstance(v, str) for v in items):
        bad = next(v for v in items if not isinstance(v, str))
        raise ValueError(f"{name} must hold strings; found {bad!r} of type {type(bad).__name__}")
    first: dict[str, int] = {}
    codes = np.fromiter((first.setdefault(v, len(first)) for v in items), dtype=np.int64, count=len(items))
    labels = sorted(first)
    remap = np.empty(len(labels), dtype=np.int64)
    for rank, label in enumerate(labels):
        remap[first[label]] = rank
    return tuple(str(label) for label in labels), remap[codes]


def as_ints(values: Iterable[Any], name: str) -> npt.NDArray[np.int64]:
    """``values`` as a 1-D int64 array; only integers (not booleans) are accepted."""
    arr = np.asarray(values if isinstance(values, np.ndarray) else list(values))
    if arr.ndim != 1 or (arr.dtype.kind not in "iu" and arr.size):  # an empty list is float64 to numpy
        raise ValueError(f"{name} must be a one-dimensional sequence of integers, not dtype {arr.dtype}")
    return arr.astype(np.int64)


def check_lengths(**columns: int) -> int:
    """The common length of the named columns; ValueError if they differ or are empty."""
    lengths = set(columns.values())
    if len(lengths) > 1:
        listed = ", ".join(f"{k}={v}" for k, v in columns.items())
        raise ValueError(f"the inputs must have one value per row each, but their lengths differ: {listed}")
    (n,) = lengths
    if n == 0:
        raise ValueError(f"the inputs are empty ({', '.join(columns)}): an audit needs at least one row")
    return n


def check_groups(labels: tuple[str, ...], name: str) -> None:
    """At most ``MAX_GROUPS`` distinct values of the sensitive attribute."""
    if len(labels) > MAX_GROUPS:
        raise ValueError(f"{name} has {len(labels)} distinct values; the audits compare at most {MAX_GROUPS}")


def check_settings(resamples: int, confidence: float, minimum: int, minimum_name: str, rng: object) -> None:
    """The audit's own parameters."""
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples must be a positive integer, not {resamples!r}")
    if not (isinstance(confidence, float | int) and 0 < confidence < 1):
        raise ValueError(f"confidence must be strictly between 0 and 1, not {confidence!r}")
    if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < 1:
        raise ValueError(f"{minimum_name} must be a positive integer, not {minimum!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (seeded for repeatable intervals), not {type(rng)}")
