"""API keys for services: stored only as salted scrypt hashes, in SQLite.

A key reads ``gk_<id>_<secret>``. The id (12 hex characters) names the key in logs and in the
audit ledger; the secret (32 random bytes, base64url) is shown once, at creation, and stored
only as ``scrypt(secret, salt)``. Verifying a key costs one scrypt (tens of milliseconds), so a
successful verification is remembered in memory by the SHA-256 of the whole key; revocation and
expiry are still read from the database on every request, so they take effect at once, also
when another process (``gateway keys revoke``) made the change.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from gateway.identity.principal import Principal

PREFIX = "gk_"
_N, _R, _P = 2**14, 8, 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    roles TEXT NOT NULL,
    salt BLOB NOT NULL,
    hash BLOB NOT NULL,
    created REAL NOT NULL,
    expires REAL,
    revoked REAL
)
"""


class KeyError_(Exception):
    """A presented key is malformed, unknown, revoked, expired or wrong. The message is safe to log."""


@dataclass(frozen=True)
class KeyInfo:
    id: str
    owner: str
    roles: tuple[str, ...]
    created: float
    expires: float | None
    revoked: float | None


def _hash(secret: str, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=32, n=_N, r=_R, p=_P).derive(secret.encode())


def parse(token: str) -> tuple[str, str]:
    """(key id, secret) of a presented key; raises KeyError_ when it does not have the form."""
    if not token.startswith(PREFIX):
        raise KeyError_("not an API key")
    key_id, sep, secret = token[len(PREFIX) :].partition("_")
    if not sep or len(key_id) != 12 or not secret:
        raise KeyError_("malformed API key")
    return key_id, secret


class APIKeyStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        self._verified: dict[bytes, str] = {}

    def create(self, owner: str, roles: list[str], ttl_s: float | None = None) -> tuple[KeyInfo, str]:
        """A new key; returns its info and the whole key, which is never stored and never shown again."""
        if not owner or not roles:
            raise ValueError("a key needs an owner and at least one role")
        key_id = secrets.token_hex(6)
        secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        salt = secrets.token_bytes(16)
        now = time.time()
        expires = now + ttl_s if ttl_s else None
        self._db.execute(
            "INSERT INTO api_keys (id, owner, roles, salt, hash, created, expires) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (key_id, owner, ",".join(roles), salt, _hash(secret, salt), now, expires),
        )
        return KeyInfo(key_id, owner, tuple(roles), now, expires, None), f"{PREFIX}{key_id}_{secret}"

    def list(self) -> list[KeyInfo]:
        rows = self._db.execute("SELECT id, owner, roles, created, expires, revoked FROM api_keys ORDER BY created")
        return [KeyInfo(r[0], r[1], tuple(r[2].split(",")), r[3], r[4], r[5]) for r in rows]

    def revoke(self, key_id: str) -> bool:
        """Revoke a key; False when there is no such key or it was already revoked."""
        cur = self._db.execute(
            "UPDATE api_keys SET revoked = ? WHERE id = ? AND revoked IS NULL", (time.time(), key_id)
        )
        return cur.rowcount == 1

    async def verify(self, token: str) -> Principal:
        key_id, secret = parse(token)
        row = self._db.execute(
            "SELECT owner, roles, salt, hash, expires, revoked FROM api_keys WHERE id = ?", (key_id,)
        ).fetchone()
        if row is None:
            raise KeyError_(f"unknown API key {key_id}")
        owner, roles, salt, stored, expires, revoked = row
        if revoked is not None:
            raise KeyError_(f"API key {key_id} is revoked")
        if expires is not None and expires < time.time():
            raise KeyError_(f"API key {key_id} has expired")
        digest = hashlib.sha256(token.encode()).digest()
        if self._verified.get(digest) != key_id:
            # scrypt takes tens of ms: off the event loop
            if not hmac.compare_digest(await asyncio.to_thread(_hash, secret, salt), stored):
                raise KeyError_(f"wrong secret for API key {key_id}")
            if len(self._verified) > 10_000:
                self._verified.clear()
            self._verified[digest] = key_id
        return Principal(f"apikey:{key_id}", "apikey", frozenset(roles.split(",")), owner)

    def close(self) -> None:
        self._db.close()
