"""``gateway ledger ...``: verify, export, prove, and the keys an auditor needs."""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import orjson

from gateway._cli import config_option, load_settings
from gateway.settings import Settings


@contextmanager
def _store(settings: Settings) -> Iterator[Any]:
    from ledger.store import StoreError, open_store

    try:
        store = open_store(settings.ledger_store())
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        yield store
    finally:
        store.close()


def verifier_key(settings: Settings) -> str:
    """This gateway's checkpoint verifier key (from its signing key)."""
    from ledger.checkpoint import NoteSigner, load_signing_key

    path = settings.ledger.signing_key or settings.ledger_dir() / "checkpoint.key"
    try:
        return NoteSigner(load_signing_key(path), settings.ledger.origin).verifier_key
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot read the checkpoint key {path}: {exc}") from None


def record(settings: Settings, kind: str, data: dict[str, Any]) -> int:
    """Write one durable entry from the command line (key lifecycle); the running gateway absorbs it."""
    from gateway.audit import ledger_config
    from ledger.log import Ledger, LedgerUnavailable
    from ledger.store import StoreError

    ledger = Ledger(ledger_config(settings))
    try:
        ledger.start()
        return ledger.commit_sync(kind, f"cli:{getpass.getuser()}", data)
    except (LedgerUnavailable, StoreError) as exc:
        raise click.ClickException(f"the audit ledger cannot record {kind}: {exc}") from None
    finally:
        ledger.close()


@click.group("ledger")
def ledger() -> None:
    """Verify and export the tamper-evident audit ledger."""


@ledger.command("verify")
@config_option
@click.option("--chain/--no-chain", default=None, help="Check anchors on the chain (default: when one is configured).")
@click.option(
    "--key",
    "keys",
    multiple=True,
    help="A published verifier key to pin; repeat for several logs (default: this gateway's own).",
)
@click.option("--all-logs", is_flag=True, help="Verify every log in the store (each replica's), not only this one.")
@click.option("--json", "as_json", is_flag=True, help="Print the reports as JSON.")
def verify(config_file: Path | None, chain: bool | None, keys: tuple[str, ...], all_logs: bool, as_json: bool) -> None:
    """Recompute every hash, link, Merkle root, checkpoint signature and anchor. Exit 1 on tampering."""
    from ledger.verifier import verify_log

    settings = load_settings(config_file)
    by_log: dict[str, str] = {}
    for k in keys:
        by_log.setdefault(k.split("+", 1)[0], k)
    use_chain = settings.ledger.chain.enabled if chain is None else chain
    with _store(settings) as store, _chain(settings, use_chain) as anchor:
        origins = store.logs() if all_logs else [settings.ledger.origin]
        vkeys = {o: _key_for(settings, o, by_log, bool(keys)) for o in origins}
        reports = []
        for origin in origins:
            with click.progressbar(length=store.count(origin), label=f"verifying {origin}", file=sys.stderr,
                                   show_pos=True) as bar:  # fmt: skip
                reports.append(verify_log(store, origin, vkeys[origin], chain=anchor, progress=bar.update))
    if as_json:
        click.echo(orjson.dumps([r.to_dict() for r in reports], option=orjson.OPT_INDENT_2).decode())
    failed = False
    for report in reports:
        if not as_json:
            chain_note = f"{report.anchors_checked} anchors checked on the chain" if report.chain_checked else (
                "chain not checked")  # fmt: skip
            click.echo(f"{report.origin}: {report.entries} entries, {report.checkpoints} checkpoints, {chain_note}")
            if report.entries:
                click.echo(f"  anchored through tree size {report.anchored_size}; {report.unanchored} newer entries "
                           "are not anchored yet")  # fmt: skip
        for p in report.problems:
            click.echo(f"TAMPERED: {report.origin}: {p}", err=True)
        failed = failed or not report.ok
    if failed:
        sys.exit(1)
    if not as_json:
        click.echo("OK")


def _key_for(settings: Settings, origin: str, pinned: dict[str, str], any_pinned: bool) -> str:
    """The verifier key for ``origin``: a pinned one, else this gateway's own for its own log."""
    if origin in pinned:
        return pinned[origin]
    if origin == settings.ledger.origin and not any_pinned:
        return verifier_key(settings)
    raise click.ClickException(f"no --key for log {origin!r} (a verifier key starts with its log's name)")


