"""The probe requests of an audit: each one a real request's path, less HTTP.

The fairness auditor's identity (a service principal that holds no credential) is authorized for ``infer`` on
the model by the Casbin policy, the ``request.admitted`` entry is durable before the backend is called, the
route's backend answers through ``Router.generate``, and ``request.completed`` records the outcome. Two
differences, both on purpose:

- **No PII redaction.** Probe prompts are synthetic text from the policy folder, and the names, pronouns and
  ages in them are the very thing under test: Presidio would replace "Lakisha Washington" and "Emily Walsh"
  by the same ``<PERSON>``, every variant would be identical, and the audit would pass whatever the model
  does. Each entry says ``redaction: skipped (synthetic probe)``; the probe set's digest says what was sent.
- **No fallback.** An audit measures one model; a fallback answering some variants would mix two.

Requests run ``concurrency`` at a time; a request the backend fails is recorded and answered with None (the
runner counts it), while a policy denial or a ledger failure stops them all.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from backends.base import Generation, Usage
from gateway.audit import AuditSink
from gateway.authz.store import PolicyStore
from gateway.errors import UpstreamError
from gateway.fairness.plan import Variant
from gateway.fairness.probeset import ProbeSet
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
class Run:
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


async def ask_all(
    run: Run, variants: Sequence[Variant], concurrency: int, progress: Callable[[int], None] | None
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
