"""``GET /v1/models``, ``GET /v1/models/{id}``, ``/healthz`` and ``/readyz``."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import NotFound
from gateway.security import PRINCIPAL
from gateway.settings import ModelRoute
from gateway.state import Gateway, json_response

_CREATED = 1_700_000_000
"""OpenAI requires ``created``; routes have no creation time, so all carry the same fixed one."""


def _model(route: ModelRoute) -> dict[str, Any]:
    return {"id": route.name, "object": "model", "created": _CREATED, "owned_by": route.owned_by}


async def _visible(request: Request) -> list[ModelRoute]:
    """Ready models that the caller may use."""
    gw: Gateway = request.app.state.gateway
    principal = request.scope[PRINCIPAL]
    return [r for r in await gw.router.offered()
            if gw.security.allowed(principal, r.name, "embed" if r.kind == "embedding" else "infer")]  # fmt: skip


async def list_models(request: Request) -> Response:
    return json_response({"object": "list", "data": [_model(r) for r in await _visible(request)]})


async def get_model(request: Request) -> Response:
    name = request.path_params["model"]
    for route in await _visible(request):
        if route.name == name:
            return json_response(_model(route))
    raise NotFound(f"The model {name!r} does not exist or you do not have access to it.", param="model")


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when the ledger writes, the PII analyzer answers, and every route can be served (by its own
    model or by its fallback).

    Anchoring lag is reported, not required: checkpoints queue while the chain is down.
    """
    gw: Gateway = request.app.state.gateway
    ready, servable = await gw.router.servable()
    ledger = gw.audit.status()
    pii = gw.pii.analyzer.ready
    ok = all(servable.values()) and ledger["ok"] and pii
    body = {"status": "ready" if ok else "not ready", "models": ready, "ledger": ledger, "pii": {"ready": pii}}
    return json_response(body, status=200 if ok else 503)
