"""What the ``gateway`` command groups share: the ``--config`` option and loading settings from it."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import click
import httpx

from gateway.errors import ConfigError
from gateway.settings import Settings

config_option = click.option(
    "--config", "-c", "config_file", type=click.Path(path_type=Path, dir_okay=False),
    envvar="GATEWAY_CONFIG", help="YAML config file (also GATEWAY_CONFIG).",
)  # fmt: skip


def load_settings(config_file: Path | None, **overrides: Any) -> Settings:
    """Settings from ``config_file``, the environment and ``overrides``; a bad value exits with its reason."""
    try:
        return Settings.load(config_file, **overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def api_client(config_file: Path | None, url: str | None, ca_file: Path | None, api_key: str) -> httpx.Client:
    """A client of a running gateway (commands that act through its API, so that its authorization, budgets
    and ledger apply): ``url`` or the configured address, trusting ``ca_file`` or the state dir's local CA."""
    settings = load_settings(config_file)
    if url is None:
        scheme = "https" if settings.tls.enabled else "http"
        host = "127.0.0.1" if settings.server.host in ("0.0.0.0", "::", "") else settings.server.host
        url = f"{scheme}://{host}:{settings.server.port}"
    verify: ssl.SSLContext | bool = True
    if url.startswith("https://"):
        ca = ca_file or settings.state_dir / "tls" / "ca.pem"
        verify = ssl.create_default_context(cafile=str(ca)) if ca.is_file() else True
    return httpx.Client(base_url=url, verify=verify, trust_env=False, timeout=600,
                        headers={"authorization": f"Bearer {api_key}"})  # fmt: skip


def api_error(response: httpx.Response) -> click.ClickException:
    """The gateway's error message, with its status, as the command's failure."""
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:200]
    return click.ClickException(f"{response.status_code}: {message}")


url_option = click.option("--url", default=None, help="The gateway's base URL (default: from the config).")
ca_option = click.option("--ca-file", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
                         help="CA of the gateway's certificate (default: the state dir's local CA).")  # fmt: skip
