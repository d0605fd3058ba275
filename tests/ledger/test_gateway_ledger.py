"""The gateway on its ledger: entries per request, anchoring, proofs over the API, fail closed, the CLI."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from gateway.cli import main
from ledger.anchor import Anvil
from ledger.store import StoreError, open_store
from ledger.verify import verify_bundle
from tests.conftest import POLICIES, TEST_MODELS, create_app, in_process, make_settings, new_key
from tests.ledger.conftest import deploy_on, make_anchor_key

CHAT = "/v1/chat/completions"


def _chain_settings(triton: Any, tmp_path: Path, node: Anvil) -> Any:
    key = make_anchor_key(tmp_path)
    config = deploy_on(node, key)
    return make_settings(triton, tmp_path, ledger={
        "checkpoint_every": 5, "checkpoint_interval_s": 0.2,
        "chain": {"enabled": True, "rpc_url": node.url, "chain_id": node.chain_id, "contract": config.contract_address,
                  "keystore": str(key.keystore), "password_file": str(key.password), "interval_s": 0.2},
    })  # fmt: skip


async def _until(predicate: Any, what: str, timeout_s: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_requests_are_recorded_anchored_and_provable(triton: Any, tmp_path: Path, anchor_anvil: Anvil) -> None:
    """A request's admission entry gets anchored; its proof bundle verifies offline and on the chain."""
    settings = _chain_settings(triton, tmp_path, anchor_anvil)
    app = create_app(settings)
    async with in_process(app, new_key(settings, "admin")) as c:
        r = await c.post(CHAT, json={"model": "echo", "messages": [{"role": "user", "content": "hello"}]})
        assert r.status_code == 200

        async def anchored() -> bool:
            a = (await c.get("/readyz")).json()["ledger"]["anchoring"]
            assert set(a) == {"ok", "error", "lag_s"}  # no sizes: anyone can read /readyz
            return bool(a["ok"] and app.state.gateway.audit.anchorer.status().anchored_size >= 5)

        await _until(anchored, "the first anchor")
        store = open_store(settings.ledger_store())
        entries = [json.loads(body) for _, _, body in store.read(settings.ledger.origin)]
        store.close()
        seq = next(e["seq"] for e in entries if e["kind"] == "request.admitted")
        bundle = (await c.get(f"/admin/ledger/entries/{seq}/proof")).json()
        if bundle.get("anchor") is None:  # the newest checkpoint is not anchored yet: ask again once it is
            await asyncio.sleep(0.5)
            bundle = (await c.get(f"/admin/ledger/entries/{seq}/proof")).json()
        assert bundle["entry"]["kind"] == "request.admitted" and bundle["anchor"] is not None
        verified = verify_bundle(bundle, rpc_url=anchor_anvil.url)
        assert verified.chain_checked and verified.seq == seq
        missing = await c.get("/admin/ledger/entries/99999/proof")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "entry_not_found"
        bad = await c.get("/admin/ledger/entries/-1/proof")
        assert bad.status_code == 400
    user = new_key(settings, "user")
    async with in_process(create_app(settings), user) as c:
        denied = await c.get(f"/admin/ledger/entries/{seq}/proof")
        assert denied.status_code == 403


