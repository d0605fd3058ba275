"""What the ``gateway`` command groups share: the ``--config`` option and loading settings from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

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
