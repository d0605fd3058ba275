"""``create_app(settings)``: build everything once, serve the OpenAI-compatible API.

The one error handler lives here: a ``GatewayError`` renders itself; anything else becomes a
generic 500 that names the request id and nothing of the exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import aiohttp
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backends.base import Backend
from backends.openai_http import OpenAIHTTPBackend
from backends.triton import TritonBackend
from gateway.api import admin, embeddings, generate, ledger, models, models_admin
from gateway.api import fairness as fairness_api
from gateway.api import metrics as metrics_api
from gateway.api import reports as reports_api
from gateway.api import stats as stats_api
from gateway.audit import AuditTrail
from gateway.authz.files import PolicyFiles
from gateway.authz.propagate import PolicyChannel
from gateway.authz.ratelimit import Limiter, LocalLimiter
from gateway.authz.shared_limits import RedisLimiter
from gateway.authz.store import PolicyStore
from gateway.breaker import Listener
from gateway.errors import ConfigError, GatewayError, InternalError, MethodNotAllowed, NotFound, PolicyError
from gateway.fairness.service import FairnessService
from gateway.identity.apikeys import APIKeyStore
from gateway.identity.authenticate import Authenticator
from gateway.identity.jwt import JWTVerifier
from gateway.observability.metrics import Metrics
from gateway.observability.middleware import ERROR_CODE, Instrumented
from gateway.observability.monitor import Monitor
from gateway.observability.traced import Traced
from gateway.observability.tracing import Tracing
from gateway.pii.engine import PIIUnavailable
from gateway.pii.guard import Analyzer, PIIGuard
from gateway.pii.policy import check_profile
from gateway.pii.pool import AnalyzerPool
from gateway.pii.redact import Redactor
from gateway.pii.vaults import VaultStore
from gateway.pins import PinStore
from gateway.reports.service import ReportService, report_signer
from gateway.routing import Router
from gateway.security import Security, guard
from gateway.settings import OpenAIBackendSettings, RedisSettings, Settings
from gateway.state import Gateway, json_response, request_id
from gateway.stats.service import StatsService
from gateway.ui import pages as ui_pages
from gateway.ui.console import Console
from ledger.digest import load_or_create_key

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

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
            token = cfg.repository_token
            auth = (cfg.repository_token_header, token.get_secret_value()) if token is not None else None
            backends[name] = TritonBackend(name, url, timeout_s=cfg.timeout_s, connect_timeout_s=cfg.connect_timeout_s,
                                           repository_auth=auth, load_timeout_s=cfg.load_timeout_s)  # fmt: skip
    return backends


def _redis(cfg: RedisSettings) -> Redis:
    """A Redis client (a pool) for ``cfg``; nothing connects until the first call."""
    return Redis.from_url(cfg.url, socket_timeout=cfg.timeout_s, socket_connect_timeout=cfg.timeout_s,
                          socket_keepalive=True, health_check_interval=30)  # fmt: skip


def _error_response(request: Request, exc: GatewayError) -> Response:
    headers = {"x-request-id": request_id(request.scope), **exc.headers}
    request.scope[ERROR_CODE] = exc.code or exc.type
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
    log.exception("unexpected error in request %s", rid, extra={"request_id": rid})
    return _error_response(request, InternalError(f"internal error; request id {rid}"))


def _fetcher(session: aiohttp.ClientSession | None) -> Callable[[str], Awaitable[bytes]]:
    async def fetch(url: str) -> bytes:
        assert session is not None, "a JWKS URL is configured, so the lifespan made a session"
        async with session.get(url) as resp:
            resp.raise_for_status()
            return await resp.read()

    return fetch


def _routes_entry(settings: Settings) -> dict[str, object]:
    keep = ("backend", "model", "version", "kind", "fallback")
    return {"models": [{"name": m.name, **{k: getattr(m, k) for k in keep}} for m in settings.models]}


def pii_check(profile: str) -> Callable[[PolicyFiles], None]:
    def check(files: PolicyFiles) -> None:
        try:
            check_profile(files.pii, profile)
        except ValueError as exc:
            raise PolicyError(f"pii.yaml: {exc}") from None

    return check


async def _follow_pins(pins: PinStore, router: Router, interval_s: float, stop: asyncio.Event) -> None:
    """Apply the pins another replica set, every ``interval_s``, until ``stop``."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
        try:
            current = await asyncio.to_thread(pins.current)
        except Exception:  # the store is down: keep the pins in force, try again at the next tick
            log.exception("cannot read the model pins")
            continue
        router.apply_pins(current)


def _breaker_entry(audit: AuditTrail) -> Listener:
    """Circuit transitions go to the ledger (the incident runbook's degrade step is on the record)."""

    def record(route: str, old: str, new: str, reason: str) -> None:
        audit.record("breaker.changed", "gateway", {"model": route, "from": old, "to": new, "reason": reason})

    return record


