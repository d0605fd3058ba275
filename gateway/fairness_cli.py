"""``gateway fairness``: list the audits of the policy folder, and run one against a model (docs/fairness.md).

Outcome audits and ``outcomes upload`` are in ``gateway.fairness_outcomes_cli``. For a probe set, ``run`` is
the gateway in-process, less HTTP and PII analysis: the configured ledger store, policy folder,
routes and backends, and the audit runner (``gateway.fairness.runner``), so the probes take the same path
and the same policy decisions as a running gateway's own audits would.

Whose log. A ledger log has one writer: the gateway process that owns ``ledger.origin``. A second writer on
the same log is supported only for short CLI writes such as ``gateway keys create`` (docs/ledger.md, 6.5): an
audit writes three entries per probe request, thousands over minutes, and racing a busy gateway's group
commits for that long could exhaust the writer's conflict retries and stop its ledger for good. Going through
the running gateway instead would need an admin API for audits (not there yet) and would put the probes
through PII redaction, which destroys them (docs/fairness.md). So ``run`` writes a log of its own,
``<ledger.origin>/fairness``, in the same store and signed with the same checkpoint key: one writer per log,
as with replicas. A lock file in the ledger folder keeps two runs on one host from sharing it. Results also go
to the results store beside the ledger (``GET /admin/fairness/audits``).
"""

from __future__ import annotations

import asyncio
import fcntl
import getpass
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from gateway._cli import config_option, load_settings
from gateway.fairness_outcomes_cli import audit_outcomes, describe_outcome, outcomes
from gateway.settings import Settings

LOG_SUFFIX = "/fairness"


@click.group()
def fairness() -> None:
    """Fairness audits: probe sets of generative models, outcome audits of decision models (policies/fairness/)."""


fairness.add_command(outcomes)


def _policy_files(settings: Settings) -> Any:
    from gateway.authz import files
    from gateway.errors import PolicyError

    try:
        return files.load(settings.policy.dir)
    except PolicyError as exc:
        raise click.ClickException(f"policy: {exc}") from None


@fairness.command("list")
@config_option
def list_sets(config_file: Path | None) -> None:
    """The audits, with their kind, models, attributes, schedule and requests per audited model (probe sets)."""
    files = _policy_files(load_settings(config_file))
    click.echo(f"{'NAME':<24}  {'KIND':<7}  {'ATTRIBUTES':<24}  {'REQUESTS':>8}  {'SCHEDULE':<14}  MODELS")
    for entry in files.fairness:
        p = entry.probes
        when = "-" if p.schedule is None else p.schedule.every or p.schedule.cron
        requests = sum(p.requests(a) for a in p.attributes)
        click.echo(f"{p.name:<24}  {'probe':<7}  {','.join(p.attributes):<24}  {requests:>8}  {when:<14}  "
                   f"{', '.join(p.models)}")  # fmt: skip
    for entry in files.outcome_audits:
        a = entry.audit
        when = "-" if a.schedule is None else a.schedule.every or a.schedule.cron
        click.echo(f"{a.name:<24}  {'outcome':<7}  {a.attribute.name:<24}  {'-':>8}  {when:<14}  "
                   f"{', '.join(a.models)}")  # fmt: skip


