"""OpenTelemetry tracing: the span tree of a request, bounded attributes without PII, the caller's trace continued,
one trace id in the header, the ledger and the logs, off by default, and a real export over OTLP."""

from __future__ import annotations

import gzip
import io
import json
import logging
import re
import shutil
import threading
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import ValidationError

from gateway.observability.logs import JSONFormatter
from gateway.observability.traced import incoming_trace_id
from gateway.observability.tracing import TRACE_ID, Tracing
from gateway.settings import Settings, TracingSettings
from ledger.store import open_store
from tests.conftest import POLICIES, create_app, in_process, make_settings, new_key
from tests.gateway.observability.test_logs import CARD, EMAIL, IBAN, NAME, PII, SSN, _chat, _forms

CHAT = "/v1/chat/completions"
TRACE, PARENT = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
HEX32 = re.compile(r"^[0-9a-f]{32}$")

CHILDREN = {"gateway.authn", "gateway.authz", "gateway.ratelimit", "gateway.pii.request", "gateway.pii.answer",
            "gateway.ledger.commit", "gateway.backend", "gateway.backend.first_byte"}  # fmt: skip
"""Every name a child span may have: a closed set."""
ATTRIBUTES = {
    "http.request.method", "url.scheme", "network.protocol.version", "gateway.request_id", "http.route",
    "http.response.status_code", "gateway.error_code", "error.type", "gateway.authn.kind", "gateway.authz.action",
    "gateway.authz.object", "gateway.authz.allowed", "gateway.pii.findings", "gateway.pii.stream",
    "gateway.ledger.kind", "gateway.ledger.seq", "gateway.operation", "gateway.model", "gateway.backend.name",
    "gen_ai.request.model", "gateway.model.version", "gateway.fallback", "gateway.breaker.state",
    "gateway.backend.try",
}  # fmt: skip
"""Every attribute key a span may carry: a closed set, each with bounded values."""


def _settings(triton: Any, tmp_path: Path, **tracing: Any) -> Settings:
    """Test settings with tracing as given, and a policy that lets the ``user`` role call the test models."""
    folder = tmp_path / "policies"
    if not folder.exists():
        shutil.copytree(POLICIES, folder)
        with (folder / "policy.csv").open("a") as f:
            f.write("p, role:user, model:echo*, infer, allow\np, role:user, model:counter, infer, allow\n"
                    "p, role:user, model:broken*, infer, allow\n")  # fmt: skip
    return make_settings(triton, tmp_path, policy={"dir": folder, "watch": False}, tracing=tracing)


def _entries(settings: Settings) -> list[dict[str, Any]]:
    """The ledger's entries as ``{"seq", "kind", "actor", **data}``."""
    store = open_store(settings.ledger_store())
    try:
        bodies = [json.loads(b) for _, _, b in store.read(settings.ledger.origin)]
    finally:
        store.close()
    return [{"seq": e["seq"], "kind": e["kind"], "actor": e["actor"], **e["data"]} for e in bodies]


def _tid(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.trace_id, "032x")


