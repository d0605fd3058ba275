"""``create_app(settings)``: build everything once, serve the OpenAI-compatible API.

The one error handler lives here: a ``GatewayError`` renders itself; anything else becomes a
generic 500 that names the request id and nothing of the exception.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backends.base import Backend
from backends.openai_http import OpenAIHTTPBackend
from backends.triton import TritonBackend
from gateway.api import embeddings, generate, models
from gateway.errors import GatewayError, InternalError, MethodNotAllowed, NotFound
from gateway.routing import Router
from gateway.settings import OpenAIBackendSettings, Settings
from gateway.state import Gateway, json_response, request_id

log = logging.getLogger(__name__)

BackendFactory = Callable[[Settings], dict[str, Backend]]


def build_backends(settings: Settings) -> dict[str, Backend]:
    backends: dict[str, Backend] = {}
    for name, cfg in settings.backends.items():
        if isinstance(cfg, OpenAIBackendSettings):
            backends[name] = OpenAIHTTPBackend(
                name,
                cfg.base_url,
                api_key=cfg.api_key.get_secret_value() if cfg.api_key else None,
                timeout_s=cfg.timeout_s,
                connect_timeout_s=cfg.connect_timeout_s,
                max_connections=cfg.max_connections,
            )
        else:
            url = settings.local_triton_url() if cfg.url == "embedded" else cfg.url
            backends[name] = TritonBackend(name, url, timeout_s=cfg.timeout_s, connect_timeout_s=cfg.connect_timeout_s)
    return backends


def _error_response(request: Request, exc: GatewayError) -> Response:
    headers = {"x-request-id": request_id(request.scope), **exc.headers}
    return json_response(exc.body(), status=exc.status, headers=headers)


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return _error_response(request, exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return _error_response(request, MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}"))
    if exc.status_code == 404:
        return _error_response(request, NotFound(f"no route {request.url.path}", code="not_found"))
    err = GatewayError(str(exc.detail))
    err.status = exc.status_code
    return _error_response(request, err)


async def _unexpected(request: Request, exc: Exception) -> Response:
    rid = request_id(request.scope)
    log.exception("unexpected error in request %s", rid)
    return _error_response(request, InternalError(f"internal error; request id {rid}"))


def create_app(settings: Settings, *, backend_factory: BackendFactory = build_backends) -> Starlette:
    """The ASGI app. Backends are built in the lifespan and closed when it ends."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        backends = backend_factory(settings)
        try:
            app.state.gateway = Gateway(settings, Router(settings, backends))
            yield
        finally:
            for backend in backends.values():
                await backend.aclose()

    routes = [
        Route("/v1/chat/completions", generate.chat_completions, methods=["POST"]),
        Route("/v1/completions", generate.completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings.embeddings, methods=["POST"]),
        Route("/v1/models", models.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", models.get_model, methods=["GET"]),
        Route("/healthz", models.healthz, methods=["GET"]),
        Route("/readyz", models.readyz, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            GatewayError: _gateway_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
    )
