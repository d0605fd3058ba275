"""``gateway report create`` and ``gateway report verify``: compliance reports (docs/reports.md).

``create`` is a client of a running gateway's ``POST /admin/reports``, with an API key holding ``report``: the
report's statistics spend that key owner's privacy budget. It shows the job's progress and saves the file.

``verify`` checks a downloaded report and needs no running gateway:

1. the Ed25519 signature over the canonical JSON of the body (pinned with ``--public-key``, else the key
   named in the file, which the ledger entry then binds);
2. ``--pdf`` / ``--csv``: the file's SHA-256 is the one the signed body names;
3. the ``report.created`` ledger entry: with ``--proof`` a proof bundle of that entry
   (``GET /admin/ledger/entries/{seq}/proof``, checked offline with ``ledger.verify``), else read from the
   ledger store of ``--config``. Its ``report_sha256`` and ``key_id`` must be the report's.

Exit status 0: every check passed; 1: a check failed; 2: the input could not be read.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path
from typing import Any

import click
import httpx
import orjson

from gateway._cli import api_client, api_error, ca_option, config_option, load_settings, url_option


@click.group()
def report() -> None:
    """Signed compliance reports over a period (docs/reports.md)."""


@report.command("create")
@config_option
@click.option("--from", "start", required=True, help="First UTC day, YYYY-MM-DD.")
@click.option("--to", "end", required=True, help="Last UTC day, YYYY-MM-DD (inclusive).")
@click.option("--section", "sections", multiple=True, help="A section to include (repeat; default: all).")
@click.option("--format", "fmt", type=click.Choice(["pdf", "json", "csv"]), default="pdf", show_default=True)
@click.option("--output", "-o", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Default: report-<id>.<format> in the current folder.")  # fmt: skip
@click.option("--timeout", type=float, default=600.0, show_default=True, help="Seconds to wait for the report.")
@url_option
@ca_option
@click.option("--api-key", envvar="GATEWAY_API_KEY", required=True,
              help="An API key with `report` on /admin/reports (also GATEWAY_API_KEY).")  # fmt: skip
def create(config_file: Path | None, start: str, end: str, sections: tuple[str, ...], fmt: str, output: Path | None,
           timeout: float, url: str | None, ca_file: Path | None, api_key: str) -> None:  # fmt: skip
    """Generate a report on the gateway, wait for it (showing its progress) and download it."""
    body: dict[str, Any] = {"period": {"from": start, "to": end}}
    if sections:
        body["sections"] = list(sections)
    try:
        with api_client(config_file, url, ca_file, api_key) as client:
            r = client.post("/admin/reports", json=body)
            if r.status_code != 202:
                raise api_error(r)
            rid, last = r.json()["id"], ""
            deadline = time.monotonic() + timeout
            while True:
                r = client.get(f"/admin/reports/{rid}")
                if r.status_code != 200:
                    raise api_error(r)
                status = r.json()
                step = status["progress"] or status["status"]
                if step != last:
                    click.echo(f"report {rid}: {step}", err=True)
                    last = step
                if status["status"] == "failed":
                    raise click.ClickException(f"report {rid} failed: {status['error']}")
                if status["status"] == "done":
                    break
                if time.monotonic() > deadline:
                    raise click.ClickException(f"report {rid} is still {status['status']} after {timeout} s")
                time.sleep(0.5)
            r = client.get(f"/admin/reports/{rid}.{fmt}")
            if r.status_code != 200:
                raise api_error(r)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach the gateway: {exc}") from None
    path = output or Path(f"report-{rid}.{fmt}")
    path.write_bytes(r.content)
    click.echo(f"{path} ({len(r.content)} bytes, sha256 {hashlib.sha256(r.content).hexdigest()})")


class _Failed(click.ClickException):
    exit_code = 1


def _ledger_entry(config_file: Path | None, rid: str) -> tuple[dict[str, Any], str]:
    """The ``report.created`` entry of report ``rid`` in the configured ledger store, and where it is."""
    from ledger.store import StoreError, open_store

    settings = load_settings(config_file)
    try:
        store = open_store(settings.ledger_store())
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    marker, rid_bytes = b'"kind":"report.created"', rid.encode()
    try:
        for log in store.logs():
            for seq, digest, body in store.read(log):
                if marker in body and rid_bytes in body:
                    entry = orjson.loads(body)
                    if entry["kind"] == "report.created" and entry["data"].get("id") == rid:
                        if hashlib.sha256(body).digest() != digest:
                            raise _Failed(f"ledger: entry {log}#{seq} does not match its hash")
                        return entry, f"{log}#{seq}"
    finally:
        store.close()
    raise _Failed(f"ledger: no report.created entry for report {rid}: it was not issued by this gateway")


def _proof_entry(proof: Path, ledger_key: str | None) -> tuple[dict[str, Any], str]:
    from ledger.verify import BundleError, ProofError, verify_bundle

    try:
        bundle = orjson.loads(proof.read_bytes())
        verified = verify_bundle(bundle, ledger_key)
    except (OSError, orjson.JSONDecodeError, BundleError) as exc:
        raise click.ClickException(f"{proof}: {exc}") from None
    except ProofError as exc:
        raise _Failed(f"ledger: the proof bundle does not verify: {exc}") from None
    entry: dict[str, Any] = bundle["entry"]
    return entry, f"{verified.origin}#{verified.seq} (in checkpoint of size {verified.tree_size})"


@report.command("verify")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--pdf", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="The report's PDF: its SHA-256 must be the signed one.")  # fmt: skip
@click.option("--csv", "csv_file", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="The report's CSV: its SHA-256 must be the signed one.")  # fmt: skip
@click.option("--public-key", default=None, help="Pin the report key (base64, from GET /admin/reports/key).")
@click.option(
    "--proof",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="Proof bundle of the report.created entry: check offline instead of reading the ledger store.",
)
@click.option("--ledger-key", default=None, help="With --proof: pin the ledger's verifier key.")
@config_option
def verify(file: Path, pdf: Path | None, csv_file: Path | None, public_key: str | None, proof: Path | None,
           ledger_key: str | None, config_file: Path | None) -> None:  # fmt: skip
    """Check a report's signature, its files' digests and its ledger entry. Exit 1 on any mismatch."""
    from gateway.reports.sign import ReportSignatureError, check_signature, report_digest

    try:
        document = orjson.loads(file.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        click.echo(f"error: {file}: {exc}", err=True)
        sys.exit(2)
    try:
        body = check_signature(document, public_key)
    except ReportSignatureError as exc:
        raise _Failed(f"signature: {exc}") from None
    digest, key_id = report_digest(body), document["signature"]["key_id"]
    click.echo(f"signature: valid (Ed25519, key {key_id[:16]}...); report {body.get('id')}, sha256 {digest}")
    for name, path in (("pdf", pdf), ("csv", csv_file)):
        if path is None:
            continue
        want = body.get("files", {}).get(name, {}).get("sha256")
        if hashlib.sha256(path.read_bytes()).hexdigest() != want:
            raise _Failed(f"{name.upper()}: {path} is not the file this report signed (SHA-256 differs)")
        click.echo(f"{name.upper()}: matches the signed SHA-256")
    entry, where = _proof_entry(proof, ledger_key) if proof else _ledger_entry(config_file, str(body.get("id")))
    data = entry.get("data", {})
    if entry.get("kind") != "report.created" or data.get("id") != body.get("id"):
        raise _Failed("ledger: the entry is not the report.created entry of this report")
    if data.get("report_sha256") != digest:
        raise _Failed(f"ledger: entry {where} records another digest: the report was altered or re-signed")
    if data.get("key_id") != key_id:
        raise _Failed(f"ledger: entry {where} names another signing key")
    click.echo(f"ledger: report.created at {where}, {entry.get('ts')}, by {entry.get('actor')}: digest matches")
