"""What every handler shares: the frozen settings and the router, built once per app."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.audit import AuditTrail
from gateway.fairness.service import FairnessService
from gateway.observability.metrics import Metrics
from gateway.pii.guard import PIIGuard
from gateway.pins import PinStore
from gateway.reports.service import ReportService
from gateway.routing import Router
from gateway.security import Security
from gateway.settings import Settings
from gateway.stats.service import StatsService
from gateway.ui.console import Console

REQUEST_ID = "gateway.request_id"


def request_id(scope: Any) -> str:
    """The id of this request, made on first use; it names the request in logs and errors."""
    rid = scope.get(REQUEST_ID)
    if rid is None:
        rid = scope[REQUEST_ID] = uuid.uuid4().hex
    return str(rid)


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(obj), status_code=status, headers=headers, media_type="application/json")


@dataclass(frozen=True)
class Gateway:
    settings: Settings
    router: Router
    security: Security
    audit: AuditTrail
    pii: PIIGuard
    stats: StatsService
    metrics: Metrics
    pins: PinStore
    fairness: FairnessService
    reports: ReportService
    ui: Console | None = None
    """The compliance officers' page (``ui.enabled``)."""

    def answer_headers(self, request: Request, model: str, fallback_used: bool) -> dict[str, str]:
        headers = {"x-request-id": request_id(request.scope), "x-gateway-model": model}
        if fallback_used:
            headers["x-gateway-fallback"] = "true"
        return headers
