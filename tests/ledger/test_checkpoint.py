"""Signed checkpoints: the C2SP text format, Go note compatibility, tampering, and key files."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.checkpoint import (
    Checkpoint,
    CheckpointError,
    KeyFileError,
    NoteSigner,
    NoteVerifier,
    key_id,
    load_or_create_signing_key,
    load_signing_key,
    parse_checkpoint,
)

# The example key pair and note of golang.org/x/mod/sumdb/note (package doc and note_test.go).
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_SIGNATURE = "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
GO_NOTE = f"{GO_TEXT}\n— PeterNeumann {GO_SIGNATURE}\n"

ORIGIN = "example.com/ledger"
ROOT = bytes.fromhex("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")
CHECKPOINT = Checkpoint(ORIGIN, 8, ROOT, 1_700_000_000)
SEED = bytes(range(32))
SIGNER = NoteSigner(Ed25519PrivateKey.from_private_bytes(SEED), ORIGIN)
VERIFIER = NoteVerifier(SIGNER.verifier_key)
NOTE = SIGNER.sign(CHECKPOINT)
ROOT_B64 = "XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg="
BODY = f"example.com/ledger\n8\n{ROOT_B64}\ntime 1700000000\n"


def signed(text: str, signer: NoteSigner = SIGNER) -> str:
    """``text`` signed as a note by ``signer``, whatever it says."""
    return signer.sign_text(text)


def expect(reason: str, call: Callable[[], object], match: str | None = None) -> None:
    """``call`` raises a CheckpointError with ``reason`` (and a message matching ``match``)."""
    with pytest.raises(CheckpointError, match=match) as info:
        call()
    assert info.value.reason == reason, info.value


def test_round_trip() -> None:
    """A signed checkpoint verifies back to the same checkpoint, and parses unverified alike."""
    assert VERIFIER.verify(NOTE) == CHECKPOINT
    assert parse_checkpoint(NOTE) == CHECKPOINT
    empty = Checkpoint(ORIGIN, 0, bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"), 0)
    assert VERIFIER.verify(SIGNER.sign(empty)) == empty


def test_text_format() -> None:
    """The note is the C2SP body, a blank line, and one em-dash line carrying key ID and signature."""
    assert CHECKPOINT.body() == BODY
    body, blank, signature_line = NOTE.partition("\n\n")
    assert body + "\n" == BODY and blank
    assert signature_line.startswith("\u2014 example.com/ledger ") and signature_line.endswith("\n")
    assert signature_line.count("\n") == 1
    raw = base64.b64decode(signature_line.rstrip("\n").split(" ")[2], validate=True)
    assert len(raw) == 4 + 64
    assert raw[:4] == key_id(ORIGIN, Ed25519PrivateKey.from_private_bytes(SEED).public_key().public_bytes_raw())
    assert raw[:4].hex() == SIGNER.verifier_key.split("+")[1]


def test_go_note_known_answer() -> None:
    """The Go note package's example key and signed note are reproduced byte for byte."""
    signer = NoteSigner.from_signer_key(GO_SKEY)
    assert signer.verifier_key == GO_VKEY
    assert signer.signer_key() == GO_SKEY
    assert signer.sign_text(GO_TEXT) == GO_NOTE
    seed = base64.b64decode(GO_SKEY.split("+", 4)[4])[1:]
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    assert key_id("PeterNeumann", public).hex() == "c74f20a3"
    assert NoteSigner(Ed25519PrivateKey.from_private_bytes(seed), "PeterNeumann").verifier_key == GO_VKEY
    verifier = NoteVerifier(GO_VKEY)
    assert verifier.name == "PeterNeumann"
    # Signed by the right key, but a proverb is not a checkpoint.
    expect("malformed", lambda: verifier.verify(GO_NOTE), "tree size")


def test_other_signatures_are_ignored() -> None:
    """A witness cosignature or an old key's signature beside ours does not stop verification."""
    witness = NoteSigner(Ed25519PrivateKey.generate(), "witness.example/w1")
    cosigned = NOTE + signed(CHECKPOINT.body(), witness).partition("\n\n")[2]
    assert cosigned.count("\u2014 ") == 2
    assert VERIFIER.verify(cosigned) == CHECKPOINT
    assert NoteVerifier(witness.verifier_key, origin=ORIGIN).verify(cosigned) == CHECKPOINT


