"""Signing and checking reports: Ed25519 over the RFC 8785 canonical JSON of the report body.

A report file is ``{"report": BODY, "signature": SIG}``. ``SIG`` is
``{"alg": "Ed25519", "key_id": hex(SHA-256(public key)), "public_key": base64(32-byte raw public key),
"value": base64(64-byte signature over canonical(BODY))}``; it is outside the signed bytes, so the file is
the body and its detached signature side by side. ``BODY`` holds the SHA-256 of the PDF and CSV renderings
(``files``), and ``report_sha256`` = SHA-256(canonical(BODY)) is what the ``report.created`` ledger entry
records. The public key is also served at ``GET /admin/reports/key``: a verifier pins it rather than trust
the one inside the file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger.checkpoint import load_or_create_signing_key
from ledger.entry import EntryError, canonical

ALG = "Ed25519"


class ReportSignatureError(ValueError):
    """A report whose signature, key or digest does not check out; the message says which."""


def report_digest(body: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of a report body."""
    return hashlib.sha256(canonical(body)).hexdigest()


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class ReportSigner:
    """Signs report bodies with the gateway's report key (PKCS#8 PEM, 0600, created at the first start)."""

    def __init__(self, path: Path) -> None:
        self._key: Ed25519PrivateKey = load_or_create_signing_key(path)
        self.public_raw = _raw(self._key.public_key())
        self.key_id = hashlib.sha256(self.public_raw).hexdigest()

    def public(self) -> dict[str, str]:
        """The published key: what ``GET /admin/reports/key`` serves."""
        return {"alg": ALG, "key_id": self.key_id, "public_key": base64.b64encode(self.public_raw).decode()}

    def sign(self, body: dict[str, Any]) -> dict[str, Any]:
        """The signed report document for ``body``."""
        value = self._key.sign(canonical(body))
        return {"report": body, "signature": {**self.public(), "value": base64.b64encode(value).decode()}}


def check_signature(document: Any, pinned_key: str | None = None) -> dict[str, Any]:
    """The body of a signed report document whose signature verifies; ``pinned_key`` (base64 raw public key)
    must then be the signing key. Raises ``ReportSignatureError``."""
    if not isinstance(document, dict) or set(document) != {"report", "signature"}:
        raise ReportSignatureError("not a signed report: expected exactly the members report and signature")
    body, sig = document["report"], document["signature"]
    if not isinstance(body, dict) or not isinstance(sig, dict):
        raise ReportSignatureError("report and signature must be JSON objects")
    if sig.get("alg") != ALG:
        raise ReportSignatureError(f"signature algorithm {sig.get('alg')!r} is not {ALG}")
    try:
        raw = base64.b64decode(str(sig.get("public_key", "")), validate=True)
        value = base64.b64decode(str(sig.get("value", "")), validate=True)
        key = Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError) as exc:
        raise ReportSignatureError(f"the signature block is malformed: {exc}") from None
    if hashlib.sha256(raw).hexdigest() != sig.get("key_id"):
        raise ReportSignatureError("key_id is not the SHA-256 of the public key")
    if pinned_key is not None and base64.b64encode(raw).decode() != pinned_key.strip():
        raise ReportSignatureError("the report is signed by another key than the pinned one")
    try:
        key.verify(value, canonical(body))
    except InvalidSignature:
        raise ReportSignatureError("the signature does not verify: the report was altered") from None
    except EntryError as exc:
        raise ReportSignatureError(str(exc)) from None
    return body
