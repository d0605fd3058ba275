"""The ``gateway`` command: ``serve``, ``models``, ``certs``, ``keys``, ``policy``, ``ledger``, ``stats``,
``fairness``, ``alerts`` and ``report``."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click

from gateway._cli import ca_option, config_option, load_settings, url_option
from gateway.errors import ConfigError


@click.group()
@click.version_option(package_name="llm-governance-gateway")
def main() -> None:
    """Governance and compliance gateway for self-hosted LLMs."""


@main.command()
@config_option
@click.option("--local-triton/--no-local-triton", default=None,
              help="Start the embedded demo Triton server (default: as configured, on).")  # fmt: skip
def serve(config_file: Path | None, local_triton: bool | None) -> None:
    """Serve the OpenAI-compatible API."""
    from gateway.server import configure_logging
    from gateway.server import serve as run

    overrides: dict[str, Any] = {}
    if local_triton is not None:
        overrides["local_triton"] = {"enabled": local_triton}
    settings = load_settings(config_file, **overrides)
    configure_logging(settings.logging)
    try:
        sys.exit(run(settings))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@main.group(invoke_without_command=True)
@config_option
@click.pass_context
def models(ctx: click.Context, config_file: Path | None) -> None:
    """List model routes and whether their backends report them ready; pin and roll back versions."""
    if ctx.invoked_subcommand is not None:
        return
    from gateway.app import build_backends
    from gateway.routing import Router

    settings = load_settings(config_file)

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
@config_option
def certs(config_file: Path | None) -> None:
    """Create (if missing) and show the development CA and server certificate."""
    from gateway.tls import ensure_certificates

    settings = load_settings(config_file)
    paths = ensure_certificates(settings)
    if paths.ca_cert is not None:
        click.echo(f"CA certificate:     {paths.ca_cert}  (trust this one in clients)")
    click.echo(f"server certificate: {paths.cert}")
    click.echo(f"server key:         {paths.key}")


@main.group()
def keys() -> None:
    """Manage API keys (stored as salted scrypt hashes in state_dir/apikeys.sqlite3)."""


def _store(config_file: Path | None) -> Any:
    from gateway.identity.apikeys import APIKeyStore

    return APIKeyStore(load_settings(config_file).api_keys_db)


_DURATION = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _ttl(value: str | None) -> float | None:
    if value is None:
        return None
    unit = value[-1:]
    if unit not in _DURATION or not value[:-1].isdigit() or int(value[:-1]) <= 0:
        raise click.BadParameter("use a number and a unit: 30d, 12h, 15m, 90s", param_hint="--expires-in")
    return int(value[:-1]) * _DURATION[unit]


@keys.command("create")
@config_option
@click.option("--owner", required=True, help="Who the key is for (a team, a service).")
@click.option("--role", "roles", multiple=True, required=True, help="A role from the policy; repeat for several.")
@click.option("--expires-in", default=None, help="Lifetime such as 90d or 12h (default: no expiry).")
def keys_create(config_file: Path | None, owner: str, roles: tuple[str, ...], expires_in: str | None) -> None:
    """Create a key. The key is printed once and never stored."""
    from gateway.ledger_cli import record

    settings = load_settings(config_file)
    store = _store(config_file)
    try:
        info, secret = store.create(owner, list(roles), _ttl(expires_in))
        try:
            record(settings, "apikey.created", {"key_id": info.id, "owner": owner, "roles": list(roles),
                                                "expires": int(info.expires) if info.expires else None})  # fmt: skip
        except click.ClickException:
            store.revoke(info.id)  # no key without its audit entry
            raise
    finally:
        store.close()
    click.echo(f"key id:  {info.id}\nowner:   {owner}\nroles:   {', '.join(roles)}")
    click.echo(f"expires: {_when(info.expires) if info.expires else 'never'}")
    click.echo(f"\n{secret}\n\nStore this key now: it is shown only once.")


def _when(ts: float | None) -> str:
    from gateway.timefmt import human

    return human(ts, never="-")


@keys.command("list")
@config_option
def keys_list(config_file: Path | None) -> None:
    """List keys (ids, owners, roles, dates; never secrets)."""
    store = _store(config_file)
    rows = store.list()
    store.close()
    click.echo(f"{'ID':<12}  {'OWNER':<20}  {'ROLES':<20}  {'CREATED':<20}  {'EXPIRES':<20}  STATUS")
    for k in rows:
        status = "revoked" if k.revoked else "active"
        click.echo(f"{k.id:<12}  {k.owner:<20}  {','.join(k.roles):<20}  {_when(k.created):<20}  "
                   f"{_when(k.expires):<20}  {status}")  # fmt: skip


@keys.command("revoke")
@config_option
@click.argument("key_id")
def keys_revoke(config_file: Path | None, key_id: str) -> None:
    """Revoke a key at once (running gateways refuse it from their next request)."""
    from gateway.ledger_cli import record

    settings = load_settings(config_file)
    store = _store(config_file)
    try:
        ok = store.revoke(key_id)
    finally:
        store.close()
    if not ok:
        raise click.ClickException(f"no active key {key_id}")
    record(settings, "apikey.revoked", {"key_id": key_id})
    click.echo(f"revoked {key_id}")


def _register() -> None:
    from gateway.alerts_cli import alerts
    from gateway.fairness_cli import fairness
    from gateway.ledger_cli import ledger
    from gateway.report_cli import report
    from gateway.stats_cli import stats

    main.add_command(ledger)
    main.add_command(stats)
    main.add_command(fairness)
    main.add_command(alerts)
    main.add_command(report)


_register()


@main.group()
def policy() -> None:
    """Check and test the policy files that security teams own."""


_policy_dir = click.argument("directory", required=False, type=click.Path(path_type=Path, file_okay=False))


@policy.command("check")
@_policy_dir
def policy_check(directory: Path | None) -> None:
    """Validate model.conf, the policy CSV files, the YAML files, the probe sets and outcome audits in
    fairness/, and controls.yaml (which compliance reports read)."""
    from gateway.authz import files
    from gateway.authz.engine import PolicyEngine
    from gateway.errors import PolicyError
    from gateway.reports.controls import ControlsError, load_controls

    root = directory or Path("policies")
    try:
        loaded = files.load(root)
        PolicyEngine(loaded, 1)
        controls = len(load_controls(root / "controls.yaml").controls) if (root / "controls.yaml").exists() else 0
    except (PolicyError, ControlsError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{root}: OK: {len(loaded.rules)} rules, {len(loaded.groupings)} role links, {len(loaded.tests)} "
               f"tests, {len(loaded.fairness)} probe sets, {len(loaded.outcome_audits)} outcome audits, "
               f"{len(loaded.alerts.rules)} alert rules, {controls} report controls; "
               f"digest {loaded.digest[:16]}")  # fmt: skip


@policy.command("test")
@_policy_dir
def policy_test(directory: Path | None) -> None:
    """Run the policy's own tests (tests.yaml) against it."""
    from gateway.authz import files
    from gateway.authz.engine import PolicyEngine
    from gateway.errors import PolicyError

    root = directory or Path("policies")
    try:
        engine = PolicyEngine(files.load(root), 1)
    except PolicyError as exc:
        raise click.ClickException(str(exc)) from None
    failures = engine.run_tests()
    for t in engine.files.tests:
        mark = "FAIL" if any(f.startswith(f"{t.name}:") for f in failures) else "ok  "
        click.echo(f"{mark}  {t.name}")
    for f in failures:
        click.echo(f"  {f}", err=True)
    if failures:
        raise click.ClickException(f"{len(failures)} of {len(engine.files.tests)} policy tests failed")
    click.echo(f"all {len(engine.files.tests)} policy tests pass")