class FailingStore:
    """A real store whose appends fail while ``broken`` (a full disk, a lost database)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.broken = inner, False

    def append(self, log: str, rows: Any) -> None:
        if self.broken:
            raise StoreError("disk I/O error")
        self.inner.append(log, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_ledger_failure_refuses_requests(triton: Any, tmp_path: Path) -> None:
    """When the ledger cannot write, requests get 503 before any backend call, and /readyz says why."""
    settings = make_settings(triton, tmp_path, ledger={"chain": {"enabled": False}})
    app = create_app(settings)
    async with in_process(app, new_key(settings, "admin")) as c:
        ledger = app.state.gateway.audit.ledger
        failing = FailingStore(ledger._store)
        ledger._store = failing
        failing.broken = True
        r = await c.post(CHAT, json={"model": "echo", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 503 and r.json()["error"]["code"] == "audit_unavailable"
        ready = await c.get("/readyz")
        assert ready.status_code == 503 and "disk I/O error" in ready.json()["ledger"]["error"]
        failing.broken = False
        r = await c.post(CHAT, json={"model": "echo", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 200
        assert (await c.get("/readyz")).json()["ledger"]["ok"] is True


def _config_file(tmp_path: Path, triton: Any) -> Path:
    values = {
        "state_dir": str(tmp_path), "local_triton": {"enabled": False},
        "backends": {"triton": {"kind": "triton", "url": triton.grpc_url}},
        "models": [m for m in TEST_MODELS if m["backend"] == "triton"],
        "policy": {"dir": str(POLICIES), "watch": False},
        "ledger": {"chain": {"enabled": False}, "checkpoint_interval_s": 0.1},
    }  # fmt: skip
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(yaml.safe_dump(values))
    return cfg


async def test_cli_records_keys_verifies_exports_and_detects_tampering(triton: Any, tmp_path: Path) -> None:
    """Key lifecycle lands in the ledger; verify passes, export and proof work, and an edit makes verify fail."""
    cfg = _config_file(tmp_path, triton)
    run = CliRunner().invoke
    created = run(main, ["keys", "create", "--config", str(cfg), "--owner", "team", "--role", "user"])
    assert created.exit_code == 0, created.output
    key_id = created.output.split("key id:", 1)[1].split()[0]
    assert run(main, ["keys", "revoke", "--config", str(cfg), key_id]).exit_code == 0
    verified = run(main, ["ledger", "verify", "--config", str(cfg)])
    assert verified.exit_code == 0, verified.output
    assert "OK" in verified.output
    exported = run(main, ["ledger", "export", "--config", str(cfg), "--since", "0"])
    lines = [json.loads(line) for line in exported.output.splitlines()]
    assert [e["kind"] for e in lines] == ["apikey.created", "apikey.revoked"]
    assert lines[0]["data"]["key_id"] == key_id and lines[0]["actor"].startswith("cli:")
    assert all(len(e["hash"]) == 64 for e in lines)
    proof = run(main, ["ledger", "proof", "--config", str(cfg), "1"])
    assert proof.exit_code == 0, proof.output
    vkey = run(main, ["ledger", "key", "--config", str(cfg)]).output.strip()
    assert verify_bundle(json.loads(proof.output), key=vkey).seq == 1
    db = sqlite3.connect(tmp_path / "ledger" / "ledger.sqlite3")
    db.execute("DROP TRIGGER ledger_entries_no_update")
    db.execute("UPDATE ledger_entries SET body = replace(body, 'team', 'mallory') WHERE seq = 0")
    db.commit()
    db.close()
    tampered = run(main, ["ledger", "verify", "--config", str(cfg)])
    assert tampered.exit_code == 1
    assert "TAMPERED: llm-gateway.local/default: entry 0:" in tampered.output and "[edited]" in tampered.output


@pytest.fixture
def own_pg_url() -> Any:
    """A database of this test's own: ``--all-logs`` must see only the logs the test writes."""
    from benches.bench_ledger import PG_ADMIN, postgres_db

    with postgres_db(PG_ADMIN, "gateway_test") as url:
        yield url


def test_cli_verifies_every_replica_log_on_postgres(triton: Any, tmp_path: Path, own_pg_url: str) -> None:
    """With PostgreSQL shared by replicas, ``verify --all-logs`` checks each replica's log under its own pinned key."""
    import psycopg

    pg_url = own_pg_url
    from ledger.log import Ledger, LedgerConfig

    cfg = _config_file(tmp_path, triton)
    values = yaml.safe_load(cfg.read_text())
    values["ledger"].update(store=pg_url, origin="gw.test/replica-a")
    cfg.write_text(yaml.safe_dump(values))
    run = CliRunner().invoke
    assert run(main, ["keys", "create", "--config", str(cfg), "--owner", "a", "--role", "user"]).exit_code == 0
    other = Ledger(LedgerConfig(store_url=pg_url, origin="gw.test/replica-b", signing_key=tmp_path / "b.key"))
    other.start()
    other.commit_sync("request.admitted", "key:gk_b", {"model": "echo"})
    other.close()
    key_a = run(main, ["ledger", "key", "--config", str(cfg)]).output.strip()
    only_b = run(main, ["ledger", "verify", "--config", str(cfg), "--all-logs", "--key", other.verifier_key])
    assert only_b.exit_code == 1 and "no --key for log 'gw.test/replica-a'" in only_b.output
    both = ["ledger", "verify", "--config", str(cfg), "--all-logs", "--key", key_a, "--key", other.verifier_key]
    ok = run(main, both)
    assert ok.exit_code == 0, ok.output
    assert "gw.test/replica-a: 1 entries" in ok.output and "gw.test/replica-b: 1 entries" in ok.output
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute(b"ALTER TABLE ledger_entries DISABLE TRIGGER USER")
        db.execute(
            b"UPDATE ledger_entries SET body = convert_to(replace(convert_from(body, 'UTF8'), 'echo', 'evil'), "
            b"'UTF8') WHERE log = 'gw.test/replica-b'"
        )
        db.execute(b"ALTER TABLE ledger_entries ENABLE TRIGGER USER")
    tampered = run(main, both)
    assert tampered.exit_code == 1
    assert "TAMPERED: gw.test/replica-b: entry 0:" in tampered.output and "[edited]" in tampered.output