@fairness.command("run")
@config_option
@click.argument("name")
@click.option(
    "--model",
    "models",
    multiple=True,
    help="A model route to audit; repeat for several (default: the audit's models).",
)
@click.option("--attribute", "attributes", multiple=True, help="Audit only this attribute; repeat for several.")
@click.option(
    "--concurrency", type=click.IntRange(1, 64), default=4, show_default=True, help="Probe requests in flight at once."
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def run(
    config_file: Path | None,
    name: str,
    models: tuple[str, ...],
    attributes: tuple[str, ...],
    concurrency: int,
    as_json: bool,
) -> None:
    """Run the audit NAME (a probe set or an outcome audit) against its models; exit 1 unless every audit passes."""
    settings = load_settings(config_file)
    own = settings.model_copy(
        update={"ledger": settings.ledger.model_copy(update={"origin": settings.ledger.origin + LOG_SUFFIX})}
    )
    outcome = next((e for e in _policy_files(settings).outcome_audits if e.audit.name == name), None)
    if outcome is not None and attributes:
        raise click.ClickException(f"{name} is an outcome audit: it has one attribute, and no --attribute")
    with _lock(settings):
        if outcome is not None:
            results = asyncio.run(audit_outcomes(own, outcome, models))
        else:
            results = asyncio.run(_audit(own, name, models, attributes, concurrency))
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        show = describe_outcome if outcome is not None else describe
        for r in results:
            click.echo("\n".join(show(r, own.ledger.origin)))
    if any(r.status != "pass" for r in results):
        sys.exit(1)


@contextmanager
def _lock(settings: Settings) -> Iterator[None]:
    path = settings.ledger_dir() / "fairness.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log = settings.ledger.origin + LOG_SUFFIX
            raise click.ClickException(
                f"another `gateway fairness run` holds {path}: its log {log} has one writer at a time"
            ) from None
        yield  # the lock goes with the file


async def _audit(
    settings: Settings, name: str, models: tuple[str, ...], attributes: tuple[str, ...], concurrency: int
) -> list[Any]:
    from gateway.app import build_backends
    from gateway.audit import AuditTrail
    from gateway.authz.store import PolicyStore
    from gateway.errors import ConfigError, GatewayError, PolicyError
    from gateway.fairness._compute import worker_pool
    from gateway.fairness.report import record_of
    from gateway.fairness.runner import AuditServices, plan, run_audit
    from gateway.fairness.store import FairnessStore, fairness_url
    from gateway.routing import Router
    from ledger.log import LedgerUnavailable
    from ledger.store import StoreError

    try:
        audit = await AuditTrail.open(settings)  # no anchoring: the gateway anchors its own log
    except (LedgerUnavailable, StoreError, OSError) as exc:
        raise click.ClickException(f"the audit ledger cannot open: {exc}") from None
    backends: dict[str, Any] = {}
    try:
        try:
            policy = PolicyStore(settings.policy.dir, audit)
        except PolicyError as exc:
            raise click.ClickException(f"policy: {exc}") from None
        found = {e.probes.name: e for e in policy.engine.files.fairness}
        if name not in found:
            known = ", ".join(sorted(found)) or "none"
            raise click.ClickException(f"no probe set {name!r} in {settings.policy.dir / 'fairness'} (there: {known})")
        entry = found[name]
        try:
            total = len(plan(entry.probes, attributes or None)) * len(models or entry.probes.models)
            backends = build_backends(settings)
            router = Router(settings, backends)
        except (ValueError, ConfigError) as exc:
            raise click.ClickException(str(exc)) from None
        services = AuditServices(router, policy, audit)
        store = FairnessStore(fairness_url(settings.ledger_store()))
        try:
            results = []
            with click.progressbar(length=total, label=f"probing ({name})", file=sys.stderr, show_pos=True) as bar:
                async with worker_pool() as pool:
                    for model in models or entry.probes.models:
                        started = time.time()
                        try:
                            results.append(
                                await run_audit(
                                    services,
                                    entry,
                                    model,
                                    requested_by=f"cli:{getpass.getuser()}",
                                    attributes=attributes or None,
                                    concurrency=concurrency,
                                    progress=bar.update,
                                    executor=pool,
                                )
                            )
                        except GatewayError as exc:
                            raise click.ClickException(f"{model}: {exc.message}") from None
                        store.save_audit(record_of(results[-1], started=started, finished=time.time(),
                                                   log=settings.ledger.origin))  # fmt: skip
        finally:  # closed on a refusal too
            store.close()
        return results
    finally:
        for backend in backends.values():
            await backend.aclose()
        await audit.aclose()


def _interval(result: dict[str, Any]) -> str:
    if result["kind"] != "estimate":
        return f"insufficient data: {result['reason']}"
    return f"{result['value']:.3f}  [{result['low']:.3f}, {result['high']:.3f}]"


def describe(result: Any, origin: str) -> list[str]:
    """A human-readable report of one ``ProbeSetAudit``."""
    r = result.to_dict()
    version = r["version"] or "server default"
    lines = [
        f"{r['probe_set']} on {r['model']} ({r['backend']}:{r['backend_model']}, version {version}): "
        f"{r['status'].upper()}",
        f"  audit {r['audit_id']}, {r['requests']} requests; ledger entry {result.seq} in log {origin}",
    ]
    for a in r["attributes"]:
        lines.append(f"  {a['attribute']}: {a['status'].upper()}")
        rates = {g["group"]: g["selection_rate"] for g in (a["metrics"] or {}).get("groups", [])}
        for c in a["counts"]:
            rate = _interval(rates[c["group"]]) if c["group"] in rates else "no answers read"
            lines.append(
                f"    {c['group']:<16} selection rate {rate}   ({c['read']} of {c['requests']} read, "
                f"{c['unparseable']} unparseable, {c['failed']} failed, {c['refused']} refused)"
            )
        for check in a["checks"]:
            lines.append(f"    {check['status']:<17} {check['metric']}: {check['reason']}")
    return lines
