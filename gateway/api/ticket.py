"""The ledger's view of one request: admitted (durable before any backend call), then completed.

``admit`` writes ``request.admitted`` and waits until it is durable, so no request reaches a
backend without a durable trace. ``Ticket.close`` queues ``request.completed`` with the outcome,
the served model, token counts, latency and a keyed digest of the response; the bodies
themselves are never stored. The same moment updates the model metrics (``gateway.observability``):
time to first token and inter-token latency come from the times the generation path notes on the ticket.
A request to a decision model carries its pending decision record (``gateway.fairness.recorder``), which
``decided`` writes once the answer is complete.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from backends.base import Delta, Usage
from gateway.api.body import RAW_BODY
from gateway.fairness.recorder import Pending
from gateway.observability.middleware import STARTED
from gateway.observability.tracing import with_trace_id
from gateway.routing import Resolved
from gateway.security import Admission
from gateway.state import Gateway, request_id


@dataclass(slots=True)
class Ticket:
    gw: Gateway
    subject: str
    request_id: str
    seq: int
    model: str = ""
    """The model asked for (the answer may come from its fallback)."""
    arrived: float | None = None
    """When the request arrived (``time.perf_counter``), for time to first token."""
    started: float = field(default_factory=time.perf_counter)
    closed: bool = False
    first_at: float | None = None
    last_at: float | None = None
    deltas: int = 0
    refused: bool = False
    decision: Pending | None = None
    """The decision record to write for a decision model's answer (outcome audits)."""

    def delta(self, delta: Delta) -> Delta:
        """Count a generated delta (time is taken at the first and the last only: this runs per token)."""
        self.deltas += 1
        if self.first_at is None or delta.finish_reason is not None or delta.extra:
            self._note(delta)
        return delta

    def _note(self, delta: Delta) -> None:
        if self.first_at is None:
            self.first_at = time.perf_counter()
        if delta.finish_reason is not None:
            self.last_at = time.perf_counter()
        if delta.finish_reason == "content_filter" or (delta.extra and delta.extra.get("refusal")):
            self.refused = True

    async def decided(self, answer: str, resolved: Resolved) -> None:
        """Record the decision in the complete ``answer`` of ``resolved``'s model, for a decision model; raises
        AuditUnavailable when the record fails and its audit fails closed."""
        if self.decision is not None:
            await self.gw.fairness.recorder.record(self.decision, self.request_id, resolved.route.name,
                                                   resolved.target.version, answer)  # fmt: skip

    def close(self, outcome: str, *, status: int = 200, model: str | None = None, fallback_used: bool = False,
              usage: Usage | None = None, response: bytes | None = None,
              pii: dict[str, int] | None = None) -> None:  # fmt: skip
        """Record how the request ended: ``ok``, ``error`` or ``cancelled``. Only the first call counts."""
        if self.closed:
            return
        self.closed = True
        data: dict[str, Any] = {
            "request_id": self.request_id, "admitted_seq": self.seq, "outcome": outcome, "status": status,
            "latency_ms": round((time.perf_counter() - self.started) * 1000),
        }  # fmt: skip
        if model is not None:
            data["model"] = model
            data["fallback_used"] = fallback_used
        if usage is not None:
            data["prompt_tokens"] = usage.prompt_tokens
            data["completion_tokens"] = usage.completion_tokens
        if response is not None:
            data["response_digest"] = self.gw.audit.digest(response)
        if pii:
            data["pii"] = pii  # counts per kind and operator in the answer; never values
        self.gw.audit.record("request.completed", self.subject, data)
        first, n = self.first_at, self.deltas
        last = self.last_at or time.perf_counter()  # no finish delta: the stream was cut
        self.gw.metrics.model_done(
            self.model, model, outcome, fallback=fallback_used, usage=usage, refused=self.refused,
            ttft_s=first - self.arrived if first is not None and self.arrived is not None else None,
            itl_s=(last - first) / (n - 1) if first is not None and n > 1 else None,
        )  # fmt: skip


async def admit(request: Request, gw: Gateway, adm: Admission, model: str, **details: Any) -> Ticket:
    """Write the durable ``request.admitted`` entry; only then may the request go to a backend."""
    rid = request_id(request.scope)
    data = {"request_id": rid, "model": model, "roles": sorted(adm.principal.roles), **details,
            "request_digest": gw.audit.digest(request.scope.get(RAW_BODY, b""))}  # fmt: skip
    seq = await gw.audit.commit("request.admitted", adm.principal.subject, with_trace_id(data))
    return Ticket(gw, adm.principal.subject, rid, seq, model, request.scope.get(STARTED))
