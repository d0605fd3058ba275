"""``POST /v1/chat/completions`` and ``POST /v1/completions``.

Everything that can be decided is decided before the first byte: the body is validated, the
route resolved and the generation opened (with fallback) before the response starts. A failure
after that ends the stream with an error event, then ``[DONE]``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from backends.base import Generation, Usage
from gateway.api import render
from gateway.api.body import read_json, validate
from gateway.api.schemas import ChatCompletionRequest, CompletionRequest
from gateway.api.sse import DONE, EventStream, event
from gateway.api.ticket import Ticket, admit
from gateway.errors import GatewayError, InternalError, UnprocessableRequest
from gateway.routing import Answer
from gateway.security import Admission
from gateway.state import Gateway, json_response

log = logging.getLogger(__name__)


async def chat_completions(request: Request) -> Response | EventStream:
    gw: Gateway = request.app.state.gateway
    body = validate(ChatCompletionRequest, await read_json(request, gw.settings.server.max_body_bytes))
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    gen = body.generation("chat", body.effective_max_tokens(), messages=messages)
    return await _respond(request, gw, render.CHAT, body.model, gen, body.include_usage, "/v1/chat/completions")


async def completions(request: Request) -> Response | EventStream:
    gw: Gateway = request.app.state.gateway
    body = validate(CompletionRequest, await read_json(request, gw.settings.server.max_body_bytes))
    gen = body.generation("completion", body.max_tokens, prompt=_one_prompt(body))
    return await _respond(request, gw, render.COMPLETION, body.model, gen, body.include_usage, "/v1/completions")


def _one_prompt(body: CompletionRequest) -> str:
    """The single prompt of a legacy completion; the features the gateway cannot honour are 422."""
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise UnprocessableRequest("only one prompt per request is supported", param="prompt")
        prompt = prompt[0]
    for name, unsupported in (("echo", body.echo), ("logprobs", body.logprobs is not None),
                              ("best_of", (body.best_of or 1) > 1), ("suffix", body.suffix is not None)):  # fmt: skip
        if unsupported:
            raise UnprocessableRequest(f"{name} is not supported", param=name)
    return prompt


async def _respond(request: Request, gw: Gateway, shape: render.Shape, model: str, gen: Generation,
                   include_usage: bool, path: str) -> Response | EventStream:  # fmt: skip
    adm = await gw.security.admit(request, model, "infer", max_tokens=gen.max_tokens, stream=gen.stream)
    route = gw.router.resolve(model, "llm").route
    if gen.max_tokens is None and adm.limits.max_tokens is not None:
        gen = replace(gen, max_tokens=min(adm.limits.max_tokens, route.default_max_tokens))
    ticket = await admit(request, gw, adm, model, route=path, stream=gen.stream, max_tokens=gen.max_tokens)
    try:
        answer = await gw.router.generate(model, gen, lambda m: gw.security.allowed(adm.principal, m, "infer"))
    except GatewayError as exc:
        ticket.close("error", status=exc.status)
        raise
    headers = gw.answer_headers(request, answer.resolved.route.name, answer.fallback_used)
    rid = render.new_id(shape)
    if gen.stream:
        return EventStream(_events(shape, rid, answer, include_usage, adm, gw, ticket), headers)
    text: list[str] = []
    usage: Usage | None = None
    outcome, status = "cancelled", 499  # unless the loop below finishes or fails
    try:
        extra: dict[str, Any] = {}
        finish = None
        async for delta in _chain(answer):
            text.append(delta.text)
            if delta.extra:
                extra.update(delta.extra)
            finish = delta.finish_reason or finish
            usage = delta.usage or usage
        outcome, status = "ok", 200
    except GatewayError as exc:
        outcome, status = "error", exc.status
        raise
    finally:
        await answer.aclose()
        ticket.close(outcome, status=status, model=answer.resolved.route.name, fallback_used=answer.fallback_used,
                     usage=usage, response="".join(text).encode() if outcome == "ok" else None)  # fmt: skip
    await gw.security.charge(adm, usage.total_tokens if usage else 0)
    obj = render.response(shape, rid, answer.resolved.route.name, "".join(text), finish, usage, extra)
    return json_response(obj, headers=headers)


async def _chain(answer: Answer) -> AsyncIterator[Any]:
    yield answer.first
    async for delta in answer.rest:
        yield delta


async def _events(shape: render.Shape, rid: str, answer: Answer, include_usage: bool, adm: Admission, gw: Gateway,
                  ticket: Ticket) -> AsyncIterator[bytes]:  # fmt: skip
    created = int(time.time())
    model = answer.resolved.route.name
    usage: Usage | None = None
    first = True
    text: list[str] = []
    outcome, status = "cancelled", 499  # the client went away, unless the stream ends or fails
    try:
        async for delta in _chain(answer):
            usage = delta.usage or usage
            text.append(delta.text)
            if delta.text or delta.extra or delta.finish_reason or first:
                yield event(render.chunk(shape, rid, created, model, delta, first=first))
                first = False
        if include_usage and usage is not None:
            yield event(render.chunk(shape, rid, created, model, None, usage_only=usage))
        outcome, status = "ok", 200
    except GatewayError as exc:
        outcome, status = "error", exc.status
        log.warning("stream %s failed after its first byte: %s", rid, exc.message)
        yield event(exc.body())
    except Exception:
        outcome, status = "error", 500
        log.exception("stream %s failed after its first byte", rid)
        yield event(InternalError(f"internal error in stream {rid}").body())
    finally:
        await answer.aclose()
        ticket.close(outcome, status=status, model=model, fallback_used=answer.fallback_used, usage=usage,
                     response="".join(text).encode() if outcome == "ok" else None)  # fmt: skip
        await gw.security.charge(adm, usage.total_tokens if usage else 0)
    yield DONE
