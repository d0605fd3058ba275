"""Run the gateway: the embedded Triton (when enabled), TLS, and uvicorn (uvloop, httptools)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import uvicorn
from pydantic import SecretStr

from backends.local.launcher import MODEL_SETS, LocalTriton
from gateway.app import create_app, pii_check
from gateway.authz.store import build as build_policy
from gateway.errors import ConfigError, PolicyError
from gateway.pii.guard import Analyzer
from gateway.settings import LoggingSettings, Settings, TritonBackendSettings
from gateway.tls import ensure_certificates, server_context

log = logging.getLogger("gateway")


def uvicorn_server(settings: Settings, analyzer: Analyzer | None = None) -> uvicorn.Server:
    """A uvicorn server for ``settings``; its TLS context carries our minimum version and mTLS."""
    certs = ensure_certificates(settings) if settings.tls.enabled else None
    config = uvicorn.Config(
        create_app(settings, analyzer=analyzer),
        host=settings.server.host,
        port=settings.server.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=settings.server.access_log,
        log_config=None,  # uvicorn's loggers propagate to ours (configure_logging): JSON lines like the rest
        log_level="info",
        server_header=False,
        proxy_headers=False,  # the gateway is the edge: X-Forwarded-* from clients are not trusted
        ssl_certfile=str(certs.cert) if certs else None,
        ssl_keyfile=str(certs.key) if certs else None,
    )
    config.load()
    if certs is not None:
        # uvicorn's own context cannot set a minimum TLS version; replace it with ours.
        config.ssl = server_context(settings.tls, certs)
        where = f" (local CA: {certs.ca_cert})" if certs.ca_cert else ""
        log.info("TLS certificate %s%s", certs.cert, where)
    return uvicorn.Server(config)


def serve(settings: Settings) -> int:
    """Run until SIGINT or SIGTERM; both stop uvicorn gracefully, then the local Triton."""
    try:  # a bad policy stops the start with its file, line and reason, before anything runs
        build_policy(settings.policy.dir, 1, checks=[pii_check(settings.pii.profile)])
    except PolicyError as exc:
        raise ConfigError(f"policy: {exc}") from None
    # uvicorn re-raises the signal it caught once it has shut down; with this handler SIGTERM
    # arrives here as KeyboardInterrupt, like SIGINT, so the finally below always runs.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    local = None
    if settings.local_triton.enabled:
        lt = settings.local_triton
        triton_log = settings.state_dir / "triton.log"
        triton_log.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting the local Triton server (models: %s; log: %s)", ", ".join(lt.models), triton_log)
        local = LocalTriton.start(
            models=lt.models,
            grpc_port=lt.grpc_port,
            http_port=lt.http_port,
            metrics_port=lt.metrics_port,
            log_file=triton_log,
        )
    anvil = None
    try:
        chain = settings.ledger.chain
        if chain.enabled and chain.rpc_url == "embedded":
            from gateway.chain import embedded_anvil
            from ledger.anchor import ChainError

            try:
                anvil = embedded_anvil(settings)
                log.info("starting the local chain node (anvil, state in %s)", anvil.state_path)
                anvil.start()
            except ChainError as exc:
                log.error("the embedded chain cannot start: %s", exc)
                return 1
        if local is not None:
            names = [m for s in settings.local_triton.models for m in MODEL_SETS[s]]
            try:
                asyncio.run(local.wait_ready(names, settings.local_triton.startup_timeout_s))
            except RuntimeError as exc:
                log.error("%s", exc)
                return 1
            log.info("local Triton ready on %s", local.grpc_url)
        if local is not None:  # the embedded Triton's repository API takes its own token (pinning versions)
            settings = with_repository_token(settings, local.admin_token)
        server = uvicorn_server(settings)
        with contextlib.suppress(KeyboardInterrupt):
            server.run()
        return 0 if server.started else 1
    except KeyboardInterrupt:
        return 0
    finally:
        if local is not None:
            local.stop()
        if anvil is not None:
            anvil.stop()  # SIGTERM: anvil writes its --state file before it exits


def with_repository_token(settings: Settings, token: str) -> Settings:
    """``settings`` with ``token`` for the model-repository API of every backend on the embedded Triton."""
    backends = {name: b.model_copy(update={"repository_token": SecretStr(token)})
                if isinstance(b, TritonBackendSettings) and b.url == "embedded" and b.repository_token is None else b
                for name, b in settings.backends.items()}  # fmt: skip
    return settings.model_copy(update={"backends": backends})


def configure_logging(settings: LoggingSettings | None = None) -> None:
    """Logs on stderr: JSON lines with the request id by default (``gateway.observability.logs``)."""
    from gateway.observability.logs import configure

    configure(settings or LoggingSettings())