def sig_line(note: str) -> str:
    """The (single) signature line of ``note``, without its newline."""
    return note.rpartition("\n\n")[2].rstrip("\n")


def resign_raw(note: str, signature: bytes) -> str:
    """``note`` with its signature bytes replaced (key ID kept)."""
    line = sig_line(note)
    raw = base64.b64decode(line.rsplit(" ", 1)[1])
    return note.replace(line, line.rsplit(" ", 1)[0] + " " + base64.b64encode(raw[:4] + signature).decode())


OTHER = NoteSigner(Ed25519PrivateKey.generate(), ORIGIN)  # same name, different key
OUR_SIGNATURE = base64.b64decode(sig_line(NOTE).split(" ")[2])[4:]

TAMPERED = {
    # edits to a signed note: the signature no longer covers the text
    "edited size": ("bad_signature", NOTE.replace("\n8\n", "\n9\n", 1)),
    "edited size, non-canonical": ("bad_signature", NOTE.replace("\n8\n", "\n08\n", 1)),
    "edited root": ("bad_signature", NOTE.replace("XcnaeacG", "XcnaeacH", 1)),
    "edited origin": ("bad_signature", NOTE.replace("example.com/ledger\n", "example.org/ledger\n", 1)),
    "edited time": ("bad_signature", NOTE.replace("time 1700000000", "time 1700000001", 1)),
    "extra body line": ("bad_signature", NOTE.replace("time 1700000000\n", "time 1700000000\nextra\n", 1)),
    "signature of other bytes": ("bad_signature", resign_raw(NOTE, bytes(64))),
    "truncated signature bytes": ("bad_signature", resign_raw(NOTE, OUR_SIGNATURE[:56])),
    "bad signature beside a good one": ("bad_signature", NOTE + resign_raw(NOTE, bytes(64)).rpartition("\n\n")[2]),
    # another key
    "wrong key": ("unknown_key", signed(BODY, OTHER)),
    "wrong key name": ("unknown_key", NOTE.replace("\u2014 example.com/ledger ", "\u2014 example.org/ledger ")),
    "no signatures of ours at all": ("unknown_key", GO_NOTE),
    # envelope syntax
    "truncated signature line": ("malformed", NOTE[:-10] + "\n"),
    "missing final newline": ("malformed", NOTE[:-1]),
    "missing blank line": ("malformed", NOTE.replace("\n\n", "\n", 1)),
    "no signature lines": ("malformed", BODY + "\n"),
    "line after signatures": ("malformed", NOTE + "Unexpected line.\n"),
    "hyphen instead of em dash": ("malformed", NOTE.replace("\u2014 ", "- ", 1)),
    "no space after em dash": ("malformed", NOTE.replace("\u2014 ", "\u2014", 1)),
    "key name with a plus": ("malformed", NOTE.replace("\u2014 example.com/ledger", "\u2014 example.com+ledger", 1)),
    "CRLF line endings": ("malformed", NOTE.replace("\n", "\r\n")),
    "control character": ("malformed", NOTE.replace("example.com/ledger\n", "example.com/\x07ledger\n", 1)),
    "lone surrogate": ("malformed", NOTE.replace("example.com/ledger\n", "example.com/\udcffledger\n", 1)),
    "too many signatures": ("malformed", NOTE + (sig_line(NOTE) + "\n") * 100),
    # well signed, but not a checkpoint of this ledger
    "non-canonical size": ("malformed", signed(BODY.replace("\n8\n", "\n010\n"))),
    "signed size": ("malformed", signed(BODY.replace("\n8\n", "\n+8\n"))),
    "non-ASCII digit": ("malformed", signed(BODY.replace("\n8\n", "\n\u0668\n"))),
    "size too large": ("malformed", signed(BODY.replace("\n8\n", f"\n{2**64}\n"))),
    "empty line in body": ("malformed", signed(BODY.replace("\n8\n", "\n\n8\n"))),
    "empty origin": ("malformed", signed(BODY.replace(ORIGIN, ""))),
    "short root": ("malformed", signed(BODY.replace(ROOT_B64, "AAAA"))),
    "root of 31 bytes": ("malformed", signed(BODY.replace(ROOT_B64, "A" * 40 + "AA=="))),
    "root not canonical base64": ("malformed", signed(BODY.replace("RgQyg=", "RgQyh="))),
    "root base64 without padding": ("malformed", signed(BODY.replace("RgQyg=", "RgQyg"))),
    "root base64url": ("malformed", signed(BODY.replace("z+Nw7/", "z-Nw7_"))),
    "missing time line": ("malformed", signed(BODY.replace("time 1700000000\n", ""))),
    "time not canonical": ("malformed", signed(BODY.replace("time 1700000000", "time 01700000000"))),
    "time with two spaces": ("malformed", signed(BODY.replace("time 1700000000", "time  1700000000"))),
    "unknown extension line": ("malformed", signed(BODY + "foo bar\n")),
    "only two lines": ("malformed", signed("example.com/ledger\n8\n")),
    # signed by our key for another log
    "other origin": ("bad_origin", signed(BODY.replace(ORIGIN, "example.com/other-ledger"))),
}