@contextmanager
def _chain(settings: Settings, enabled: bool) -> Iterator[Any]:
    """A read-only connection to the chain (no key, nothing changed on it).

    The embedded node is started from its saved state when the gateway is not running.
    """
    if not enabled:
        yield None
        return
    from gateway.chain import embedded_anvil
    from ledger.anchor import ChainAnchor, ChainError

    c = settings.ledger.chain
    contract = c.contract
    if c.rpc_url == "embedded" and contract is None:
        chain_file = settings.ledger_dir() / "chain.json"
        try:
            contract = json.loads(chain_file.read_text())["contract"]
        except (OSError, ValueError, KeyError) as exc:
            raise click.ClickException(f"no anchoring contract recorded in {chain_file}: {exc} "
                                       "(or pass --no-chain)") from None  # fmt: skip
    if contract is None:
        raise click.ClickException("ledger.chain.contract is not set (or pass --no-chain)")
    node = None
    try:
        try:
            anchor = ChainAnchor.reader(c.url(), c.chain_id, contract)
        except (ChainError, OSError):
            if c.rpc_url != "embedded":
                raise
            node = embedded_anvil(settings)  # the gateway is not running: read its saved chain state
            node.start()
            anchor = ChainAnchor.reader(node.url, c.chain_id, contract)
    except (ChainError, OSError) as exc:
        if node is not None:
            node.stop()
        raise click.ClickException(f"cannot reach the chain to check anchors: {exc} (or pass --no-chain)") from None
    try:
        yield anchor
    finally:
        anchor.close()
        if node is not None:
            node.stop()


@ledger.command("export")
@config_option
@click.option("--since", default="0", help="First entry: a sequence number or an ISO 8601 time (UTC).")
@click.option("--format", "fmt", type=click.Choice(["jsonl"]), default="jsonl", show_default=True)
@click.option("--output", "-o", type=click.Path(path_type=Path, dir_okay=False), help="File (default: stdout).")
def export(config_file: Path | None, since: str, fmt: str, output: Path | None) -> None:
    """Export entries as JSON lines for SIEM tools (each line: the entry and its hash)."""
    settings = load_settings(config_file)
    start, after = _since(since)
    out = output.open("wb") if output else sys.stdout.buffer
    n = 0
    try:
        with _store(settings) as store:
            for _, digest, body in store.read(settings.ledger.origin, start):
                entry = orjson.loads(body)
                if after is not None and entry["ts"] < after:
                    continue
                out.write(orjson.dumps({**entry, "hash": digest.hex()}) + b"\n")
                n += 1
    finally:
        if output:
            out.close()
    if output:
        click.echo(f"exported {n} entries to {output}", err=True)


def _since(value: str) -> tuple[int, str | None]:
    if value.isdigit():
        return int(value), None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter("use a sequence number or an ISO 8601 time", param_hint="--since") from None
    from ledger.entry import timestamp

    return 0, timestamp(when.timestamp())


@ledger.command("proof")
@config_option
@click.argument("seq", type=click.IntRange(min=0))
def proof(config_file: Path | None, seq: int) -> None:
    """Print the proof bundle of entry SEQ (check it with: python -m ledger.verify FILE)."""
    from ledger.proof import ProofUnavailable, build_proof

    settings = load_settings(config_file)
    with _store(settings) as store:
        try:
            bundle = build_proof(store, settings.ledger.origin, seq, verifier_key(settings))
        except ProofUnavailable as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(orjson.dumps(bundle, option=orjson.OPT_INDENT_2).decode())


@ledger.command("key")
@config_option
def key(config_file: Path | None) -> None:
    """Print the checkpoint verifier key to publish to auditors."""
    click.echo(verifier_key(load_settings(config_file)))


@ledger.command("digest")
@config_option
@click.argument("body", type=click.File("rb"))
def digest(config_file: Path | None, body: Any) -> None:
    """Print the keyed digest of a request or response body, to match it against an entry."""
    from ledger.digest import BodyDigester, load_or_create_key

    settings = load_settings(config_file)
    path = settings.ledger.body_key or settings.ledger_dir() / "body-hmac.key"
    if not path.exists():
        raise click.ClickException(f"no body key at {path}")
    click.echo(BodyDigester(load_or_create_key(path)).digest(body.read()))
