"""Run a probe set against a model: every variant through the gateway's backend path, then the metrics.

The requests (``gateway.fairness.send``) take a real request's path as the fairness auditor, without PII
redaction and without fallback (the reasons are there). A request that fails is counted as ``failed``; an
answer the outcome reader cannot read is counted as ``unparseable``; neither is dropped silently (the
``unread_share`` check fails an audit with too many). The metrics run in a worker process
(``gateway.fairness._compute``), then the thresholds (``gateway.fairness.verdict``), and the
``fairness.audit`` entry is committed to the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import replace
from typing import Any

from gateway.audit import AuditSink
from gateway.errors import GatewayError, PermissionDenied
from gateway.fairness._compute import Computed, Records, compute, worker_pool
from gateway.fairness.plan import Variant, expand
from gateway.fairness.probeset import ProbeSet, ProbeSetFile
from gateway.fairness.report import AttributeReport, GroupCounts, ProbeSetAudit
from gateway.fairness.send import AUDITOR, SUBJECT, AuditServices, Run, ask_all
from gateway.fairness.verdict import judge, overall
from gateway.security import authorize

__all__ = ["SUBJECT", "AuditServices", "plan", "run_audit"]


def plan(probes: ProbeSet, attributes: Sequence[str] | None = None) -> list[Variant]:
    """Every request of one audit of ``attributes`` (default all), attribute by attribute."""
    names = list(probes.attributes) if attributes is None else list(attributes)
    unknown = [a for a in names if a not in probes.attributes]
    if unknown:
        raise ValueError(f"probe set {probes.name!r} has no attribute {unknown[0]!r}")
    return [v for a in names for v in expand(probes, a)]


async def run_audit(
    services: AuditServices,
    entry: ProbeSetFile,
    model: str,
    *,
    requested_by: str,
    attributes: Sequence[str] | None = None,
    concurrency: int = 4,
    progress: Callable[[int], None] | None = None,
    executor: Executor | None = None,
) -> ProbeSetAudit:
    """Audit ``model`` with the probe set ``entry``; the result is also the ``fairness.audit`` ledger entry.

    ``progress`` is called with 1 after each request. ``executor`` runs the metrics (default: a worker process
    of this run's own). Raises NotFound or InvalidRequest for an unknown or non-generative model,
    PermissionDenied when the policy refuses the auditor (recorded), AuditUnavailable when the ledger cannot
    write: an audit fails closed, and a ``fairness.aborted`` entry records why when the ledger still can.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    probes, audit = entry.probes, services.audit
    variants = plan(probes, attributes)
    resolved = services.router.resolve(model, "llm")
    route = resolved.route
    audit_id = uuid.uuid4().hex
    await authorize(services.policy, audit, AUDITOR, f"model:{model}", "infer")
    cap = services.policy.engine.limits(AUDITOR).max_tokens
    if cap is not None and probes.sampling.max_tokens > cap:
        msg = f"permission denied: max_tokens above {cap} is not allowed for the fairness auditor"
        await audit.commit("authz.limit", SUBJECT, {"model": model, "refused": msg, "reason": "max_tokens"})
        raise PermissionDenied(msg, param="max_tokens")
    described: dict[str, Any] = {
        "audit_id": audit_id,
        "probe_set": probes.name,
        "file": entry.path,
        "digest": entry.digest,
        "model": model,
        "backend": route.backend,
        "backend_model": route.upstream_model,
        "version": resolved.target.version or None,  # the version in use: a run-time pin's, else the route's
        "requested_by": requested_by,
        "policy_version": services.policy.engine.version,
    }
    await audit.commit(
        "fairness.started",
        SUBJECT,
        {**described, "requests": len(variants), "attributes": sorted({v.attribute for v in variants})},
    )
    with aborted_on_failure(audit, audit_id):
        run = Run(services, probes, model, audit_id)
        answers = await ask_all(run, variants, min(concurrency, max(1, len(variants))), progress)
        async with contextlib.AsyncExitStack() as stack:
            pool = executor if executor is not None else await stack.enter_async_context(worker_pool())
            reports = [
                await _attribute(pool, probes, entry.digest, name, variants, answers)
                for name in dict.fromkeys(v.attribute for v in variants)
            ]
        stats = probes.statistics
        result = ProbeSetAudit(
            **described,
            requests=len(variants),
            status=overall(r.status for r in reports),
            attributes=tuple(reports),
            thresholds=probes.thresholds.model_dump(),
            statistics={"confidence": stats.confidence, "resamples": stats.resamples, "seed": _seed(entry.digest)},
        )
        seq = await audit.commit("fairness.audit", SUBJECT, result.ledger_data())
    return replace(result, seq=seq)


@contextlib.contextmanager
def aborted_on_failure(audit: AuditSink, audit_id: str) -> Iterator[None]:
    """An audit that does not finish (an error, a cancellation) is a ``fairness.aborted`` entry saying why, when
    the ledger can still write; the error goes on."""
    try:
        yield
    except BaseException as exc:
        with contextlib.suppress(GatewayError):
            audit.record("fairness.aborted", SUBJECT, {"audit_id": audit_id, "reason": _why(exc)})
        raise


def _why(exc: BaseException) -> str:
    if isinstance(exc, GatewayError):
        return exc.message
    if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt):
        return "cancelled"
    return f"internal error ({type(exc).__name__})"


def _seed(digest: str) -> int:
    """The bootstrap's seed: from the probe set's digest, so the same records always give the same intervals."""
    return int(digest[:13], 16)


async def _attribute(
    pool: Executor,
    probes: ProbeSet,
    digest: str,
    attribute: str,
    variants: Sequence[Variant],
    answers: Sequence[str | None],
) -> AttributeReport:
    """Read one attribute's answers, compute its metrics in the worker, and judge them."""
    reader = probes.outcome
    counts: dict[str, Counter[str]] = {g: Counter() for g in probes.attributes[attribute].groups}
    records = Records([], [], [], [])
    for v, text in zip(variants, answers, strict=True):
        if v.attribute != attribute:
            continue
        c = counts[v.group]
        c["requests"] += 1
        if text is None:
            c["failed"] += 1
            continue
        reading = reader.read(text)
        c["refused"] += reading.refused
        if reading.outcome is None:
            c["unparseable"] += 1
            continue
        c["read"] += 1
        c["selected"] += reading.outcome
        records.probe.append(v.probe)
        records.group.append(v.group)
        records.repetition.append(v.record_repetition)
        records.outcome.append(reading.outcome)
    computed: Computed | None = None
    if records.outcome:
        stats = probes.statistics
        job = functools.partial(
            compute,
            records,
            seed=_seed(digest),
            resamples=stats.resamples,
            confidence=stats.confidence,
            min_probes=probes.thresholds.min_probes,
        )
        computed = await asyncio.get_running_loop().run_in_executor(pool, job)
    unread = {g: (c["unparseable"] + c["failed"], c["requests"]) for g, c in counts.items()}
    checks = judge(computed.metrics if computed else None, unread, probes.thresholds)
    return AttributeReport(
        attribute=attribute,
        status=overall(c.status for c in checks),
        checks=checks,
        counts=tuple(
            GroupCounts(g, c["requests"], c["read"], c["selected"], c["refused"], c["unparseable"], c["failed"])
            for g, c in counts.items()
        ),
        metrics=computed.metrics if computed else None,
        reference=computed.reference if computed else None,
    )
