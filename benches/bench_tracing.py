"""CPU cost of tracing on the request path, per request, off and on.

    python -m benches.bench_tracing [--requests N]

A chat request costs the gateway ~0.65 ms of CPU (benches/bench_overhead.py). This replays what tracing adds to
one chat request, N times, and reports CPU time per request (``time.process_time``, which counts every thread of
the process, so the batch processor's exporting thread too; best of 5 runs):

- ``off``: the trace-id middleware (``Traced``: a new trace id, the ``x-trace-id`` header, the context variable)
  around an app that runs the chat request's nine ``span()`` blocks (authn, authz twice, rate limit, request
  redaction, ledger commit, backend attempt and its first-byte wait, answer redaction) with their attributes,
  minus the same app without spans and middleware;
- ``off, with a caller's traceparent``: the same, parsing a W3C ``traceparent`` header;
- ``on``: tracing enabled, sampled: the server span and the nine child spans, ended and handed to the SDK's
  batch processor, whose exporter drops them;
- ``on, not sampled``: tracing enabled, the trace not sampled (``sample_ratio``): a non-recording server span,
  and the child spans are the no-op ones;
- ``OTLP encoding``: turning one request's ten spans into the OTLP protobuf request, as the OTLP exporters do
  on their thread before sending (the network send is not counted).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from benches._procs import best_cpu
from gateway.observability.traced import Traced
from gateway.observability.tracing import Tracing, span
from gateway.settings import TracingSettings

ROUTE = SimpleNamespace(path="/v1/chat/completions")
HEADERS = [(b"host", b"gateway"), (b"content-type", b"application/json"), (b"authorization", b"Bearer gk_x")]
TRACEPARENT = (b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")


class _Dropped(SpanExporter):
    """Counts what it is given and sends nothing."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


async def _reply(scope: Any, send: Any) -> None:
    scope["route"] = ROUTE
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}", "more_body": False})


async def _bare(scope: Any, receive: Any, send: Any) -> None:
    await _reply(scope, send)


async def _chat(scope: Any, receive: Any, send: Any) -> None:
    """The chat request path's spans, with the attributes the gateway gives them (built whether or not traced)."""
    with span("gateway.authn") as s:
        s.set_attribute("gateway.authn.kind", "apikey")
    for obj in ("route:/v1/chat/completions", "model"):
        with span("gateway.authz", {"gateway.authz.action": "infer", "gateway.authz.object": obj}) as s:
            s.set_attribute("gateway.authz.allowed", True)
    with span("gateway.ratelimit"):
        pass
    with span("gateway.pii.request") as s:
        s.set_attribute("gateway.pii.findings", 2)
    with span("gateway.ledger.commit", {"gateway.ledger.kind": "request.admitted"}) as s:
        s.set_attribute("gateway.ledger.seq", 12345)
    backend = {"gateway.operation": "generate", "gateway.model": "model-1", "gateway.backend.name": "triton",
               "gen_ai.request.model": "model-1", "gateway.model.version": "", "gateway.fallback": False,
               "gateway.breaker.state": "closed"}  # fmt: skip
    with span("gateway.backend", backend), span("gateway.backend.first_byte", {"gateway.backend.try": 0}):
        pass
    with span("gateway.pii.answer", {"gateway.pii.stream": False}) as s:
        s.set_attribute("gateway.pii.findings", 0)
    await _reply(scope, send)


async def _sink(message: Any) -> None:
    return None


async def _receive() -> Any:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _asgi_many(n: int, app: Any, headers: list[tuple[bytes, bytes]]) -> None:
    for _ in range(n):
        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "scheme": "https",
                 "http_version": "1.1", "headers": headers}  # fmt: skip
        await app(scope, _receive, _sink)


def _asgi(n: int, app: Any, headers: list[tuple[bytes, bytes]]) -> Callable[[], None]:
    return lambda: asyncio.run(_asgi_many(n, app, headers))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    n = args.requests

    bare = best_cpu(_asgi(n, _bare, HEADERS))
    off = Tracing(TracingSettings())
    off_s = best_cpu(_asgi(n, Traced(_chat, off), HEADERS))
    off_parent_s = best_cpu(_asgi(n, Traced(_chat, off), [*HEADERS, TRACEPARENT]))

    dropped = _Dropped()
    # A queue that holds every span of a run: none may be dropped, or the figure would be too low.
    on = Tracing(TracingSettings(enabled=True, max_queue_size=20 * n), dropped)

    async def run_on() -> None:
        on.start()
        try:
            await _asgi_many(n, Traced(_chat, on), HEADERS)
        finally:
            await on.aclose()  # flushes: the exporting thread's work is inside the timing

    on_s = best_cpu(lambda: asyncio.run(run_on()))
    assert dropped.spans == 5 * n * 10, f"{dropped.spans} spans exported of {5 * n * 10}: some were dropped"

    unsampled = Tracing(TracingSettings(enabled=True, sample_ratio=0.0), dropped)

    async def run_unsampled() -> None:
        unsampled.start()
        try:
            await _asgi_many(n, Traced(_chat, unsampled), HEADERS)
        finally:
            await unsampled.aclose()

    unsampled_s = best_cpu(lambda: asyncio.run(run_unsampled()))

    memory = InMemorySpanExporter()
    sample = Tracing(TracingSettings(enabled=True), memory)

    async def one() -> None:
        sample.start()
        await _asgi_many(1, Traced(_chat, sample), HEADERS)
        await sample.aclose()

    asyncio.run(one())
    spans = memory.get_finished_spans()
    encode_s = best_cpu(lambda: [encode_spans(spans).SerializeToString() for _ in range(n)])

    per = 1e6 / n
    rows = [
        ("off (trace id, header, 9 no-op spans)", (off_s - bare) * per),
        ("off, with a caller's traceparent", (off_parent_s - bare) * per),
        ("on (server span + 9 child spans, batched)", (on_s - bare) * per),
        ("on, not sampled", (unsampled_s - bare) * per),
        (f"OTLP encoding of one request's {len(spans)} spans", encode_s * per),
    ]
    for name, us in rows:
        print(f"{name:<50} {us:7.2f} us/request")


if __name__ == "__main__":
    main()
