"""The ASGI middleware that gives every HTTP request a W3C trace id, and a server span when tracing is on.

The trace id is the caller's when it sent a valid ``traceparent`` header (its trace continues here; its sampled
flag decides for it), else a new random one. It is the request's ``TRACE_ID`` (its ledger entries and log lines
carry it) and the response's ``x-trace-id`` header, whether tracing is on or not: the caller, the ledger and the
logs then name the same trace, and a caller that traces its own side can find the gateway's decisions on a request.
The id is the caller's to choose, so it correlates; it proves nothing (``x-request-id`` and the ledger's seq are
ours).

With tracing on, the request is a SERVER span named ``METHOD route-template`` (``GET /v1/models/{model:path}``,
just ``GET`` for a path no route matches: never the raw path), with bounded attributes only: the method, the
route template, the status code, the gateway's request id and, for errors, the error code the one error handler
answered with. No client address, user agent, query or header. A 5xx is an error on the span; a 4xx is the
caller's and is not (OpenTelemetry's HTTP conventions). While the span records, the request's tracer is
``TRACER``, so the steps of the request path make child spans (``tracing.span``); a trace that is not sampled
costs them nothing.
"""

from __future__ import annotations

import random
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind, get_current_span, set_span_in_context
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.observability.middleware import ERROR_CODE
from gateway.observability.tracing import PROPAGATOR, TRACE_ID, TRACER, Tracing, failed
from gateway.state import request_id

HEADER = b"x-trace-id"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})


def _carrier(scope: Scope) -> dict[str, str] | None:
    """The request's first ``traceparent`` header, or None. ``tracestate`` is dropped, as W3C Trace Context lets a
    participant do: its values are the caller's free text, and would reach the collector with every span."""
    for key, value in scope["headers"]:
        if key == b"traceparent":
            return {"traceparent": value.decode("latin-1")}
    return None


def incoming_trace_id(scope: Scope) -> str | None:
    """The trace id of the request's ``traceparent`` when it is a valid one (W3C Trace Context), else None."""
    carrier = _carrier(scope)
    if carrier is None:
        return None
    ctx = get_current_span(PROPAGATOR.extract(carrier)).get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def _sending(send: Send, trace_id: str, note: list[int]) -> Send:
    header = (HEADER, trace_id.encode())

    async def send_with_id(message: Message) -> None:
        if message["type"] == "http.response.start":
            note.append(message["status"])
            message = {**message, "headers": [*message.get("headers", ()), header]}
        await send(message)

    return send_with_id


class Traced:
    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tracer = self.tracing.tracer
        if tracer is None:  # tracing off: the trace id only
            trace_id = incoming_trace_id(scope) or f"{random.getrandbits(128) or 1:032x}"
            token = TRACE_ID.set(trace_id)
            try:
                await self.app(scope, receive, _sending(send, trace_id, []))
            finally:
                TRACE_ID.reset(token)
            return
        carrier = _carrier(scope)
        parent = PROPAGATOR.extract(carrier) if carrier is not None else None
        method = scope["method"] if scope["method"] in _METHODS else "_OTHER"
        span = tracer.start_span(
            method if method != "_OTHER" else "HTTP", parent, SpanKind.SERVER,
            {"http.request.method": method, "url.scheme": scope.get("scheme", "http"),
             "network.protocol.version": scope.get("http_version", "1.1"), "gateway.request_id": request_id(scope)},
            record_exception=False, set_status_on_exception=False,
        )  # fmt: skip
        trace_id = format(span.get_span_context().trace_id, "032x")
        tokens = (otel_context.attach(set_span_in_context(span, parent)), TRACE_ID.set(trace_id),
                  TRACER.set(tracer if span.is_recording() else None))  # fmt: skip
        status: list[int] = []
        try:
            await self.app(scope, receive, _sending(send, trace_id, status))
        except BaseException as exc:
            failed(span, exc)
            raise
        finally:
            TRACER.reset(tokens[2])
            TRACE_ID.reset(tokens[1])
            otel_context.detach(tokens[0])
            _finish(span, scope, method, status[0] if status else 500)


def _finish(span: Any, scope: Scope, method: str, status: int) -> None:
    """Name the span by its route template and add what the answer was; end it."""
    if not span.is_recording():
        return
    path = getattr(scope.get("route"), "path", None)
    if path:
        span.update_name(f"{method if method != '_OTHER' else 'HTTP'} {path}")
        span.set_attribute("http.route", path)
    span.set_attribute("http.response.status_code", status)
    code = scope.get(ERROR_CODE)
    if code is not None:
        span.set_attribute("gateway.error_code", code)
    if status >= 500 and span.status.is_unset:
        failed(span, code or str(status))
    span.end()
