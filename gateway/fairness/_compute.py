"""The CPU-bound part of an audit: the metrics with their bootstrap intervals, and fairlearn's
``MetricFrame``. It runs in a worker process (``worker_pool``), never on the event loop: a thousand resamples
and fairlearn's import (scikit-learn, pandas, scipy: about a second) would stall every request in flight.

The worker is spawned, not forked: the gateway process holds threads (the ledger writer, gRPC's), and a
forked child inherits their locks in whatever state they were in. Arguments and results are plain lists and
frozen dataclasses, so they pickle.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import AsyncIterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np

from gateway.fairness.metrics import outcome_audit
from gateway.fairness.probes import probe_audit
from gateway.fairness.reference import (
    ReferenceMetrics,
    SelectionReference,
    fairlearn_selection_metrics,
    fairlearn_weighted_outcome_metrics,
)
from gateway.fairness.results import OutcomeAudit, ProbeAudit


@dataclass(frozen=True)
class Records:
    """One attribute's readable records, one value per record in each column."""

    probe: list[str]
    group: list[str]
    repetition: list[int]
    outcome: list[int]


@dataclass(frozen=True)
class Computed:
    metrics: ProbeAudit
    reference: SelectionReference


def compute(records: Records, *, seed: int, resamples: int, confidence: float, min_probes: int) -> Computed:
    """The probe audit of ``records`` (intervals from a generator seeded with ``seed``) and fairlearn's view."""
    metrics = probe_audit(
        records.probe,
        records.group,
        records.repetition,
        records.outcome,
        rng=np.random.default_rng(seed),
        resamples=resamples,
        confidence=confidence,
        min_probes=min_probes,
    )
    return Computed(metrics, fairlearn_selection_metrics(records.outcome, records.group))


@dataclass(frozen=True)
class Cells:
    """An outcome audit's labelled, readable decisions counted by cell: entry i is ``count[i]`` decisions of
    group ``group[i]`` with that prediction and outcome (a million decisions are a few dozen entries)."""

    group: list[str]
    prediction: list[int]
    outcome: list[int]
    count: list[int]


@dataclass(frozen=True)
class OutcomeComputed:
    metrics: OutcomeAudit
    reference: ReferenceMetrics


def compute_outcomes(cells: Cells, *, seed: int, resamples: int, confidence: float,
                     min_group_size: int) -> OutcomeComputed:  # fmt: skip
    """The outcome audit of ``cells`` (rows rebuilt from the counts) and fairlearn's values, weighted by count."""
    counts = np.asarray(cells.count, dtype=np.int64)
    metrics = outcome_audit(
        np.repeat(np.asarray(cells.outcome, dtype=np.int64), counts),
        np.repeat(np.asarray(cells.prediction, dtype=np.int64), counts),
        np.repeat(np.asarray(cells.group, dtype=np.str_), counts),
        rng=np.random.default_rng(seed),
        resamples=resamples,
        confidence=confidence,
        min_group_size=min_group_size,
    )
    reference = fairlearn_weighted_outcome_metrics(cells.outcome, cells.prediction, cells.group, cells.count)
    return OutcomeComputed(metrics, reference)


@asynccontextmanager
async def worker_pool() -> AsyncIterator[Executor]:
    """One spawned worker process for the audits of one run; shut down (off the event loop) when done."""
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield pool
    finally:
        await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)
