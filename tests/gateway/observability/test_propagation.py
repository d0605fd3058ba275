"""W3C trace context sent on to the backends: a ``traceparent`` HTTP header to an OpenAI-compatible upstream and
gRPC metadata to Triton, naming the request's trace (its ``x-trace-id``) and, with tracing on, the span the call is
made in as parent; with tracing off, a random parent and the not-sampled flag."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tritonclient.grpc import service_pb2_grpc

from gateway.observability.tracing import TRACE_ID, backend_headers
from gateway.settings import Settings
from tests.conftest import POLICIES, create_app, in_process, make_settings, new_key
from tests.serving import serve

CHAT = "/v1/chat/completions"
TRACE, PARENT = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


def _chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "a b c"}], "max_tokens": 3, **extra}


def _call_parents(spans: tuple[ReadableSpan, ...], trace_id: str) -> list[str]:
    """The ids of the spans the backend calls of trace ``trace_id`` were made in, in order: each try's first-byte
    wait for a generation, the backend span for embeddings."""
    mine = sorted((s for s in spans if s.context and format(s.context.trace_id, "032x") == trace_id),
                  key=lambda s: s.start_time or 0)  # fmt: skip
    tries = [s for s in mine if s.name == "gateway.backend.first_byte"] or [
        s for s in mine if s.name == "gateway.backend"
    ]
    return [format(s.context.span_id, "016x") for s in tries if s.context]


def _check(sent: list[dict[str, str]], trace_id: str, parents: list[str] | None) -> None:
    """Each call's ``traceparent`` names ``trace_id``: with ``parents`` (tracing on), those span ids in order,
    sampled; without, a random not-sampled parent per call. No ``tracestate`` is sent."""
    assert sent and all("tracestate" not in headers for headers in sent)
    fields = [headers["traceparent"].split("-") for headers in sent]
    assert all(len(f) == 4 and f[:2] == ["00", trace_id] for f in fields), fields
    if parents is not None:
        assert [f[2] for f in fields] == parents
        assert all(int(f[3], 16) & 1 for f in fields), "sampled (the SDK may also set Level 2's random-id bit)"
        return
    ids = [f[2] for f in fields]
    assert all(re.fullmatch("[0-9a-f]{16}", i) and i != "0" * 16 for i in ids) and len(set(ids)) == len(ids)
    assert {f[3] for f in fields} == {"00"}


class Upstream:
    """An OpenAI-compatible server keeping the headers of each POST: ``ok`` answers, ``flaky`` is unavailable on
    its first call, any model embeds."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        """(model, lower-cased headers) of each chat or embeddings call."""
        self.port = 0

    async def chat(self, request: web.Request) -> web.Response:
        model = (await request.json())["model"]
        self.seen.append((model, {k.lower(): v for k, v in request.headers.items()}))
        if model == "flaky" and sum(m == "flaky" for m, _ in self.seen) == 1:
            return web.json_response({"error": {"message": "loading"}}, status=503)
        return web.json_response({
            "id": "x", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        })  # fmt: skip

    async def embed(self, request: web.Request) -> web.Response:
        model = (await request.json())["model"]
        self.seen.append((model, {k.lower(): v for k, v in request.headers.items()}))
        return web.json_response({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1]}],
                                  "usage": {"prompt_tokens": 1}})  # fmt: skip

    def headers(self, model: str) -> list[dict[str, str]]:
        return [h for m, h in self.seen if m == model]


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", up.chat)
    app.router.add_post("/v1/embeddings", up.embed)
    async with serve(app) as up.port:
        yield up


@pytest.mark.parametrize("enabled", [True, False], ids=["tracing", "off"])
async def test_openai_upstream_gets_the_trace_context(tmp_path: Path, upstream: Upstream, enabled: bool) -> None:
    """Every upstream call carries a ``traceparent`` with the response's ``x-trace-id``: with tracing on, its parent
    is the span of that attempt (each retry its own); off, a random parent, not sampled. A caller's trace id is
    passed on, its ``tracestate`` is not."""
    backend = {"kind": "openai", "base_url": f"http://127.0.0.1:{upstream.port}/v1", "retries": 1}
    models = [{"name": m, "backend": "up"} for m in ("ok", "flaky", "caller")]
    settings = Settings.load(None, state_dir=tmp_path, local_triton={"enabled": False}, backends={"up": backend},
                             models=[*models, {"name": "emb", "backend": "up", "kind": "embedding"}],
                             policy={"dir": POLICIES, "watch": False}, ledger={"chain": {"enabled": False}},
                             tracing={"enabled": enabled})  # fmt: skip
    exporter = InMemorySpanExporter()
    async with in_process(create_app(settings, span_exporter=exporter), new_key(settings, "admin")) as c:
        ok = await c.post(CHAT, json=_chat("ok"))
        flaky = await c.post(CHAT, json=_chat("flaky"))
        emb = await c.post("/v1/embeddings", json={"model": "emb", "input": "a b c"})
        caller = await c.post(CHAT, json=_chat("caller"), headers={"traceparent": f"00-{TRACE}-{PARENT}-01",
                                                                   "tracestate": "vendor=value"})  # fmt: skip
    assert [r.status_code for r in (ok, flaky, emb, caller)] == [200, 200, 200, 200]
    assert caller.headers["x-trace-id"] == TRACE
    spans = exporter.get_finished_spans()
    assert bool(spans) is enabled
    for model, r, calls in (("ok", ok, 1), ("flaky", flaky, 2), ("emb", emb, 1), ("caller", caller, 1)):
        trace_id = r.headers["x-trace-id"]
        parents = _call_parents(spans, trace_id) if enabled else None
        assert parents is None or len(parents) == calls
        _check(upstream.headers(model), trace_id, parents)


def test_no_trace_context_outside_a_request() -> None:
    """Outside a request (a readiness probe in the background) there is no trace to name: no header."""
    assert backend_headers() == {}
    token = TRACE_ID.set(TRACE)
    try:
        (header,) = backend_headers().values()
    finally:
        TRACE_ID.reset(token)
    assert header.startswith(f"00-{TRACE}-") and header.endswith("-00")


class _Relay(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]  # generated, untyped
    """A real gRPC server in front of the session's Triton: keeps the metadata of each inference call and forwards
    every call the gateway makes to Triton."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._triton = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        self.calls: list[tuple[str, str, dict[str, str]]] = []
        """(method, model, metadata) of each ModelInfer and ModelStreamInfer call."""

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return await self._triton.ServerReady(request)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        return await self._triton.ModelReady(request)

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        return await self._triton.ModelConfig(request)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        self.calls.append(("ModelInfer", request.model_name, dict(context.invocation_metadata())))
        return await self._triton.ModelInfer(request)

    async def ModelStreamInfer(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        first = True

        async def requests() -> AsyncIterator[Any]:
            nonlocal first
            async for request in request_iterator:
                if first:
                    self.calls.append(("ModelStreamInfer", request.model_name, dict(context.invocation_metadata())))
                    first = False
                yield request

        async for response in self._triton.ModelStreamInfer(requests()):
            yield response


@pytest.fixture
async def relay(triton: Any) -> AsyncIterator[tuple[str, _Relay]]:
    """The relay on a loopback port, in this event loop: (its address, what it saw)."""
    async with grpc.aio.insecure_channel(triton.grpc_url) as channel:
        service = _Relay(channel)
        server = grpc.aio.server()
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(service, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            yield f"127.0.0.1:{port}", service
        finally:
            await server.stop(None)


@pytest.mark.triton
@pytest.mark.parametrize("enabled", [True, False], ids=["tracing", "off"])
async def test_triton_gets_the_trace_context_as_grpc_metadata(
    triton: Any, tmp_path: Path, relay: tuple[str, _Relay], enabled: bool
) -> None:
    """Unary inference (``echo``), a stream (``counter``, decoupled) and embeddings (``e5-small``) reach the real
    Triton, through a real gRPC server that keeps their metadata: each carries the same ``traceparent`` as an
    HTTP upstream gets."""
    address, service = relay
    models = [{"name": "echo", "backend": "relay"}, {"name": "counter", "backend": "relay"},
              {"name": "e5-small", "backend": "relay", "kind": "embedding"}]  # fmt: skip
    settings = make_settings(triton, tmp_path, backends={"relay": {"kind": "triton", "url": address, "timeout_s": 60}},
                             models=models, tracing={"enabled": enabled})  # fmt: skip
    exporter = InMemorySpanExporter()
    async with in_process(create_app(settings, span_exporter=exporter), new_key(settings, "admin")) as c:
        unary = await c.post(CHAT, json=_chat("echo"))
        stream = await c.post(CHAT, json=_chat("counter", stream=True))
        emb = await c.post("/v1/embeddings", json={"model": "e5-small", "input": "a b c"})
    assert [r.status_code for r in (unary, stream, emb)] == [200, 200, 200]
    assert unary.json()["choices"][0]["message"]["content"] and "tok2" in stream.text  # Triton answered
    assert [(method, model) for method, model, _ in service.calls] == [
        ("ModelInfer", "echo"), ("ModelStreamInfer", "counter"), ("ModelInfer", "e5-small"),
    ]  # fmt: skip
    spans = exporter.get_finished_spans()
    for (_, _, metadata), r in zip(service.calls, (unary, stream, emb), strict=True):
        trace_id = r.headers["x-trace-id"]
        _check([metadata], trace_id, _call_parents(spans, trace_id) if enabled else None)
