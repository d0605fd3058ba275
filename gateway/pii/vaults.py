"""Pseudonym vaults that outlive a request: one per conversation, encrypted at rest (AES-GCM).

With ``pseudonym_scope: conversation`` in pii.yaml, a caller that sends ``X-Conversation-Id``
gets the same placeholder for the same value across all requests of that conversation, even
when a later request does not repeat the earlier text. The mapping is stored only encrypted:
AES-256-GCM under a key kept in ``state_dir/pii/vault.key`` (mode 0600), with the row's id as
associated data so a blob cannot be moved to another conversation. The id is an HMAC of the
caller and the conversation id, so neither appears in the store. Vaults expire after the
policy's ``conversation_ttl_s`` and are purged on write.
"""

from __future__ import annotations

import hmac
import os
import sqlite3
import threading
import time
from hashlib import sha256
from pathlib import Path

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.pii.redact import Vault


class VaultError(Exception):
    """A stored vault cannot be decrypted (wrong key, or the store was edited)."""


class VaultStore:
    def __init__(self, path: Path, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("the vault key must have 32 bytes")
        self._aead = AESGCM(key[:32])
        self._ids = key[32:] or sha256(b"vault-ids\0" + key).digest()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.text_factory = bytes  # an edited row may hold TEXT: read it as bytes, and let the tag fail
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS vaults (id BLOB PRIMARY KEY, nonce BLOB NOT NULL, "
                         "blob BLOB NOT NULL, expires REAL NOT NULL, version INTEGER NOT NULL)")  # fmt: skip
        self._lock = threading.Lock()

    def key_for(self, subject: str, conversation: str) -> bytes:
        """The row id of a caller's conversation: an HMAC, so the store names neither."""
        return hmac.new(self._ids, f"{subject}\0{conversation}".encode(), sha256).digest()

    def load(self, vid: bytes) -> tuple[Vault, int]:
        """The conversation's vault (or an empty one) and its version, for ``save``."""
        with self._lock:
            row = self._db.execute("SELECT nonce, blob, version FROM vaults WHERE id = ? AND expires > ?",
                                   (vid, time.time())).fetchone()  # fmt: skip
        if row is None:
            return Vault(), 0
        try:
            plain = self._aead.decrypt(bytes(row[0]), bytes(row[1]), vid)
        except InvalidTag:
            raise VaultError("a stored pseudonym vault does not decrypt: wrong key, or the store was edited") from None
        return Vault.from_json(orjson.loads(plain)), int(row[2])

    def save(self, vid: bytes, vault: Vault, ttl_s: float, version: int) -> bool:
        """Store ``vault`` if it is still at ``version`` (compare and swap); False if another request changed it
        meanwhile, and then the caller loads it again and redoes its work."""
        nonce = os.urandom(12)
        blob = self._aead.encrypt(nonce, orjson.dumps(vault.to_json()), vid)
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT version, expires FROM vaults WHERE id = ?", (vid,)).fetchone()
                current = 0 if row is None or row[1] <= now else int(row[0])
                if current != version:
                    self._db.execute("ROLLBACK")
                    return False
                self._db.execute("INSERT OR REPLACE INTO vaults VALUES (?, ?, ?, ?, ?)",
                                 (vid, nonce, blob, now + ttl_s, version + 1))  # fmt: skip
                self._db.execute("DELETE FROM vaults WHERE expires <= ?", (now,))
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        return True

    def close(self) -> None:
        self._db.close()
