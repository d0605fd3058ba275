"""OpenTelemetry traces of the request path: off by default, exported over OTLP when on.

``Tracing`` is one app's tracer provider. ``start`` builds it in the lifespan when ``tracing.enabled`` (the SDK
is imported only then) and ``aclose`` flushes and shuts it down. It is not the process-wide provider of
``opentelemetry.trace``: that one can be set once per process, never replaced or shut down and started again,
and tests run many apps in one process, each with its own exporter. The gateway's spans all come from the
tracer the request's middleware (``gateway.observability.traced``) puts in a context variable, so nothing in
the gateway needs the global provider, and nothing configures it.

``span(name, attributes)`` is what the request path calls around each step (authn, authz, redaction, ledger,
backend). When no tracer serves the request (tracing off, or the trace not sampled) it returns one shared
context manager that does nothing: a context-variable read is the whole cost.

``backend_headers()`` is the W3C trace context a backend call carries (``traceparent``, and ``tracestate`` when the
span has one): the current span as parent, so the backend's own spans join the request's trace. With tracing off
the request still has a trace id, and the header names it with a random parent id and the not-sampled flag, so the
backend's logs can still be matched with the gateway's.

Attributes are bounded: route templates, configured model names, codes and counts, never a raw path, a
prompt, a credential or a user id. A failed step records the error's code or class name (``error.type``),
never its message, which may quote the request (``failed``).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry.trace import INVALID_SPAN, Span, Status, StatusCode, Tracer, get_current_span, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from gateway import __version__
from gateway.errors import GatewayError
from gateway.settings import TracingSettings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

TRACE_ID: ContextVar[str | None] = ContextVar("gateway_trace_id", default=None)
"""The trace id (32 hex digits) of the request being served: for its ledger entries and log lines."""
TRACER: ContextVar[Tracer | None] = ContextVar("gateway_tracer", default=None)
"""The tracer of the request being served, while its server span records; else None."""

PROPAGATOR = TraceContextTextMapPropagator()
"""W3C Trace Context: the ``traceparent`` read from callers and sent to backends. Not the global propagator,
which ``OTEL_PROPAGATORS`` configures and which would add ``baggage``."""

DEFAULT_ENDPOINTS = {"http": "http://127.0.0.1:4318/v1/traces", "grpc": "http://127.0.0.1:4317"}


class Tracing:
    """One app's tracer provider with a batch processor and an OTLP exporter (or the one given, for tests)."""

    def __init__(self, settings: TracingSettings, exporter: SpanExporter | None = None) -> None:
        self.settings = settings
        self._exporter = exporter
        self._provider: TracerProvider | None = None
        self.tracer: Tracer | None = None
        """None unless started with tracing enabled: the middleware's no-op check."""

    def start(self) -> None:
        """Build the provider when tracing is enabled; no thread runs and nothing is imported otherwise."""
        if not self.settings.enabled or self._provider is not None:
            return
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        s = self.settings
        resource = Resource({**s.resource, "service.name": s.service_name, "service.version": __version__})
        # shutdown_on_exit=False: no atexit hook per app; aclose shuts it down with the app.
        provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(s.sample_ratio)), resource=resource,
                                  shutdown_on_exit=False)  # fmt: skip
        exporter = self._exporter if self._exporter is not None else build_exporter(s)
        provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=s.max_queue_size,
                                                       max_export_batch_size=min(512, s.max_queue_size),
                                                       export_timeout_millis=s.timeout_s * 1000))  # fmt: skip
        self._provider = provider
        self.tracer = provider.get_tracer("gateway", __version__)

    async def aclose(self) -> None:
        """Export what is queued (within the export timeout) and stop the exporter's thread."""
        provider, self._provider, self.tracer = self._provider, None, None
        if provider is not None:
            await asyncio.to_thread(provider.shutdown)