@pytest.mark.parametrize(("reason", "note"), TAMPERED.values(), ids=TAMPERED.keys())
def test_tampered_notes_are_rejected(reason: str, note: str) -> None:
    """Each tampered, foreign or malformed note is rejected with the precise reason."""
    expect(reason, lambda: VERIFIER.verify(note))


def test_parse_checkpoint_checks_syntax_only() -> None:
    """parse_checkpoint reads a note whatever key signed it, but still refuses malformed text."""
    assert parse_checkpoint(signed(BODY, OTHER)) == CHECKPOINT
    assert parse_checkpoint(TAMPERED["edited size"][1]).tree_size == 9
    for name in ("non-canonical size", "missing blank line", "unknown extension line", "CRLF line endings"):
        expect("malformed", lambda name=name: parse_checkpoint(TAMPERED[name][1]))


def test_expected_origin() -> None:
    """A verifier expects the key name as origin unless told another one."""
    signer = NoteSigner(Ed25519PrivateKey.from_private_bytes(SEED), "ledger-key")
    note = signer.sign(CHECKPOINT)
    expect("bad_origin", lambda: NoteVerifier(signer.verifier_key).verify(note), "is not 'ledger-key'")
    assert NoteVerifier(signer.verifier_key, origin=ORIGIN).verify(note) == CHECKPOINT
    assert NoteVerifier(signer.verifier_key, origin=ORIGIN).origin == ORIGIN


@pytest.mark.parametrize(
    "kwargs",
    [
        {"origin": ""},
        {"origin": "two\nlines"},
        {"origin": "tab\there"},
        {"origin": "\udcff"},
        {"tree_size": -1},
        {"tree_size": 2**64},
        {"tree_size": True},
        {"tree_size": 1.0},
        {"root_hash": ROOT[:31]},
        {"root_hash": ROOT.hex()},
        {"timestamp": -1},
        {"timestamp": 2**63},
    ],
)
def test_invalid_checkpoints_cannot_be_built(kwargs: dict[str, object]) -> None:
    """Values that would not survive the text format are refused when a Checkpoint is made."""
    fields: dict[str, object] = {"origin": ORIGIN, "tree_size": 8, "root_hash": ROOT, "timestamp": 0, **kwargs}
    expect("malformed", lambda: Checkpoint(**fields))  # type: ignore[arg-type]


def test_largest_values_round_trip() -> None:
    """The largest tree size and timestamp, and a non-ASCII origin, survive signing and verification."""
    big = Checkpoint("пример.рф/ledger", 2**64 - 1, ROOT, 2**63 - 1)
    signer = NoteSigner(Ed25519PrivateKey.generate(), "пример.рф/ledger")
    assert NoteVerifier(signer.verifier_key).verify(signer.sign(big)) == big


