"""The ASGI middleware that counts and times every HTTP request and names it in logs.

It sets the request id (``gateway.state.request_id``) as the logging context for everything the request does,
and when the answer has ended counts it by route template (Starlette's ``route.path``, never the raw path:
``unmatched`` for paths no route matches), status class and, for errors, the OpenAI error code the one error
handler put in the scope (``ERROR_CODE``). An exception that escapes every handler is a 500.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.observability.logs import REQUEST_ID
from gateway.observability.metrics import UNMATCHED, Metrics
from gateway.state import request_id

STARTED = "gateway.started"
"""Scope key of the request's arrival (``time.perf_counter``), for time to first token."""
ERROR_CODE = "gateway.error_code"
"""Scope key of the error code the error handler answered with."""


class Instrumented:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = scope[STARTED] = time.perf_counter()
        token = REQUEST_ID.set(request_id(scope))
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        except BaseException:
            if not status:
                status, scope[ERROR_CODE] = 500, "internal_error"
            raise
        finally:
            self.metrics.in_flight.dec()
            route: Any = scope.get("route")
            path = getattr(route, "path", None) or UNMATCHED
            self.metrics.http_done(path, status or 500, scope.get(ERROR_CODE), time.perf_counter() - started)
            REQUEST_ID.reset(token)
