"""Keyed digests of request and response bodies: the ledger stores these, never the bodies.

A plain hash of a prompt could be reversed by guessing (a dictionary of likely prompts). An
HMAC-SHA256 under a secret key cannot, yet whoever holds the key and a body can show that the
body is the one the ledger recorded (``gateway ledger digest FILE``).
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from hashlib import sha256
from pathlib import Path

from ledger.checkpoint import KeyFileError

PREFIX = "hmac-sha256:"


def _check_private(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyFileError(f"{path} has mode {mode:04o}: other users could read it; run: chmod 600 {path}")


def load_or_create_key(path: Path) -> bytes:
    """The 32-byte HMAC key in ``path`` (hex), created with mode 0600 if it does not exist."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it first: read theirs
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
                f.flush()
                os.fsync(f.fileno())
    _check_private(path)
    text = path.read_text().strip()
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
