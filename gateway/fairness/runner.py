"""Run a probe set against a model: every variant through the gateway's backend path, then the metrics.

The path of each probe request is a real request's, less HTTP: the fairness auditor's identity (a service
principal that holds no credential) is authorized for ``infer`` on the model by the Casbin policy, the
``request.admitted`` entry is durable before the backend is called, the route's backend answers through
``Router.generate``, and ``request.completed`` records the outcome. Two differences, both on purpose:

- **No PII redaction.** Probe prompts are synthetic text from the policy folder, and the names, pronouns and
  ages in them are the very thing under test: Presidio would replace "Lakisha Washington" and "Emily Walsh"
  by the same ``<PERSON>``, every variant would be identical, and the audit would pass whatever the model
  does. Each entry says ``redaction: skipped (synthetic probe)``; the probe set's digest says what was sent.
- **No fallback.** An audit measures one model; a fallback answering some variants would mix two.

Requests run ``concurrency`` at a time. A request that fails is recorded and counted as ``failed``; an answer
the outcome reader cannot read is counted as ``unparseable``; neither is dropped silently (the
``unread_share`` check fails an audit with too many). The metrics run in a worker process
(``gateway.fairness._compute``), then the thresholds (``gateway.fairness.verdict``), and the
``fairness.audit`` entry is committed to the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from backends.base import Generation, Usage
from gateway.audit import AuditSink
from gateway.authz.store import PolicyStore
from gateway.errors import GatewayError, PermissionDenied, UpstreamError
from gateway.fairness._compute import Computed, Records, compute, worker_pool
from gateway.fairness.plan import Variant, expand
from gateway.fairness.probeset import ProbeSet, ProbeSetFile
from gateway.fairness.report import AttributeReport, GroupCounts, ProbeSetAudit
from gateway.fairness.verdict import judge, overall
from gateway.identity.principal import Principal
from gateway.routing import Router
from gateway.security import authorize

if TYPE_CHECKING:
    from gateway.state import Gateway

log = logging.getLogger(__name__)

SUBJECT = "service:fairness-auditor"
AUDITOR = Principal(SUBJECT, "service", frozenset({"fairness-auditor"}), owner="fairness-auditor")
"""The identity probe requests are made as; the policy grants it ``infer`` on models (role fairness-auditor)."""
ROUTE = "fairness"
"""The ``route`` of probe requests in the ledger (real requests have ``/v1/...``)."""
REDACTION = "skipped (synthetic probe)"


class AuditLedger(AuditSink, Protocol):
    def digest(self, body: bytes) -> str:
        """The keyed digest of a body, as request entries carry it."""
        ...


@dataclass(frozen=True)
class AuditServices:
    """What an audit needs of the gateway: its router, its policy and its ledger."""

    router: Router
    policy: PolicyStore
    audit: AuditLedger

    @classmethod
    def of(cls, gw: Gateway) -> AuditServices:
        """The running gateway's."""
        return cls(gw.router, gw.security.policy, gw.audit)


def _no_fallback(model: str) -> bool:
    return False


@dataclass
class _Run:
    services: AuditServices
    probes: ProbeSet
    model: str
    audit_id: str

    def generation(self, v: Variant) -> Generation:
        s = self.probes.sampling
        return Generation(
            task="chat",
            messages=v.messages,
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            seed=v.seed,
        )

    async def ask(self, v: Variant) -> str | None:
        """One probe request, recorded like a real one; its answer, or None when the backend failed."""
        audit, gen = self.services.audit, self.generation(v)
        await authorize(self.services.policy, audit, AUDITOR, f"model:{self.model}", "infer")
        body = orjson.dumps(
            {
                "model": self.model,
                "messages": v.messages,
                "max_tokens": gen.max_tokens,
                "temperature": gen.temperature,
                "top_p": gen.top_p,
                "seed": gen.seed,
            },
            option=orjson.OPT_SORT_KEYS,
        )
        rid = uuid.uuid4().hex
        seq = await audit.commit(
            "request.admitted",
            SUBJECT,
            {
                "request_id": rid,
                "model": self.model,
                "roles": sorted(AUDITOR.roles),
                "route": ROUTE,
                "stream": False,
                "max_tokens": gen.max_tokens,
                "request_digest": audit.digest(body),
                "audit_id": self.audit_id,
                "redaction": REDACTION,
            },
        )
        started = time.perf_counter()
        outcome, status, text, usage, served = "cancelled", 499, None, None, None
        try:
            answer = await self.services.router.generate(self.model, gen, _no_fallback)
            served = answer.resolved.route.name
            try:
                pieces, usage = [answer.first.text], answer.first.usage
                async for delta in answer.rest:
                    pieces.append(delta.text)
                    usage = delta.usage or usage
            finally:
                await answer.aclose()
            text, outcome, status = "".join(pieces), "ok", 200
        except UpstreamError as exc:
            outcome, status = "error", exc.status
            log.warning("fairness audit %s: %s failed: %s", self.audit_id, v.probe, exc.message)
        finally:
            digest = None if text is None else audit.digest(text.encode())
            audit.record(
                "request.completed", SUBJECT, _completed(rid, seq, outcome, status, started, served, usage, digest)
            )
        return text


def _completed(
    rid: str,
    seq: int,
    outcome: str,
    status: int,
    started: float,
    served: str | None,
    usage: Usage | None,
    digest: str | None,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "request_id": rid,
        "admitted_seq": seq,
        "outcome": outcome,
        "status": status,
        "latency_ms": round((time.perf_counter() - started) * 1000),
    }
    if served is not None:
        data["model"], data["fallback_used"] = served, False
    if usage is not None:
        data["prompt_tokens"], data["completion_tokens"] = usage.prompt_tokens, usage.completion_tokens
    if digest is not None:
        data["response_digest"] = digest
    return data


async def _ask_all(
    run: _Run, variants: Sequence[Variant], concurrency: int, progress: Callable[[int], None] | None
) -> list[str | None]:
    """Every variant's answer, in order, ``concurrency`` requests at a time; the first error stops them all."""
    answers: list[str | None] = [None] * len(variants)
    pending = iter(range(len(variants)))

    async def worker() -> None:
        for i in pending:  # one shared iterator: each index is taken by exactly one worker
            answers[i] = await run.ask(variants[i])
            if progress is not None:
                progress(1)

    tasks = [asyncio.create_task(worker(), name=f"fairness-{run.audit_id}-{n}") for n in range(concurrency)]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return answers


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
        "version": route.version or None,
        "requested_by": requested_by,
        "policy_version": services.policy.engine.version,
    }
    await audit.commit(
        "fairness.started",
        SUBJECT,
        {**described, "requests": len(variants), "attributes": sorted({v.attribute for v in variants})},
    )
    try:
        run = _Run(services, probes, model, audit_id)
        answers = await _ask_all(run, variants, min(concurrency, max(1, len(variants))), progress)
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
    except BaseException as exc:
        with contextlib.suppress(GatewayError):
            audit.record("fairness.aborted", SUBJECT, {"audit_id": audit_id, "reason": _why(exc)})
        raise
    return replace(result, seq=seq)


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
