"""The report signature: what verifies, and each way a document is refused."""

from __future__ import annotations

import base64
import copy
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from gateway.reports.sign import ReportSignatureError, ReportSigner, check_signature, report_digest
from ledger.entry import canonical
from ledger.keyfile import KeyFileError

BODY: dict[str, Any] = {"id": "0" * 32, "period": {"from": "2026-11-01", "to": "2026-11-30"}, "n": 3, "x": 0.25}


def test_the_key_file_is_private_and_reused(tmp_path: Path) -> None:
    """Created 0600 on first use, the same key the next time; a file others can read is refused."""
    path = tmp_path / "reports" / "report.key"
    first = ReportSigner(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ReportSigner(path).public() == first.public()
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError):
        ReportSigner(path)


def test_a_signed_document_verifies_and_names_its_key(tmp_path: Path) -> None:
    """The signature covers canonical(body); key_id is the SHA-256 of the raw public key; a pinned key works."""
    signer = ReportSigner(tmp_path / "k")
    doc = signer.sign(BODY)
    assert check_signature(doc) == BODY
    assert check_signature(doc, pinned_key=signer.public()["public_key"]) == BODY
    sig = base64.b64decode(doc["signature"]["value"])
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    Ed25519PublicKey.from_public_bytes(signer.public_raw).verify(sig, canonical(BODY))
    assert len(report_digest(BODY)) == 64


def _mutations(tmp_path: Path) -> list[tuple[str, Any, str]]:
    other = ReportSigner(tmp_path / "other").public()
    return [
        ("a value changed", lambda d: d["report"].__setitem__("n", 4), "does not verify"),
        ("a member added", lambda d: d["report"].__setitem__("extra", True), "does not verify"),
        ("another algorithm", lambda d: d["signature"].__setitem__("alg", "RS256"), "algorithm"),
        ("a wrong key id", lambda d: d["signature"].__setitem__("key_id", "ab" * 32), "key_id"),
        ("another key", lambda d: d["signature"].update(other), "does not verify"),
        ("not base64", lambda d: d["signature"].__setitem__("value", "!!"), "malformed"),
        ("a member beside", lambda d: d.__setitem__("note", "hi"), "exactly"),
    ]


def test_each_alteration_is_refused(tmp_path: Path) -> None:
    """Changed body, added member, algorithm, key id, a swapped key, bad base64, extra top-level member."""
    doc = ReportSigner(tmp_path / "k").sign(BODY)
    for what, mutate, message in _mutations(tmp_path):
        altered = copy.deepcopy(doc)
        mutate(altered)
        with pytest.raises(ReportSignatureError) as err:
            check_signature(altered)
        assert message in str(err.value), what


def test_a_pinned_key_refuses_another_signer(tmp_path: Path) -> None:
    """A valid signature by another key than the published one is refused when the key is pinned."""
    doc = ReportSigner(tmp_path / "mallory").sign(BODY)
    published = ReportSigner(tmp_path / "gateway").public()["public_key"]
    with pytest.raises(ReportSignatureError, match="another key than the pinned one"):
        check_signature(doc, pinned_key=published)
