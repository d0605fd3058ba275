"""Fairness audits: the numpy fast path against fairlearn's MetricFrame.

    python -m benches.bench_fairness [--runs N]

Synthetic decisions for five groups of unequal sizes (40/30/15/10/5%), base rates and decision rates,
drawn once per size from a fixed seed. Per run:

- ``outcome_audit`` (``gateway/fairness/metrics.py``) on 100,000 and 1,000,000 rows: every rate per group,
  the parity differences and ratio, and their bootstrap intervals (1,000 resamples), from NumPy arrays
  (sensitive attribute as a str array); the 1M case also from Python lists, as rows read from a store come;
- fairlearn's ``MetricFrame`` on the 100,000 rows (selection rate, TPR, FPR, accuracy, count per group; no
  intervals), then the whole fairlearn reference (``gateway/fairness/reference.py``: the MetricFrame and
  the four fairlearn scalar functions, each of which builds a MetricFrame of its own);
- ``probe_audit`` on 2,000 probes x 4 groups x 5 repetitions (40,000 records), with bootstrap.

fairlearn's import (scikit-learn, pandas, scipy) is timed once, before the runs. Figures are CPU seconds
(``time.process_time``, all threads) and wall seconds, median [min-max] over runs. Nothing is asserted;
the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from gateway.fairness.metrics import outcome_audit
from gateway.fairness.probes import probe_audit
from gateway.fairness.results import Estimate

GROUPS = np.array(["group-a", "group-b", "group-c", "group-d", "group-e"])
SHARES = [0.4, 0.3, 0.15, 0.1, 0.05]
BASE = np.array([0.3, 0.5, 0.6, 0.2, 0.45])
SELECT = np.array([0.5, 0.35, 0.7, 0.25, 0.6])


def decisions(n: int, seed: int = 7) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    g = rng.choice(len(GROUPS), size=n, p=SHARES)
    y_true = (rng.random(n) < BASE[g]).astype(np.int64)
    y_pred = (rng.random(n) < SELECT[g] * (0.6 + 0.6 * y_true)).astype(np.int64)
    return y_true, y_pred, GROUPS[g]


def probes(count: int = 2000, reps: int = 5, seed: int = 8) -> tuple[list[str], list[str], list[int], list[int]]:
    rng = np.random.default_rng(seed)
    rows = [(f"probe-{t}", str(g), r) for t in range(count) for g in GROUPS[:4] for r in range(reps)]
    yes = (rng.random(len(rows)) < np.tile(np.repeat([0.6, 0.5, 0.5, 0.4], reps), count)).astype(int).tolist()
    return [p for p, _, _ in rows], [g for _, g, _ in rows], [r for _, _, r in rows], yes


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def show(label: str, runs: list[tuple[float, float]]) -> None:
    cpu, wall = [c for c, _ in runs], [w for _, w in runs]
    print(f"{label:<48} CPU {statistics.median(cpu):7.3f} s [{min(cpu):.3f}-{max(cpu):.3f}]   "
          f"wall {statistics.median(wall):7.3f} s [{min(wall):.3f}-{max(wall):.3f}]")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    small, large = decisions(100_000), decisions(1_000_000)
    large_lists = tuple(column.tolist() for column in large)
    probe_columns = probes()
    cpu, wall = timed(lambda: (__import__("fairlearn.metrics"), __import__("sklearn.metrics")))
    print(f"import fairlearn (with scikit-learn, pandas, scipy): CPU {cpu:.2f} s, wall {wall:.2f} s")
    from gateway.fairness.reference import fairlearn_outcome_metrics, group_frame

    cases: dict[str, Callable[[], object]] = {
        "fast path, 100k rows, 1,000 resamples": lambda: outcome_audit(*small, rng=np.random.default_rng(1)),
        "fast path, 1M rows, 1,000 resamples": lambda: outcome_audit(*large, rng=np.random.default_rng(1)),
        "fast path, 1M rows from Python lists": lambda: outcome_audit(*large_lists, rng=np.random.default_rng(1)),
        "fairlearn MetricFrame, 100k rows (no intervals)": lambda: group_frame(*small),
        "fairlearn reference (frame + 4 functions), 100k": lambda: fairlearn_outcome_metrics(*small),
        "probe audit, 40k records, 1,000 resamples": lambda: probe_audit(*probe_columns, rng=np.random.default_rng(1)),
    }
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in cases}
    for _ in range(args.runs):
        for label, fn in cases.items():
            results[label].append(timed(fn))
    print(f"{args.runs} runs; median [min-max]")
    for label, runs in results.items():
        show(label, runs)

    audit = outcome_audit(*large, rng=np.random.default_rng(1))
    dp = audit.demographic_parity_difference
    assert isinstance(dp, Estimate)
    print(f"1M rows: DP difference {dp.value:.4f} [{dp.low:.4f}, {dp.high:.4f}] from {dp.resamples} resamples")


if __name__ == "__main__":
    main()