def build_exporter(s: TracingSettings) -> SpanExporter:
    """The OTLP exporter the settings describe. Every option is passed explicitly, so the ``OTEL_EXPORTER_*``
    environment variables the exporters would otherwise read change nothing; proxies are not used."""
    headers = {k.lower(): v.get_secret_value() for k, v in s.headers.items()}
    endpoint = s.endpoint or DEFAULT_ENDPOINTS[s.protocol]
    tls = endpoint.startswith("https://")
    if s.protocol == "grpc":
        import grpc
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GRPCExporter

        creds = grpc.ssl_channel_credentials(s.ca_file.read_bytes() if s.ca_file else None) if tls else None
        return GRPCExporter(endpoint=endpoint, insecure=not tls, credentials=creds, headers=headers,
                            timeout=s.timeout_s, compression=grpc.Compression.Gzip,
                            channel_options=(("grpc.enable_http_proxy", 0),))  # type: ignore[arg-type]  # fmt: skip
    import requests
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HTTPExporter

    session = requests.Session()
    session.trust_env = False  # no proxy or CA bundle from the environment
    return HTTPExporter(endpoint=endpoint, certificate_file=str(s.ca_file) if tls and s.ca_file else None,
                        headers=headers, timeout=s.timeout_s, compression=Compression.Gzip,
                        session=session)  # fmt: skip


class _NoSpan:
    """``span`` when no tracer serves the request: enters to the invalid span, whose methods do nothing."""

    __slots__ = ()

    def __enter__(self) -> Span:
        return INVALID_SPAN

    def __exit__(self, *exc: object) -> None:
        return None


_NO_SPAN = _NoSpan()


class _Child:
    """A span made current while the ``with`` block runs; an exception marks it failed (``failed``)."""

    __slots__ = ("_attributes", "_name", "_span", "_token", "_tracer")

    def __init__(self, tracer: Tracer, name: str, attributes: Mapping[str, AttributeValue] | None) -> None:
        self._tracer, self._name, self._attributes = tracer, name, attributes

    def __enter__(self) -> Span:
        # Not start_as_current_span: its use_span records an exception's message (PII) on the span.
        self._span = s = self._tracer.start_span(self._name, attributes=self._attributes, record_exception=False,
                                                 set_status_on_exception=False)  # fmt: skip
        self._token = otel_context.attach(set_span_in_context(s))
        return s

    def __exit__(self, typ: object, exc: BaseException | None, tb: object) -> None:
        try:
            if exc is not None:
                failed(self._span, exc)
        finally:
            otel_context.detach(self._token)
            self._span.end()


def span(name: str, attributes: Mapping[str, AttributeValue] | None = None) -> _Child | _NoSpan:
    """A child span of the request's current span for the ``with`` block, or nothing when no trace records."""
    tracer = TRACER.get()
    if tracer is None:
        return _NO_SPAN
    return _Child(tracer, name, attributes)


def error_type(error: BaseException) -> str:
    """A bounded name for ``error``: a GatewayError's code (or type), else its class name."""
    if isinstance(error, GatewayError):
        return error.code or error.type
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    return type(error).__name__


def failed(span: Span, error: BaseException | str) -> None:
    """Mark ``span`` failed with ``error``'s bounded name as ``error.type`` and status; never its message."""
    kind = error if isinstance(error, str) else error_type(error)
    span.set_attribute("error.type", kind)
    span.set_status(Status(StatusCode.ERROR, kind))


def with_trace_id(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a ledger entry's) with the ``trace_id`` of the request being served, when there is one."""
    tid = TRACE_ID.get()
    if tid is not None:
        data["trace_id"] = tid
    return data


def backend_headers() -> dict[str, str]:
    """The W3C trace context for a backend call made now: the current span (a backend attempt's) as parent.

    With no current span (tracing off) but a request being served, the parent is a random id under the request's
    trace id, not sampled (``-00``). Outside a request, nothing."""
    if get_current_span().get_span_context().is_valid:
        carrier: dict[str, str] = {}
        PROPAGATOR.inject(carrier)
        return carrier
    trace_id = TRACE_ID.get()
    if trace_id is None:
        return {}
    # No span to inject: formatted here, as a fake span for the propagator would cost five times as much (~3 µs).
    return {"traceparent": f"00-{trace_id}-{random.getrandbits(64) or 1:016x}-00"}
