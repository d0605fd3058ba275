"""Keyed digests of request and response bodies: the ledger stores these, never the bodies.

A plain hash of a prompt could be reversed by guessing (a dictionary of likely prompts). An
HMAC-SHA256 under a secret key cannot, yet whoever holds the key and a body can show that the
body is the one the ledger recorded (``gateway ledger digest FILE``).
"""

from __future__ import annotations

import hmac
import os
import secrets
from hashlib import sha256
from pathlib import Path

from ledger.keyfile import KeyFileError, create_private, read_private

PREFIX = "hmac-sha256:"


def load_or_create_key(path: Path) -> bytes:
    """The HMAC key in ``path`` (hex, at least 32 bytes), created with 32 random bytes and mode 0600 if missing."""
    if not os.path.lexists(path):
        create_private(path, (secrets.token_hex(32) + "\n").encode())
    text = read_private(path).decode(errors="replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError as exc:
        raise KeyFileError(f"{path} does not hold a hex key") from exc
    if len(key) < 32:
        raise KeyFileError(f"{path} holds a {len(key)}-byte key; at least 32 bytes are needed")
    return key


class BodyDigester:
    """HMAC-SHA256 digests of bodies under one key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def digest(self, body: bytes) -> str:
        """``hmac-sha256:<hex>`` of ``body``."""
        return PREFIX + hmac.new(self._key, body, sha256).hexdigest()

    def matches(self, body: bytes, recorded: str) -> bool:
        """Whether ``body`` is the body whose digest the ledger recorded."""
        return hmac.compare_digest(self.digest(body), recorded)