@asynccontextmanager
async def _analyzer(settings: Settings, given: Analyzer | None) -> AsyncIterator[Analyzer]:
    """The given analyzer, or worker processes of our own, loaded and warm before the first request."""
    if given is not None:
        yield given
        return
    p = settings.pii
    pool = AnalyzerPool(p.profile, workers=p.workers, cache_size=p.cache_size)
    try:
        await pool.start()
    except PIIUnavailable as exc:
        raise ConfigError(f"pii: the {p.profile!r} analyzer cannot start: {exc}") from None
    try:
        yield pool
    finally:
        await pool.aclose()


def create_app(settings: Settings, *, backend_factory: BackendFactory = build_backends,
               analyzer: Analyzer | None = None, span_exporter: SpanExporter | None = None) -> Starlette:  # fmt: skip
    """The ASGI app. The ledger, analyzer, policy and backends are built in the lifespan and closed when it ends.

    ``analyzer`` shares a running PII analyzer (tests start one per session); by default the app starts its
    own worker processes. ``span_exporter`` replaces the OTLP exporter when tracing is enabled (tests).
    """
    metrics = Metrics(settings.models)  # per app: tests run many apps in one process
    tracing = Tracing(settings.tracing, span_exporter)  # per app too (gateway/observability/tracing.py)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        from gateway.chain import build_anchorer

        audit = await AuditTrail.open(settings, build_anchorer if settings.ledger.chain.enabled else None)
        try:
            tracing.start()
            async with _analyzer(settings, analyzer) as pii, _serving(app, audit, pii):
                yield
        finally:
            await tracing.aclose()
            await audit.aclose()

    @asynccontextmanager
    async def _serving(app: Starlette, audit: AuditTrail, pii: Analyzer) -> AsyncIterator[None]:
        try:
            policy = PolicyStore(settings.policy.dir, audit, checks=[pii_check(settings.pii.profile)])
        except PolicyError as exc:
            raise ConfigError(f"policy: {exc}") from None
        report_key = report_signer(settings)  # before anything is opened: a readable key stops the start
        redactor = Redactor(load_or_create_key(settings.state_dir / "pii" / "hash.key"))
        vaults = VaultStore(settings.state_dir / "pii" / "vaults.sqlite3",
                            load_or_create_key(settings.state_dir / "pii" / "vault.key"))  # fmt: skip
        audit.record("routes.loaded", "gateway", _routes_entry(settings))
        stats = StatsService(settings.ledger_store(), audit, lambda: policy.engine.files.privacy,
                             lambda: stats_api.public_keys(settings, policy.engine))  # fmt: skip
        pins = PinStore(settings.ledger_store())
        fairness = FairnessService(settings, audit, policy, metrics)
        reports = ReportService(settings, audit, audit.ledger.origin, audit.ledger.verifier_key, fairness.store,
                                policy.status, stats.release, report_key,
                                lambda: audit.anchorer.chain if audit.anchorer is not None else None)  # fmt: skip
        backends = backend_factory(settings)
        monitor = Monitor(settings, metrics, audit, lambda: policy.engine.files.alerts)
        console = Console(settings.ui, audit) if settings.ui.enabled else None
        keys = APIKeyStore(settings.api_keys_db)
        jwks_http = None  # only a JWKS URL needs an HTTP client
        if settings.auth.jwt is not None and settings.auth.jwt.jwks_url is not None:
            jwks_http = aiohttp.ClientSession(trust_env=False, timeout=aiohttp.ClientTimeout(total=10))
        stop = asyncio.Event()
        refresher: asyncio.Task[None] | None = None
        watcher = asyncio.create_task(policy.watch(stop)) if settings.policy.watch else None
        interval = settings.stats.index_interval_s
        indexer = asyncio.create_task(stats.keep_up(interval, stop)) if interval > 0 else None
        limiter: Limiter = LocalLimiter()
        channel, listener = None, None
        if settings.redis is not None:  # shared rate limits, and policy changes told to the other replicas
            limiter = RedisLimiter(_redis(settings.redis), settings.redis.prefix)
            channel = PolicyChannel(_redis(settings.redis), settings.redis.prefix, policy,
                                    timeout_s=settings.redis.timeout_s)  # fmt: skip
            listener = asyncio.create_task(channel.run())
        try:
            monitor.start()
            jwt = JWTVerifier(settings.auth.jwt, _fetcher(jwks_http)) if settings.auth.jwt else None
            security = Security(Authenticator(keys, jwt, audit), policy, audit, limiter)
            guard = PIIGuard(pii, redactor, audit, vaults)
            router = Router(settings, backends)
            router.breaker_listeners.append(_breaker_entry(audit))
            router.apply_pins(pins.current())  # pins set at run time outlive restarts
            app.state.gateway = Gateway(settings, router, security, audit, guard, stats, metrics, pins, fairness,
                                        reports, console)  # fmt: skip
            fairness.start(router)
            refresher = asyncio.create_task(_follow_pins(pins, router, settings.pins.refresh_s, stop))
            yield
        finally:
            stop.set()
            await fairness.aclose()  # first: a scheduled audit in progress uses the router and the ledger
            await reports.aclose()  # before the statistics and the ledger its jobs use
            await monitor.aclose()
            if console is not None:
                await console.aclose()
            for task in (watcher, indexer, refresher):
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            if listener is not None:
                listener.cancel()
                await asyncio.gather(listener, return_exceptions=True)
            if channel is not None:
                await channel.aclose()
            await limiter.aclose()
            if jwks_http is not None:
                await jwks_http.close()
            keys.close()
            vaults.close()
            stats.close()
            pins.close()
            for backend in backends.values():
                await backend.aclose()

    routes = [
        Route("/v1/chat/completions", guard("route:/v1/chat/completions", "infer", generate.chat_completions),
              methods=["POST"]),
        Route("/v1/completions", guard("route:/v1/completions", "infer", generate.completions), methods=["POST"]),
        Route("/v1/embeddings", guard("route:/v1/embeddings", "embed", embeddings.embeddings), methods=["POST"]),
        Route("/v1/models", guard("route:/v1/models", "read", models.list_models), methods=["GET"]),
        Route("/v1/models/{model:path}", guard("route:/v1/models", "read", models.get_model), methods=["GET"]),
        Route("/admin/policy/status", guard("route:/admin/policy/status", "admin", admin.policy_status),
              methods=["GET"]),
        Route("/admin/policy/reload", guard("route:/admin/policy/reload", "admin", admin.policy_reload),
              methods=["POST"]),
        Route("/admin/ledger/entries/{seq}/proof", guard("route:/admin/ledger/proof", "report", ledger.entry_proof),
              methods=["GET"]),
        Route("/admin/stats", guard("route:/admin/stats", "report", stats_api.stats), methods=["GET"]),
        Route("/admin/reports", guard("route:/admin/reports", "report", reports_api.create_report), methods=["POST"]),
        Route("/admin/reports", guard("route:/admin/reports", "report", reports_api.list_reports), methods=["GET"]),
        Route("/admin/reports/key", guard("route:/admin/reports", "report", reports_api.report_key), methods=["GET"]),
        Route("/admin/reports/{report}", guard("route:/admin/reports", "report", reports_api.get_report),
              methods=["GET"]),
        Route("/metrics", guard("route:/metrics", "read", metrics_api.metrics), methods=["GET"]),
        Route("/admin/models/{model:path}/pin", guard("route:/admin/models", "admin", models_admin.pin),
              methods=["POST"]),
        Route("/admin/models/{model:path}/rollback", guard("route:/admin/models", "admin", models_admin.rollback),
              methods=["POST"]),
        Route("/admin/models/{model:path}/pins", guard("route:/admin/models", "admin", models_admin.pins),
              methods=["GET"]),
        Route("/admin/fairness/audits", guard("route:/admin/fairness/audits", "report", fairness_api.list_audits),
              methods=["GET"]),
        Route("/admin/fairness/audits/{audit_id}", guard("route:/admin/fairness/audits", "report",
                                                         fairness_api.get_audit), methods=["GET"]),
        Route("/admin/fairness/outcomes", guard("route:/admin/fairness/outcomes", "label",
                                                fairness_api.upload_outcomes), methods=["POST"]),
        # unauthenticated on purpose: probes carry no credentials and reveal nothing but liveness
        Route("/healthz", models.healthz, methods=["GET"]),
        Route("/readyz", models.readyz, methods=["GET"]),
    ]  # fmt: skip
    if settings.ui.enabled:  # the page authenticates and authorizes each route itself (gateway/ui/pages.py)
        routes += [
            Route("/admin/ui", ui_pages.dashboard, methods=["GET"]),
            Route("/admin/ui/login", ui_pages.login_form, methods=["GET"]),
            Route("/admin/ui/login", ui_pages.login_key, methods=["POST"]),
            Route("/admin/ui/login/oidc", ui_pages.login_oidc, methods=["GET"]),
            Route("/admin/ui/callback", ui_pages.callback, methods=["GET"], name="ui_callback"),
            Route("/admin/ui/logout", ui_pages.logout, methods=["POST"]),
            Route("/admin/ui/reports", ui_pages.create_report, methods=["POST"]),
            Route("/admin/ui/reports/{report}", ui_pages.download_report, methods=["GET"]),
            Route("/admin/ui/ledger/verify", ui_pages.verify_ledger, methods=["POST"]),
        ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(Instrumented, metrics=metrics), Middleware(Traced, tracing=tracing)],
        exception_handlers={
            GatewayError: _gateway_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
    )