_api_key = click.option("--api-key", envvar="GATEWAY_API_KEY", required=True,
                        help="An API key with `admin` on /admin/models (also GATEWAY_API_KEY).")  # fmt: skip


def _pin_call(config_file: Path | None, url: str | None, ca_file: Path | None, api_key: str, name: str,
              action: str, body: dict[str, str] | None = None) -> None:  # fmt: skip
    from urllib.parse import quote

    from gateway._cli import api_client, api_error

    with api_client(config_file, url, ca_file, api_key) as client:
        r = client.post(f"/admin/models/{quote(name, safe='')}/{action}", json=body or {})
    if r.status_code != 200:
        raise api_error(r)
    done = r.json()
    click.echo(f"{done['model']}: version {done['previous'] or 'default'} -> {done['version'] or 'default'} "
               f"({done['how']} by {done['pinned_by']} at {done['at']})")  # fmt: skip


@models.command("pin")
@config_option
@url_option
@ca_option
@_api_key
@click.argument("name")
@click.argument("version")
def models_pin(config_file: Path | None, url: str | None, ca_file: Path | None, api_key: str, name: str,
               version: str) -> None:  # fmt: skip
    """Serve VERSION of model NAME from now on, on every replica (Triton loads it first; no restart)."""
    _pin_call(config_file, url, ca_file, api_key, name, "pin", {"version": version})


@models.command("rollback")
@config_option
@url_option
@ca_option
@_api_key
@click.argument("name")
def models_rollback(config_file: Path | None, url: str | None, ca_file: Path | None, api_key: str,
                    name: str) -> None:  # fmt: skip
    """Serve the version model NAME used before its last change."""
    _pin_call(config_file, url, ca_file, api_key, name, "rollback")
