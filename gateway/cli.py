"""The ``gateway`` command: ``serve``, ``models`` and ``certs``."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click

from gateway.errors import ConfigError
from gateway.settings import Settings

_config = click.option(
    "--config", "-c", "config_file", type=click.Path(path_type=Path, dir_okay=False),
    envvar="GATEWAY_CONFIG", help="YAML config file (also GATEWAY_CONFIG).",
)  # fmt: skip


def _load(config_file: Path | None, **overrides: Any) -> Settings:
    try:
        return Settings.load(config_file, **overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
@click.version_option(package_name="llm-governance-gateway")
def main() -> None:
    """Governance and compliance gateway for self-hosted LLMs."""


@main.command()
@_config
@click.option("--local-triton/--no-local-triton", default=None,
              help="Start the embedded demo Triton server (default: as configured, on).")  # fmt: skip
def serve(config_file: Path | None, local_triton: bool | None) -> None:
    """Serve the OpenAI-compatible API."""
    from gateway.server import configure_logging
    from gateway.server import serve as run

    overrides: dict[str, Any] = {}
    if local_triton is not None:
        overrides["local_triton"] = {"enabled": local_triton}
    settings = _load(config_file, **overrides)
    configure_logging()
    try:
        sys.exit(run(settings))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@_config
def models(config_file: Path | None) -> None:
    """List model routes and whether their backends report them ready."""
    from gateway.app import build_backends
    from gateway.routing import Router

    settings = _load(config_file)

    async def check() -> list[tuple[str, str, str, bool]]:
        backends = build_backends(settings)
        try:
            router = Router(settings, backends)
            ready = await router.readiness()
            return [
                (r.route.name, r.route.backend, r.route.fallback or "-", ready[r.route.name]) for r in router.routes
            ]
        finally:
            for b in backends.values():
                await b.aclose()

    rows = asyncio.run(check())
    width = max([len(r[0]) for r in rows] + [5])
    click.echo(f"{'MODEL':<{width}}  {'BACKEND':<10}  {'FALLBACK':<{width}}  STATUS")
    for name, backend, fallback, ok in rows:
        click.echo(f"{name:<{width}}  {backend:<10}  {fallback:<{width}}  {'ready' if ok else 'NOT READY'}")


@main.command()
@_config
def certs(config_file: Path | None) -> None:
    """Create (if missing) and show the development CA and server certificate."""
    from gateway.tls import ensure_certificates

    settings = _load(config_file)
    paths = ensure_certificates(settings)
    if paths.ca_cert is not None:
        click.echo(f"CA certificate:     {paths.ca_cert}  (trust this one in clients)")
    click.echo(f"server certificate: {paths.cert}")
    click.echo(f"server key:         {paths.key}")
