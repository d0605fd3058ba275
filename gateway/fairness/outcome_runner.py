"""Run an outcome audit: a decision model's labelled decisions over a window, against the definition's thresholds.

The decisions made in the window (``window`` before ``until``) that have an uploaded outcome are counted by
cell in the store (model version, group, decision, outcome: a few dozen rows for a million decisions). Each
model version in the window is audited on its own, so that a change between versions shows as two results. Per
version: ``fairness.started``, then the metrics and fairlearn's values in a worker process
(``_compute.compute_outcomes``), the thresholds (``verdict.judge_outcomes``) and ``fairness.audit``; an audit
that cannot finish is ``fairness.aborted``, as with probe audits.

Accuracy baseline. The accuracy (all groups, readable labelled decisions) is compared with the definition's
``accuracy_baseline`` or, without one, with the mean accuracy of this model's outcome audits under the same
definition that finished within ``baseline_window`` before: more than ``max_accuracy_drop`` below it fails.
The interval of the drop is the accuracy's Wilson score interval, shifted. The first audit has no baseline
and no drop check.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import statistics
import uuid
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from gateway.audit import AuditSink
from gateway.fairness._compute import Cells, OutcomeComputed, compute_outcomes, worker_pool
from gateway.fairness.decisions import DecisionAuditFile
from gateway.fairness.report import GroupCoverage, OutcomeAuditReport
from gateway.fairness.results import Estimate
from gateway.fairness.runner import SUBJECT, aborted_on_failure
from gateway.fairness.schedule import every_seconds
from gateway.fairness.store import Cell, FairnessStore
from gateway.fairness.verdict import judge_outcomes, overall
from gateway.timefmt import iso


@dataclass(frozen=True)
class OutcomeServices:
    """What an outcome audit needs: the store of decisions and results, the ledger, and the policy's version."""

    store: FairnessStore
    audit: AuditSink
    policy_version: int


def wilson(successes: int, n: int, confidence: float) -> tuple[float, float]:
    """The Wilson score interval of a proportion (0 < n)."""
    z = statistics.NormalDist().inv_cdf((1 + confidence) / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


async def run_outcome_audit(
    services: OutcomeServices,
    entry: DecisionAuditFile,
    model: str,
    *,
    requested_by: str,
    until: datetime | None = None,
    current_version: str = "",
    progress: Callable[[int], None] | None = None,
    executor: Executor | None = None,
) -> list[OutcomeAuditReport]:
    """Audit ``model``'s decisions under ``entry``, one report per model version in the window (one report with
    ``current_version`` when there is none). ``progress`` is called with 1 after reading and at the end.
    Raises AuditUnavailable when the ledger cannot write (fail closed)."""
    spec = entry.audit
    if model not in spec.models:
        raise ValueError(f"outcome audit {spec.name!r} does not audit model {model!r}")
    end = (until or datetime.now(UTC)).timestamp()
    start = end - every_seconds(spec.window)
    store = services.store
    cells = await asyncio.to_thread(store.cells, spec.name, model, start, end)
    recorded = await asyncio.to_thread(store.coverage, spec.name, model, start, end)
    since = end - every_seconds(spec.thresholds.baseline_window)
    previous = await asyncio.to_thread(store.accuracies, spec.name, model, since)
    if progress is not None:
        progress(1)
    versions = sorted({c.version for c in cells} | {v for v, _ in recorded}) or [current_version]
    reports = []
    async with contextlib.AsyncExitStack() as stack:
        pool = executor if executor is not None else await stack.enter_async_context(worker_pool())
        for version in versions:
            mine = [c for c in cells if c.version == version]
            counts = {g: n for (v, g), n in recorded.items() if v == version}
            run = _Run(services, entry, model, version, requested_by, (start, end), previous)
            reports.append(await run.audit(pool, mine, counts))
    if progress is not None:
        progress(1)
    return reports


@dataclass
class _Run:
    services: OutcomeServices
    entry: DecisionAuditFile
    model: str
    version: str
    requested_by: str
    window: tuple[float, float]
    previous: list[float]

    async def audit(self, pool: Executor, cells: list[Cell], recorded: dict[str, int]) -> OutcomeAuditReport:
        spec, ledger = self.entry.audit, self.services.audit
        audit_id = uuid.uuid4().hex
        described: dict[str, Any] = {
            "audit_id": audit_id, "audit": spec.name, "file": self.entry.path, "digest": self.entry.digest,
            "model": self.model, "version": self.version or None, "attribute": spec.attribute.name,
            "window": {"from": iso(self.window[0]), "to": iso(self.window[1])},
            "policy_version": self.services.policy_version, "requested_by": self.requested_by,
        }  # fmt: skip
        await ledger.commit("fairness.started", SUBJECT, {**described, "kind": "outcome"})
        with aborted_on_failure(ledger, audit_id):
            report = await self._judge(pool, cells, recorded, described)
            seq = await ledger.commit("fairness.audit", SUBJECT, report.ledger_data())
        return replace(report, seq=seq)

    async def _judge(self, pool: Executor, cells: list[Cell], recorded: dict[str, int],
                     described: dict[str, Any]) -> OutcomeAuditReport:  # fmt: skip
        spec = self.entry.audit
        t, stats = spec.thresholds, spec.statistics
        readable = [c for c in cells if c.prediction is not None]
        groups = sorted(set(recorded) | {c.group for c in cells})
        labelled = {g: sum(c.count for c in cells if c.group == g) for g in groups}
        unreadable = {g: sum(c.count for c in cells if c.group == g and c.prediction is None) for g in groups}
        computed: OutcomeComputed | None = None
        accuracy: Estimate | None = None
        seed = int(self.entry.digest[:13], 16)
        if readable:
            job = functools.partial(
                compute_outcomes,
                Cells([c.group for c in readable], [int(c.prediction or 0) for c in readable],
                      [c.outcome for c in readable], [c.count for c in readable]),
                seed=seed, resamples=stats.resamples, confidence=stats.confidence, min_group_size=t.min_group_size,
            )  # fmt: skip
            computed = await asyncio.get_running_loop().run_in_executor(pool, job)
            n = sum(c.count for c in readable)
            right = sum(c.count for c in readable if c.prediction == c.outcome)
            low, high = wilson(right, n, stats.confidence)
            accuracy = Estimate(right / n, low, high, stats.confidence, 0)
        baseline = self._baseline()
        drop = None
        if baseline is not None and accuracy is not None:
            b = baseline["accuracy"]
            drop = Estimate(b - accuracy.value, b - accuracy.high, b - accuracy.low, accuracy.confidence, 0)
        unread = {g: (unreadable[g], labelled[g]) for g in groups if labelled[g]}
        checks = judge_outcomes(computed.metrics if computed else None, drop, unread, t)
        return OutcomeAuditReport(
            **described,
            status=overall(c.status for c in checks),
            checks=checks,
            coverage=tuple(GroupCoverage(g, recorded.get(g, 0), labelled[g], unreadable[g]) for g in groups),
            accuracy=accuracy,
            baseline=baseline,
            metrics=computed.metrics if computed else None,
            reference=computed.reference if computed else None,
            thresholds=t.model_dump(),
            statistics={"confidence": stats.confidence, "resamples": stats.resamples, "seed": seed},
        )

    def _baseline(self) -> dict[str, Any] | None:
        configured = self.entry.audit.thresholds.accuracy_baseline
        if configured is not None:
            return {"accuracy": configured, "source": "policy"}
        if not self.previous:
            return None
        return {"accuracy": statistics.fmean(self.previous), "source": "previous audits", "audits": len(self.previous)}