def _children(spans: tuple[ReadableSpan, ...], parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def _server(spans: tuple[ReadableSpan, ...], trace_id: str) -> ReadableSpan:
    (server,) = [s for s in spans if s.kind == SpanKind.SERVER and _tid(s) == trace_id]
    return server


async def test_tracing_is_off_by_default_but_every_request_has_a_trace_id(triton: Any, tmp_path: Path) -> None:
    """Off by default: no span is made (even with an exporter given), yet each request gets a trace id in
    ``x-trace-id``, in its ledger entries and in its log lines; a caller's ``traceparent`` id is kept."""
    assert Settings().tracing.enabled is False
    settings = _settings(triton, tmp_path)
    exporter = InMemorySpanExporter()
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(JSONFormatter())
    routing_log = logging.getLogger("gateway.routing")
    routing_log.addHandler(handler)
    user = new_key(settings, "user")
    try:
        async with in_process(create_app(settings, span_exporter=exporter), user) as c:
            ok = await c.post(CHAT, json=_chat("echo", "hello"))
            fell_back = await c.post(CHAT, json=_chat("broken", "hello"))  # logs a warning: the fallback
            denied = await c.post(CHAT, json=_chat("smollm2-135m-instruct", "hi", max_tokens=100_000))
            refused = await c.post(CHAT, json=_chat("echo", "hi"), headers={"authorization": "Bearer gk_nope"})
            continued = await c.post(CHAT, json=_chat("echo", "hi"), headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
    finally:
        routing_log.removeHandler(handler)
    assert [r.status_code for r in (ok, fell_back, denied, refused, continued)] == [200, 200, 403, 401, 200]
    ids = [r.headers["x-trace-id"] for r in (ok, fell_back, denied, refused, continued)]
    assert all(HEX32.match(i) for i in ids) and len(set(ids)) == 5 and ids[4] == TRACE
    assert exporter.get_finished_spans() == ()
    entries = _entries(settings)
    admitted = [e["trace_id"] for e in entries if e["kind"] == "request.admitted"]
    assert admitted == [ids[0], ids[1], ids[4]]
    decisions = {e["trace_id"] for e in entries if e["kind"] == "authz.decision"}
    assert decisions == {ids[0], ids[1], ids[2], ids[4]}
    assert [e["trace_id"] for e in entries if e["kind"] == "authz.limit"] == [ids[2]]
    assert [e["trace_id"] for e in entries if e["kind"] == "authn.failed"] == [ids[3]]
    lines = [json.loads(line) for line in handler.stream.getvalue().splitlines()]  # type: ignore[attr-defined]
    assert lines and all(line["trace_id"] == ids[1] for line in lines)


async def test_chat_request_span_tree(triton: Any, tmp_path: Path) -> None:
    """A chat request is a server span named by its route template, with child spans for authn, authz, the rate
    limit, redaction of the request and of the answer, the durable ledger commit and the backend (its first-byte
    wait below it); its trace id is the one in ``x-trace-id`` and in the ``request.admitted`` entry."""
    settings = _settings(triton, tmp_path, enabled=True)
    exporter = InMemorySpanExporter()
    async with in_process(create_app(settings, span_exporter=exporter), new_key(settings, "user")) as c:
        r = await c.post(CHAT, json=_chat("echo", f"I am {NAME}, mail me at {EMAIL}"))
        s = await c.post(CHAT, json=_chat("echo", f"I am {NAME}, mail me at {EMAIL}", stream=True))
        e = await c.post("/v1/embeddings", json={"model": "e5-small", "input": [f"I am {NAME}"]})
    assert r.status_code == 200 and s.status_code == 200 and e.status_code == 200
    spans = exporter.get_finished_spans()  # exported on shutdown: the lifespan's end flushed the batch
    server = _server(spans, r.headers["x-trace-id"])
    assert server.name == "POST /v1/chat/completions" and server.parent is None
    assert server.attributes == {
        "http.request.method": "POST", "url.scheme": "http", "network.protocol.version": "1.1",
        "gateway.request_id": r.headers["x-request-id"], "http.route": "/v1/chat/completions",
        "http.response.status_code": 200,
    }  # fmt: skip
    assert server.status.status_code == StatusCode.UNSET
    children = _children(spans, server)
    assert [c.name for c in children] == [
        "gateway.authn", "gateway.authz", "gateway.authz", "gateway.ratelimit", "gateway.pii.request",
        "gateway.ledger.commit", "gateway.backend", "gateway.pii.answer",
    ]  # fmt: skip
    by = {c.name: c for c in children}
    assert by["gateway.authn"].attributes == {"gateway.authn.kind": "apikey"}
    assert [c.attributes for c in children if c.name == "gateway.authz"] == [
        {"gateway.authz.action": "infer", "gateway.authz.object": "route:/v1/chat/completions",
         "gateway.authz.allowed": True},
        {"gateway.authz.action": "infer", "gateway.authz.object": "model", "gateway.authz.allowed": True},
    ]  # fmt: skip
    assert by["gateway.pii.request"].attributes == {"gateway.pii.findings": 2}
    assert by["gateway.pii.answer"].attributes == {"gateway.pii.stream": False, "gateway.pii.findings": 0}
    entries = _entries(settings)
    (admitted,) = [
        e for e in entries if e["kind"] == "request.admitted" and e["request_id"] == r.headers["x-request-id"]
    ]
    assert admitted["trace_id"] == r.headers["x-trace-id"] == _tid(server)
    assert by["gateway.ledger.commit"].attributes == {"gateway.ledger.kind": "request.admitted",
                                                      "gateway.ledger.seq": admitted["seq"]}  # fmt: skip
    backend = by["gateway.backend"]
    assert backend.attributes == {
        "gateway.operation": "generate", "gateway.model": "echo", "gateway.backend.name": "triton",
        "gen_ai.request.model": "echo", "gateway.model.version": "", "gateway.fallback": False,
        "gateway.breaker.state": "closed",
    }  # fmt: skip
    assert [(c.name, c.attributes) for c in _children(spans, backend)] == [
        ("gateway.backend.first_byte", {"gateway.backend.try": 0})
    ]
    assert all(c.status.status_code == StatusCode.UNSET for c in children)
    # The streamed answer is redacted window by window, while the response is sent: still in the request's trace.
    streamed = _server(spans, s.headers["x-trace-id"])
    answer = [c for c in _children(spans, streamed) if c.name == "gateway.pii.answer"]
    assert answer and all(c.attributes["gateway.pii.stream"] is True for c in answer)
    embedded = _server(spans, e.headers["x-trace-id"])
    assert embedded.name == "POST /v1/embeddings"
    assert [(c.name, c.attributes.get("gateway.operation")) for c in _children(spans, embedded)] == [
        ("gateway.authn", None), ("gateway.authz", None), ("gateway.authz", None), ("gateway.ratelimit", None),
        ("gateway.pii.request", None), ("gateway.ledger.commit", None), ("gateway.backend", "embed"),
    ]  # fmt: skip


async def test_failures_are_recorded_by_code(triton: Any, tmp_path: Path) -> None:
    """A failed step's span has ``error.type`` and an error status naming the error's code; a fallback is a second
    backend span marked as such; a 5xx fails the server span, a 4xx (the caller's) does not."""
    settings = _settings(triton, tmp_path, enabled=True)
    exporter = InMemorySpanExporter()
    user = new_key(settings, "user")
    async with in_process(create_app(settings, span_exporter=exporter), user) as c:
        fell_back = await c.post(CHAT, json=_chat("broken", "hi"))
        failed = await c.post(CHAT, json=_chat("broken-alone", "hi"))
        denied = await c.post(CHAT, json=_chat("smollm2-135m-instruct", "hi", stream=False, max_tokens=100_000))
        wrong_method = await c.post("/admin/policy/status")
        refused = await c.post(CHAT, json=_chat("echo", "hi"), headers={"authorization": "Bearer gk_nope"})
    assert [r.status_code for r in (fell_back, failed, denied, refused)] == [200, 502, 403, 401]
    spans = exporter.get_finished_spans()

    backends = [
        c for c in _children(spans, _server(spans, fell_back.headers["x-trace-id"])) if c.name == "gateway.backend"
    ]
    assert [(b.attributes["gateway.model"], b.attributes["gateway.fallback"], b.attributes.get("error.type"))
            for b in backends] == [("broken", False, "bad_gateway"), ("counter", True, None)]  # fmt: skip
    assert backends[0].status.status_code == StatusCode.ERROR and backends[0].status.description == "bad_gateway"

    server = _server(spans, failed.headers["x-trace-id"])
    assert server.status.status_code == StatusCode.ERROR and server.attributes["error.type"] == "bad_gateway"
    assert server.attributes["http.response.status_code"] == 502

    server = _server(spans, denied.headers["x-trace-id"])
    assert (
        server.status.status_code == StatusCode.UNSET and server.attributes["gateway.error_code"] == "permission_denied"
    )
    assert server.attributes["http.response.status_code"] == 403

    server = _server(spans, wrong_method.headers["x-trace-id"])  # POST on a GET route: named by its template
    assert server.name == "POST /admin/policy/status" and server.attributes["http.response.status_code"] == 405

    server = _server(spans, refused.headers["x-trace-id"])
    (authn,) = _children(spans, server)
    assert authn.name == "gateway.authn" and authn.attributes["error.type"] == "invalid_api_key"
    assert [(c.name, c.attributes["gateway.ledger.kind"]) for c in _children(spans, authn)] == [
        ("gateway.ledger.commit", "authn.failed")
    ]
    assert all(not s.events for s in spans), "no exception is recorded as an event (its message may hold PII)"


async def test_no_pii_in_any_span(triton: Any, tmp_path: Path) -> None:
    """Requests full of personal data, through success and every error path, leave none of it in any span's
    name, attributes, status, events or trace state; every span name and attribute key is from a closed set."""
    settings = _settings(triton, tmp_path, enabled=True)
    exporter = InMemorySpanExporter()
    admin, user = new_key(settings, "admin"), new_key(settings, "user")
    text = f"I am {NAME}, mail me at {EMAIL}."
    statuses: list[int] = []
    async with in_process(create_app(settings, span_exporter=exporter), user) as c:

        async def call(method: str, path: str, **kwargs: Any) -> None:
            statuses.append((await c.request(method, path, **kwargs)).status_code)

        await call("POST", CHAT, json=_chat("echo", text))
        await call("POST", CHAT, json=_chat("echo", text, stream=True))
        await call("POST", CHAT, json=_chat("broken", text))
        await call("POST", CHAT, json=_chat("broken-alone", text))
        await call("POST", CHAT, json=_chat("echo", f"{text} My SSN is {SSN}."))
        await call("POST", CHAT, json=_chat("echo", f"{NAME}'s card: {CARD}"))
        bad_json = f'{{"model": "echo", "messages": [{{"content": "{EMAIL} {IBAN}"'
        await call("POST", CHAT, content=bad_json, headers={"content-type": "application/json"})
        await call("POST", CHAT, json={"model": "echo", "messages": f"{NAME} {EMAIL}"})
        await call("POST", "/v1/embeddings", json={"model": "e5-small", "input": [text, IBAN]})
        await call("POST", CHAT, json=_chat(NAME, text))  # a model named like a person: denied
        await call("POST", CHAT, json=_chat(EMAIL, text), headers={"authorization": f"Bearer {admin}"})  # not found
        await call("POST", CHAT, json=_chat("echo", text), headers={"authorization": f"Bearer {EMAIL}"})
        await call("GET", f"/v1/{EMAIL}")
        await call("GET", f"/v1/models/{NAME}")
        state = f"vendor={EMAIL},n={NAME.split()[0]}"  # the caller's free text: dropped
        await call("POST", CHAT, json=_chat("echo", text), headers={"traceparent": f"00-{TRACE}-{PARENT}-01",
                                                                    "tracestate": state})  # fmt: skip
        await call("POST", CHAT, json=_chat("echo", text), headers={"traceparent": f"00-{EMAIL}-{NAME}-01"})
    assert statuses == [200, 200, 200, 502, 403, 403, 400, 400, 200, 403, 404, 401, 404, 404, 200, 200]
    spans = exporter.get_finished_spans()
    assert len([s for s in spans if s.kind == SpanKind.SERVER]) == len(statuses)
    texts: list[str] = []
    for s in spans:
        assert (
            s.name in CHILDREN
            or re.fullmatch(r"(GET|POST) (/v1/[a-z/]+(\{model:path\})?)?", s.name)
            or s.name in ("GET", "POST")
        ), s.name
        assert set(s.attributes or {}) <= ATTRIBUTES, s.attributes
        assert all(isinstance(v, str | bool | int) for v in (s.attributes or {}).values())
        assert s.context is not None and not s.context.trace_state, "a caller's tracestate is dropped"
        texts += [s.name, s.status.description or "", *map(str, (s.attributes or {}).values())]
        texts += [str(e.attributes) + e.name for e in s.events] + [str(link.attributes) for link in s.links]
        texts += map(str, s.resource.attributes.values())
    for value in PII:
        for form in _forms(value):
            assert not [t for t in texts if form in t], f"{form!r} is in a span"


@pytest.mark.parametrize("enabled", [True, False], ids=["tracing", "off"])
async def test_traceparent_continues_the_callers_trace(triton: Any, tmp_path: Path, enabled: bool) -> None:
    """A valid ``traceparent`` continues the caller's trace: its trace id is in the header and the ledger, and the
    server span's remote parent is the caller's span; a malformed one starts a new trace."""
    settings = _settings(triton, tmp_path, enabled=enabled)
    exporter = InMemorySpanExporter()
    async with in_process(create_app(settings, span_exporter=exporter), new_key(settings, "user")) as c:
        r = await c.post(CHAT, json=_chat("echo", "hi"), headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
        bad = await c.post(CHAT, json=_chat("echo", "hi"), headers={"traceparent": f"00-{TRACE}-{'0' * 16}-01"})
    assert r.headers["x-trace-id"] == TRACE and bad.headers["x-trace-id"] not in (TRACE, "0" * 32)
    assert [e["trace_id"] for e in _entries(settings) if e["kind"] == "request.admitted"] == [
        TRACE,
        bad.headers["x-trace-id"],
    ]
    spans = exporter.get_finished_spans()
    if not enabled:
        assert spans == ()
        return
    server = _server(spans, TRACE)
    assert server.parent is not None and server.parent.is_remote and format(server.parent.span_id, "016x") == PARENT
    assert _server(spans, bad.headers["x-trace-id"]).parent is None


@pytest.mark.parametrize(("header", "expected"), [
    (f"00-{TRACE}-{PARENT}-01", TRACE),
    (f"00-{TRACE}-{PARENT}-00", TRACE),  # not sampled by the caller: still its trace
    (f"  00-{TRACE}-{PARENT}-01", TRACE),
    (f"01-{TRACE}-{PARENT}-01-future", TRACE),  # a later version's extra fields are allowed
    (f"00-{TRACE}-{PARENT}-01-extra", None),  # but not in version 00
    (f"ff-{TRACE}-{PARENT}-01", None),
    (f"00-{'0' * 32}-{PARENT}-01", None),
    (f"00-{TRACE}-{'0' * 16}-01", None),
    (f"00-{TRACE.upper()}-{PARENT}-01", None),
    (f"00-{TRACE[:-1]}-{PARENT}-01", None),
    ("John Smith", None),
    ("", None),
])  # fmt: skip
def test_incoming_trace_id(header: str, expected: str | None) -> None:
    """W3C Trace Context parsing of ``traceparent``: a valid header gives its trace id, anything else none."""
    scope = {"headers": [(b"traceparent", header.encode())]}
    assert incoming_trace_id(scope) == expected


async def test_sampling_follows_the_ratio_and_the_callers_flag(triton: Any, tmp_path: Path) -> None:
    """With ``sample_ratio: 0`` a new trace records no span (it still has an id); a caller's sampled trace is
    recorded, its unsampled one is not (parent-based sampling)."""
    settings = _settings(triton, tmp_path, enabled=True, sample_ratio=0.0)
    exporter = InMemorySpanExporter()
    other = "5bf92f3577b34da6a3ce929d0e0e4736"
    async with in_process(create_app(settings, span_exporter=exporter), new_key(settings, "user")) as c:
        new = await c.post(CHAT, json=_chat("echo", "hi"))
        sampled = await c.post(CHAT, json=_chat("echo", "hi"), headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
        unsampled = await c.post(CHAT, json=_chat("echo", "hi"), headers={"traceparent": f"00-{other}-{PARENT}-00"})
    assert HEX32.match(new.headers["x-trace-id"])
    assert (sampled.headers["x-trace-id"], unsampled.headers["x-trace-id"]) == (TRACE, other)
    spans = exporter.get_finished_spans()
    assert {_tid(s) for s in spans} == {TRACE}
    assert "gateway.backend" in {s.name for s in spans}


class _HTTPCollector(BaseHTTPRequestHandler):
    """A collector's OTLP/HTTP endpoint: accepts ``POST /v1/traces`` (protobuf, maybe gzipped) and keeps it."""

    received: list[tuple[str, dict[str, str], trace_service_pb2.ExportTraceServiceRequest]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.received.append((self.path, headers, trace_service_pb2.ExportTraceServiceRequest.FromString(body)))
        out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: Any) -> None:
        pass


class _GRPCCollector(trace_service_pb2_grpc.TraceServiceServicer):
    """A collector's OTLP/gRPC endpoint: the TraceService ``Export`` call."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, str], trace_service_pb2.ExportTraceServiceRequest]] = []

    def Export(self, request: Any, context: Any) -> Any:
        self.received.append(("Export", {k: v for k, v in context.invocation_metadata()}, request))
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture(params=["http", "grpc"])
def collector(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, list[Any]]]:
    """A real OTLP receiver on a loopback port: (protocol, endpoint, what it received)."""
    if request.param == "http":
        handler = type("Handler", (_HTTPCollector,), {"received": []})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield "http", f"http://127.0.0.1:{server.server_address[1]}/v1/traces", handler.received
        finally:
            server.shutdown()
            server.server_close()
            thread.join(10)
        return
    service = _GRPCCollector()
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(service, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    try:
        yield "grpc", f"http://127.0.0.1:{port}", service.received
    finally:
        grpc_server.stop(None).wait(10)


async def test_exports_over_otlp_to_a_real_receiver(triton: Any, tmp_path: Path,
                                                    collector: tuple[str, str, list[Any]]) -> None:  # fmt: skip
    """The configured OTLP exporter sends the spans, with the configured headers and resource, to a real receiver
    (OTLP/HTTP protobuf and OTLP/gRPC); the batch is flushed when the app stops."""
    protocol, endpoint, received = collector
    settings = _settings(triton, tmp_path, enabled=True, protocol=protocol, endpoint=endpoint,
                         headers={"Authorization": "Bearer otlp-token"}, service_name="gw-under-test",
                         resource={"deployment.environment.name": "test"})  # fmt: skip
    async with in_process(create_app(settings), new_key(settings, "user")) as c:
        r = await c.post(CHAT, json=_chat("echo", "hi"))
    assert r.status_code == 200
    assert received, "the receiver got no export"
    assert all(headers.get("authorization") == "Bearer otlp-token" for _, headers, _ in received)
    if protocol == "http":
        assert {path for path, _, _ in received} == {"/v1/traces"}
    spans = []
    for _, _, export in received:
        for rs in export.resource_spans:
            resource = {a.key: a.value.string_value for a in rs.resource.attributes}
            assert resource["service.name"] == "gw-under-test"
            assert resource["deployment.environment.name"] == "test"
            spans += [s for ss in rs.scope_spans for s in ss.spans]
    server = [s for s in spans if s.kind == s.SPAN_KIND_SERVER]
    assert [(s.name, s.trace_id.hex()) for s in server] == [("POST /v1/chat/completions", r.headers["x-trace-id"])]
    assert {s.name for s in spans} >= {"gateway.authn", "gateway.authz", "gateway.pii.request",
                                       "gateway.ledger.commit", "gateway.backend"}  # fmt: skip


def test_settings() -> None:
    """Tracing settings: off by default, the endpoint needs a scheme, headers are secrets, the ratio is a share."""
    s = TracingSettings()
    assert (s.enabled, s.protocol, s.endpoint, s.sample_ratio) == (False, "http", None, 1.0)
    with pytest.raises(ValidationError, match="http:// or https://"):
        TracingSettings(endpoint="collector:4317")
    with pytest.raises(ValidationError):
        TracingSettings(sample_ratio=1.5)
    secret = TracingSettings(headers={"authorization": "Bearer otlp-token"})
    assert "otlp-token" not in repr(secret) and "otlp-token" not in str(secret.model_dump())


async def test_disabled_tracing_starts_nothing() -> None:
    """Disabled, ``start`` makes no provider: the middleware's check finds no tracer."""
    tracing = Tracing(TracingSettings(), InMemorySpanExporter())
    tracing.start()
    assert tracing.tracer is None
    await tracing.aclose()
    enabled = Tracing(TracingSettings(enabled=True), InMemorySpanExporter())
    enabled.start()
    assert enabled.tracer is not None
    await enabled.aclose()
    assert enabled.tracer is None


def test_json_log_lines_carry_the_trace_id() -> None:
    """A log line written while a request is served names its trace id."""
    record = logging.LogRecord("gateway.x", logging.INFO, __file__, 1, "hello", None, None)
    token = TRACE_ID.set(TRACE)
    try:
        line = json.loads(JSONFormatter().format(record))
    finally:
        TRACE_ID.reset(token)
    assert line["trace_id"] == TRACE
    assert "trace_id" not in json.loads(JSONFormatter().format(record))
