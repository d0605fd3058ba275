"""``gateway alerts export``: the alert rules of the policy folder as a Prometheus alerting-rules file."""

from __future__ import annotations

from pathlib import Path

import click

from gateway._cli import config_option, load_settings


@click.group()
def alerts() -> None:
    """The alert rules of policies/alerts.yaml (the gateway evaluates them itself; docs/operations.md)."""


@alerts.command("export")
@config_option
@click.argument("directory", required=False, type=click.Path(path_type=Path, file_okay=False))
@click.option("--output", "-o", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write to this file (default: standard output).")  # fmt: skip
def export(config_file: Path | None, directory: Path | None, output: Path | None) -> None:
    """Write the rules as Prometheus alerting rules (for Alertmanager).

    DIRECTORY is the policy folder (default: the configured policy.dir). The whole folder is validated first,
    as the gateway would, so only rules it would run are exported.
    """
    from gateway.authz import files
    from gateway.errors import PolicyError
    from gateway.observability.export import rules_file

    root = directory or load_settings(config_file).policy.dir
    try:
        loaded = files.load(root)
    except PolicyError as exc:
        raise click.ClickException(str(exc)) from None
    text = rules_file(loaded.alerts, str(root / "alerts.yaml"))
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        click.echo(f"{len(loaded.alerts.rules)} alert rules written to {output}", err=True)
