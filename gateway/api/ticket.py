"""The ledger's view of one request: admitted (durable before any backend call), then completed.

``admit`` writes ``request.admitted`` and waits until it is durable, so no request reaches a
backend without a durable trace. ``Ticket.close`` queues ``request.completed`` with the outcome,
the served model, token counts, latency and a keyed digest of the response; the bodies
themselves are never stored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from backends.base import Usage
from gateway.api.body import RAW_BODY
from gateway.security import Admission
from gateway.state import Gateway, request_id


@dataclass(slots=True)
class Ticket:
    gw: Gateway
    subject: str
    request_id: str
    seq: int
    started: float = field(default_factory=time.perf_counter)
    closed: bool = False

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


async def admit(request: Request, gw: Gateway, adm: Admission, model: str, **details: Any) -> Ticket:
    """Write the durable ``request.admitted`` entry; only then may the request go to a backend."""
    rid = request_id(request.scope)
    data = {"request_id": rid, "model": model, "roles": sorted(adm.principal.roles), **details,
            "request_digest": gw.audit.digest(request.scope.get(RAW_BODY, b""))}  # fmt: skip
    seq = await gw.audit.commit("request.admitted", adm.principal.subject, data)
    return Ticket(gw, adm.principal.subject, rid, seq)
