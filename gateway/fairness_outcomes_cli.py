"""``gateway fairness outcomes upload FILE`` and the outcome audits of ``gateway fairness run NAME``.

``outcomes upload`` is a client of a running gateway's ``POST /admin/fairness/outcomes``, with an API key: the
upload goes through the same authorization (Casbin ``label``), checks, transaction and ledger entry as any
other, in the name of the key's owner.

``run`` of an outcome audit reads the decision records and outcomes from the store beside the ledger and
writes its entries to the CLI's own log, ``<ledger.origin>/fairness``, like a probe audit run from the command
line (``gateway.fairness_cli`` says why); its results go to the same results store as the gateway's.
"""

from __future__ import annotations

import getpass
import sys
import time
from pathlib import Path
from typing import Any

import click

from gateway._cli import api_client, api_error, ca_option, config_option, url_option
from gateway.settings import Settings


@click.group()
def outcomes() -> None:
    """Ground-truth outcomes of decision models, for their outcome audits."""


@outcomes.command("upload")
@config_option
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@url_option
@ca_option
@click.option("--api-key", envvar="GATEWAY_API_KEY", required=True, help="An API key with `label` on "
              "/admin/fairness/outcomes and on the models (also GATEWAY_API_KEY).")  # fmt: skip
def upload(config_file: Path | None, file: Path, url: str | None, ca_file: Path | None, api_key: str) -> None:
    """Upload FILE, a CSV with the header request_id,outcome (outcome 1 or 0); all rows or none are imported."""
    import httpx

    body = file.read_bytes()
    try:
        with api_client(config_file, url, ca_file, api_key) as client:
            r = client.post("/admin/fairness/outcomes", content=body, headers={"content-type": "text/csv"})
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach the gateway: {exc}") from None
    if r.status_code != 200:
        raise api_error(r)
    a = r.json()
    models = ", ".join(f"{m} ({n})" for m, n in sorted(a["models"].items()))
    click.echo(f"uploaded {a['rows']} outcomes ({a['positives']} positive) for {models}")
    click.echo(f"upload {a['id']}, sha256 {a['sha256']}; ledger entry {a['ledger']['seq']} in log {a['ledger']['log']}")


def configured_version(settings: Settings, model: str) -> str:
    return next((m.version for m in settings.models if m.name == model), "")


async def audit_outcomes(settings: Settings, entry: Any, models: tuple[str, ...]) -> list[Any]:
    """Run the outcome audit ``entry`` against ``models`` (default its own) with the CLI's ledger log."""
    from gateway.audit import AuditTrail
    from gateway.authz.store import PolicyStore
    from gateway.errors import GatewayError, PolicyError
    from gateway.fairness._compute import worker_pool
    from gateway.fairness.outcome_runner import OutcomeServices, run_outcome_audit
    from gateway.fairness.report import record_of
    from gateway.fairness.store import FairnessStore, fairness_url
    from ledger.log import LedgerUnavailable
    from ledger.store import StoreError

    try:
        audit = await AuditTrail.open(settings)
    except (LedgerUnavailable, StoreError, OSError) as exc:
        raise click.ClickException(f"the audit ledger cannot open: {exc}") from None
    store = None
    try:
        try:
            policy = PolicyStore(settings.policy.dir, audit)
        except PolicyError as exc:
            raise click.ClickException(f"policy: {exc}") from None
        store = FairnessStore(fairness_url(settings.ledger_store()))
        services = OutcomeServices(store, audit, policy.engine.version)
        wanted = models or entry.audit.models
        unknown = [m for m in wanted if m not in entry.audit.models]
        if unknown:
            raise click.ClickException(f"outcome audit {entry.audit.name!r} does not audit model {unknown[0]!r}")
        results = []
        label = f"auditing ({entry.audit.name})"
        with click.progressbar(length=2 * len(wanted), label=label, file=sys.stderr, show_pos=True) as bar:
            async with worker_pool() as pool:
                for model in wanted:
                    started = time.time()
                    try:
                        reports = await run_outcome_audit(
                            services, entry, model, requested_by=f"cli:{getpass.getuser()}",
                            current_version=configured_version(settings, model), progress=bar.update, executor=pool,
                        )  # fmt: skip
                    except GatewayError as exc:
                        raise click.ClickException(f"{model}: {exc.message}") from None
                    for report in reports:
                        store.save_audit(record_of(report, started=started, finished=time.time(),
                                                   log=settings.ledger.origin))  # fmt: skip
                    results += reports
        return results
    finally:
        if store is not None:
            store.close()
        await audit.aclose()


def _value(result: dict[str, Any] | None) -> str:
    if result is None:
        return "-"
    if result["kind"] != "estimate":
        return "n/a"
    return f"{result['value']:.3f}"


def describe_outcome(report: Any, origin: str) -> list[str]:
    """A human-readable report of one ``OutcomeAuditReport``."""
    r = report.to_dict()
    lines = [
        f"{r['audit']} on {r['model']} (version {r['version'] or 'server default'}): {r['status'].upper()}",
        f"  audit {r['audit_id']}, decisions from {r['window']['from']} to {r['window']['to']}; ledger entry "
        f"{report.seq} in log {origin}",
    ]
    acc, base = r["accuracy"], r["baseline"]
    if acc is not None:
        line = f"  accuracy {acc['value']:.3f} [{acc['low']:.3f}, {acc['high']:.3f}]"
        if base is not None:
            line += f"; baseline {base['accuracy']:.3f} ({base['source']})"
        lines.append(line)
    rates = {g["group"]: g for g in (r["metrics"] or {}).get("groups", [])}
    lines.append(f"  {r['attribute']:<16} {'recorded':>9} {'labelled':>9} {'unread':>7}  "
                 f"{'selected':>8} {'TPR':>6} {'FPR':>6} {'accuracy':>8}")  # fmt: skip
    for c in r["coverage"]:
        g = rates.get(c["group"], {})
        lines.append(f"  {c['group']:<16} {c['recorded']:>9} {c['labelled']:>9} {c['unreadable']:>7}  "
                     f"{_value(g.get('selection_rate')):>8} {_value(g.get('true_positive_rate')):>6} "
                     f"{_value(g.get('false_positive_rate')):>6} {_value(g.get('accuracy')):>8}")  # fmt: skip
    for check in r["checks"]:
        lines.append(f"  {check['status']:<17} {check['metric']}: {check['reason']}")
    return lines