def test_mangled_verifier_keys_are_refused() -> None:
    """Every one-character change or truncation of a verifier key is refused, as in Go's tests."""
    NoteVerifier(GO_VKEY)
    for i in range(len(GO_VKEY)):
        mangled = GO_VKEY[:i] + chr(ord(GO_VKEY[i]) + 1) + GO_VKEY[i + 1 :]
        expect("bad_key", lambda mangled=mangled: NoteVerifier(mangled))
        expect("bad_key", lambda i=i: NoteVerifier(GO_VKEY[:i]))
    # Go's own: a wrong-length key and an unknown algorithm, each with a matching key ID.
    for vkey in (
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ):
        expect("bad_key", lambda vkey=vkey: NoteVerifier(vkey))


def test_mangled_signer_keys_are_refused() -> None:
    """Every one-character change of a signer key is refused, and so is a bad key name."""
    for i in range(len(GO_SKEY)):
        mangled = GO_SKEY[:i] + chr(ord(GO_SKEY[i]) + 1) + GO_SKEY[i + 1 :]
        expect("bad_key", lambda mangled=mangled: NoteSigner.from_signer_key(mangled))
    for name in ("", "with space", "a+b", "tab\t"):
        expect("bad_key", lambda name=name: NoteSigner(Ed25519PrivateKey.generate(), name))


def test_key_file_is_created_private(tmp_path: Path) -> None:
    """A new key file is PKCS#8 PEM with mode 0600 in a new 0700 directory, and loads back the same key."""
    path = tmp_path / "keys" / "ledger.pem"
    key = load_or_create_signing_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert os.listdir(path.parent) == ["ledger.pem"]  # no temporary file left behind
    again = load_or_create_signing_key(path)
    assert again.public_key().public_bytes_raw() == key.public_key().public_bytes_raw()
    assert load_signing_key(path).public_key().public_bytes_raw() == key.public_key().public_bytes_raw()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_key_file_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    """A key file that group or others can read or write is refused with its path, mode and the fix."""
    path = tmp_path / "ledger.pem"
    load_or_create_signing_key(path)
    path.chmod(mode)
    for load in (load_signing_key, load_or_create_signing_key):
        with pytest.raises(KeyFileError) as info:
            load(path)
        assert str(path) in str(info.value) and f"{mode:04o}" in str(info.value)
        assert f"chmod 600 {path}" in str(info.value)


def test_read_only_key_file_is_accepted(tmp_path: Path) -> None:
    """A key file only its owner can read (0400) loads."""
    path = tmp_path / "ledger.pem"
    key = load_or_create_signing_key(path)
    path.chmod(0o400)
    assert load_signing_key(path).public_key().public_bytes_raw() == key.public_key().public_bytes_raw()


def test_bad_key_files_are_refused(tmp_path: Path) -> None:
    """A missing file, a non-PEM file, an encrypted key and a non-Ed25519 key are each refused."""
    with pytest.raises(KeyFileError, match="does not exist"):
        load_signing_key(tmp_path / "missing.pem")
    assert not (tmp_path / "missing.pem").exists()

    def private_file(name: str, data: bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        path.chmod(0o600)
        return path

    with pytest.raises(KeyFileError, match="not an unencrypted PKCS#8 PEM"):
        load_signing_key(private_file("junk.pem", b"hello\n"))
    encrypted = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(KeyFileError, match="not an unencrypted PKCS#8 PEM"):
        load_signing_key(private_file("encrypted.pem", encrypted))
    p256 = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(KeyFileError, match="not an Ed25519 key"):
        load_or_create_signing_key(private_file("p256.pem", p256))
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_signing_key(tmp_path)


def test_existing_key_file_is_not_replaced(tmp_path: Path) -> None:
    """load_or_create_signing_key never overwrites a key that exists, even a refused one."""
    path = tmp_path / "ledger.pem"
    path.write_bytes(b"not a key\n")
    path.chmod(0o600)
    with pytest.raises(KeyFileError):
        load_or_create_signing_key(path)
    assert path.read_bytes() == b"not a key\n"
