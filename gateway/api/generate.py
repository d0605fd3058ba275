"""``POST /v1/chat/completions`` and ``POST /v1/completions``.

Everything that can be decided is decided before the first byte: the body is validated, the
route resolved and the generation opened (with fallback) before the response starts. A failure
after that ends the stream with an error event, then ``[DONE]``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from backends.base import Delta, Generation, Usage
from gateway.api import render
from gateway.api.body import read_json, validate
from gateway.api.schemas import ChatCompletionRequest, CompletionRequest
from gateway.api.sse import DONE, EventStream, event
from gateway.api.ticket import Ticket, admit
from gateway.errors import GatewayError, InternalError, UnprocessableRequest
from gateway.pii.guard import StreamFilter, chunks_with_timer, counts_json
from gateway.pii.redact import Counts
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
    subject = adm.principal.subject
    engine = gw.security.policy.engine
    rules = engine.pii(adm.principal, model)
    conversation = request.headers.get("x-conversation-id")
    gen, decision = gw.fairness.recorder.expect(model, request.headers, gen)  # a decision model's audit attribute
    gen, found, vault = await gw.pii.redact_request(gen, rules, subject, conversation)
    ticket = await admit(request, gw, adm, model, route=path, stream=gen.stream, max_tokens=gen.max_tokens,
                         pii=counts_json(found))  # fmt: skip
    ticket.decision = decision
    try:
        # A fallback serves only if the caller may use it and its PII rules are the same: the request was
        # redacted, and the answer will be, by the requested model's rules.
        answer = await gw.router.generate(model, gen, lambda m: gw.security.allowed(adm.principal, m, "infer")
                                          and engine.pii(adm.principal, m) == rules)  # fmt: skip
    except GatewayError as exc:
        ticket.close("error", status=exc.status)
        raise
    ticket.delta(answer.first)
    headers = gw.answer_headers(request, answer.resolved.route.name, answer.fallback_used)
    rid = render.new_id(shape)
    if gen.stream:
        filt = gw.pii.stream(rules, subject, vault)
        return EventStream(_events(shape, rid, answer, include_usage, adm, gw, ticket, filt), headers)
    text = ""
    usage: Usage | None = None
    found_out: Counts = Counter()
    outcome, status = "cancelled", 499  # unless the loop below finishes or fails
    try:
        pieces: list[str] = []
        extra: dict[str, Any] = {}
        finish = None
        async for delta in _chain(answer, ticket):
            pieces.append(delta.text)
            if delta.extra:
                extra.update(delta.extra)
            finish = delta.finish_reason or finish
            usage = delta.usage or usage
        text, shown, found_out = await gw.pii.answer("".join(pieces), extra or None, rules, subject, vault)
        await ticket.decided(text, answer.resolved)
        extra = shown or {}
        outcome, status = "ok", 200
    except GatewayError as exc:
        outcome, status = "error", exc.status
        raise
    finally:
        await answer.aclose()
        ticket.close(outcome, status=status, model=answer.resolved.route.name, fallback_used=answer.fallback_used,
                     usage=usage, response=text.encode() if outcome == "ok" else None,
                     pii=counts_json(found_out))  # fmt: skip
    await gw.security.charge(adm, usage.total_tokens if usage else 0)
    obj = render.response(shape, rid, answer.resolved.route.name, text, finish, usage, extra)
    return json_response(obj, headers=headers)


async def _chain(answer: Answer, ticket: Ticket) -> AsyncIterator[Any]:
    """The answer's deltas, each noted on the ticket (the first one already is)."""
    yield answer.first
    async for delta in answer.rest:
        yield ticket.delta(delta)


IDLE_FLUSH_S = 0.25
"""A streamed answer that pauses this long releases what its hold-back window already knows is safe."""


async def _events(shape: render.Shape, rid: str, answer: Answer, include_usage: bool, adm: Admission, gw: Gateway,
                  ticket: Ticket, filt: StreamFilter) -> AsyncIterator[bytes]:  # fmt: skip
    created = int(time.time())
    model = answer.resolved.route.name
    usage: Usage | None = None
    first = True
    sent: list[str] = []
    outcome, status = "cancelled", 499  # the client went away, unless the stream ends or fails
    timed = chunks_with_timer(_chain(answer, ticket), IDLE_FLUSH_S)
    try:
        async for delta in timed:
            if delta is None:  # the upstream is quiet: release what is already safe
                text, extra = await filt.finish(safe=True)
                out = Delta(text=text, extra=extra)
            else:
                usage = delta.usage or usage
                out = await _filtered(delta, filt)
            sent.append(out.text)
            if out.text or out.extra or out.finish_reason or first:
                yield event(render.chunk(shape, rid, created, model, out, first=first))
                first = False
        text, extra = await filt.finish()
        if text or extra:  # the upstream ended without a finish reason
            sent.append(text)
            yield event(render.chunk(shape, rid, created, model, Delta(text=text, extra=extra)))
        if include_usage and usage is not None:
            yield event(render.chunk(shape, rid, created, model, None, usage_only=usage))
        await ticket.decided("".join(sent), answer.resolved)
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
        # The ledger entry first: nothing after it may keep the request from being recorded.
        ticket.close(outcome, status=status, model=model, fallback_used=answer.fallback_used, usage=usage,
                     response="".join(sent).encode() if outcome == "ok" else None,
                     pii=counts_json(filt.counts))  # fmt: skip
        await timed.aclose()  # stops the pending read of the upstream, so that it can be closed
        await answer.aclose()
        await gw.security.charge(adm, usage.total_tokens if usage else 0)
    yield DONE


async def _filtered(delta: Delta, filt: StreamFilter) -> Delta:
    """``delta`` as the caller may see it: every text field through its hold-back window."""
    text, extra = await filt.delta(delta.text, delta.extra)
    if delta.finish_reason:
        tail, rest = await filt.finish()
        text += tail
        if rest:
            extra = _merge(extra or {}, rest)
    return Delta(text=text, finish_reason=delta.finish_reason, usage=delta.usage, extra=extra)


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two partial deltas as one: strings concatenate, tool-call lists append, objects merge."""
    out = dict(a)
    for key, value in b.items():
        old = out.get(key)
        if isinstance(old, str) and isinstance(value, str):  # noqa: SIM114 - one branch per type, for mypy
            out[key] = old + value
        elif isinstance(old, list) and isinstance(value, list):
            out[key] = old + value
        elif isinstance(old, dict) and isinstance(value, dict):
            out[key] = _merge(old, value)
        else:
            out[key] = value
    return out
