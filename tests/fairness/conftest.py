"""Synthetic decision data with planted rates, drawn from fixed seeds."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Arrays = tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.str_]]


def decisions(seed: int, groups: dict[str, tuple[int, float, float, float]]) -> Arrays:
    """Rows per group: ``{name: (rows, base rate P(y_true = 1), TPR, FPR)}``; y_pred drawn given y_true.

    The group's population selection rate is base * TPR + (1 - base) * FPR.
    """
    rng = np.random.default_rng(seed)
    truth, pred, names = [], [], []
    for name, (n, base, tpr, fpr) in groups.items():
        y = (rng.random(n) < base).astype(np.int64)
        p = (rng.random(n) < np.where(y == 1, tpr, fpr)).astype(np.int64)
        truth.append(y)
        pred.append(p)
        names.append(np.full(n, name))
    return np.concatenate(truth), np.concatenate(pred), np.concatenate(names)
