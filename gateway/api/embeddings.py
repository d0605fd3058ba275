"""``POST /v1/embeddings``."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from backends.base import Usage
from gateway.api import render
from gateway.api.body import read_json, validate
from gateway.api.schemas import EmbeddingRequest
from gateway.api.ticket import admit
from gateway.errors import GatewayError, UnprocessableRequest
from gateway.pii.guard import counts_json
from gateway.state import Gateway, json_response


async def embeddings(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    body = validate(EmbeddingRequest, await read_json(request, gw.settings.server.max_body_bytes))
    inputs = [body.input] if isinstance(body.input, str) else list(body.input)
    if any(not text for text in inputs):
        raise UnprocessableRequest("input must not contain empty strings", param="input")
    adm = await gw.security.admit(request, body.model, "embed")
    engine = gw.security.policy.engine
    rules = engine.pii(adm.principal, body.model)
    inputs, found = await gw.pii.redact_texts(inputs, rules, adm.principal.subject, None)
    ticket = await admit(request, gw, adm, body.model, route="/v1/embeddings", inputs=len(inputs),
                         pii=counts_json(found))  # fmt: skip
    try:
        resolved, result, fallback_used = await gw.router.embed(
            body.model,
            inputs,
            # a fallback only with the same PII rules: the inputs were redacted by the requested model's
            lambda m: gw.security.allowed(adm.principal, m, "embed") and engine.pii(adm.principal, m) == rules,
        )
    except GatewayError as exc:
        ticket.close("error", status=exc.status)
        raise
    await gw.security.charge(adm, result.prompt_tokens)
    served: dict[str, Any] = {
        "model": resolved.route.name,
        "fallback_used": fallback_used,
        "usage": Usage(result.prompt_tokens, 0),
    }
    dim = len(result.vectors[0]) if result.vectors else 0
    if body.dimensions is not None and body.dimensions != dim:
        ticket.close("error", status=422, **served)
        raise UnprocessableRequest(
            f"model {resolved.route.name!r} produces {dim} dimensions, not {body.dimensions}", param="dimensions"
        )
    ticket.close("ok", **served)
    obj = render.embeddings(resolved.route.name, result, body.encoding_format)
    return json_response(obj, headers=gw.answer_headers(request, resolved.route.name, fallback_used))
