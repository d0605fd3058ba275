"""API keys: created once, stored as salted scrypt hashes, verified, revoked and expired."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.identity.apikeys import APIKeyStore, KeyError_


@pytest.fixture
def store(tmp_path: Path):
    s = APIKeyStore(tmp_path / "keys.sqlite3")
    yield s
    s.close()


async def test_create_and_verify(store: APIKeyStore, tmp_path: Path) -> None:
    """A new key verifies to its owner and roles; the database holds no secret, only a salted hash."""
    info, key = store.create("billing-svc", ["service"])
    p = await store.verify(key)
    assert p.subject == f"apikey:{info.id}" and p.roles == {"service"} and p.owner == "billing-svc"
    secret = key.split("_", 2)[2]
    raw = (tmp_path / "keys.sqlite3").read_bytes() + b"".join(
        bytes(r[0]) + bytes(r[1])
        for r in sqlite3.connect(tmp_path / "keys.sqlite3").execute("SELECT salt, hash FROM api_keys")
    )
    assert secret.encode() not in raw and key.encode() not in raw
    _, key2 = store.create("billing-svc", ["service"])
    salts = [r[0] for r in sqlite3.connect(tmp_path / "keys.sqlite3").execute("SELECT salt FROM api_keys")]
    assert len(set(salts)) == 2 and key2 != key


@pytest.mark.parametrize("mangle", [
    lambda k: k[:-1] + ("A" if k[-1] != "A" else "B"),  # wrong secret
    lambda k: "gk_000000000000_" + k.split("_", 2)[2],  # unknown id
    lambda k: "gk_short_secret",  # malformed
    lambda k: "gk_" + k[3:15],  # no secret
])  # fmt: skip
async def test_wrong_keys_are_refused(store: APIKeyStore, mangle) -> None:
    """A wrong secret, an unknown id or a malformed key is refused."""
    _, key = store.create("o", ["user"])
    await store.verify(key)  # warm the verified-key memory: it must not let a wrong key through
    with pytest.raises(KeyError_):
        await store.verify(mangle(key))


async def test_revoke_takes_effect_at_once(store: APIKeyStore, tmp_path: Path) -> None:
    """A key revoked by another process is refused on its next use, even though it was verified before."""
    info, key = store.create("o", ["user"])
    await store.verify(key)
    other = APIKeyStore(tmp_path / "keys.sqlite3")
    assert other.revoke(info.id) and not other.revoke(info.id)
    other.close()
    with pytest.raises(KeyError_, match="revoked"):
        await store.verify(key)


async def test_expiry(store: APIKeyStore) -> None:
    """An expired key is refused."""
    _, key = store.create("o", ["user"], ttl_s=1.0)
    await store.verify(key)
    await asyncio.sleep(1.1)  # expiry is wall-clock time: let it pass
    with pytest.raises(KeyError_, match="expired"):
        await store.verify(key)


def test_keys_cli(tmp_path: Path) -> None:
    """gateway keys create shows the key once; list never shows it; revoke marks it."""
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(f"state_dir: {tmp_path}\n")
    runner = CliRunner()
    created = runner.invoke(main, ["keys", "create", "-c", str(cfg), "--owner", "ops", "--role", "admin",
                                   "--role", "user", "--expires-in", "30d"])  # fmt: skip
    assert created.exit_code == 0, created.output
    key = next(line for line in created.output.splitlines() if line.startswith("gk_"))
    key_id = key.split("_")[1]
    listed = runner.invoke(main, ["keys", "list", "-c", str(cfg)])
    assert key_id in listed.output and "admin,user" in listed.output and key.split("_", 2)[2] not in listed.output
    assert "active" in listed.output
    assert runner.invoke(main, ["keys", "revoke", "-c", str(cfg), key_id]).exit_code == 0
    assert "revoked" in runner.invoke(main, ["keys", "list", "-c", str(cfg)]).output
    again = runner.invoke(main, ["keys", "revoke", "-c", str(cfg), key_id])
    assert again.exit_code == 1 and "no active key" in again.output
    bad = runner.invoke(main, ["keys", "create", "-c", str(cfg), "--owner", "x", "--role", "u", "--expires-in", "soon"])
    assert bad.exit_code == 2 and "--expires-in" in bad.output
