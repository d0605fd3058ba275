"""Signed checkpoints: C2SP tlog-checkpoint bodies in C2SP signed notes, with Ed25519 keys.

The text is byte for byte what golang.org/x/mod/sumdb/note and transparency-dev tools read::

    example.com/ledger
    20852163
    CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=
    time 1700000000

    — example.com/ledger <base64(4-byte key ID || 64-byte Ed25519 signature)>

The signature covers the text up to and including the last body newline. The key ID is
SHA-256(key name || 0x0A || 0x01 || public key)[:4]; keys travel as Go note "vkey" strings
``<name>+<8 hex key ID>+<base64(0x01 || public key)>``. Signing keys live in PKCS#8 PEM files
that only their owner may read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger.keyfile import KeyFileError, create_private, read_private

ALG_ED25519 = 0x01
SIGNATURE_PREFIX = "\u2014 "  # EM DASH, SPACE
# Go's sumdb/note rejects more than 100 signatures; C2SP asks verifiers to accept at least 16.
MAX_SIGNATURES = 100
MAX_NOTE_BYTES = 1 << 20
# The checkpoint's time is one extension line, "time <POSIX seconds>". C2SP tlog-checkpoint
# allows any number of opaque, non-empty extension lines after the root hash (and calls them
# NOT RECOMMENDED, as monitors cannot audit them). We borrow the exact form of the timestamp
# line of C2SP tlog-cosignature ("time", one space, ASCII decimal, no leading zeroes), which
# is the nearest thing the C2SP family has to a standard. Only the log's own signature covers
# this line: Ed25519 witness cosignatures carry it without vouching for it, ML-DSA ones omit it.
TIME_PREFIX = "time "

_UINT64_MAX = 2**64 - 1
_TIMESTAMP_MAX = 2**63 - 1  # tlog-cosignature's bound on timestamps
_DECIMAL = re.compile(r"0|[1-9][0-9]*")  # ASCII only: str.isdigit() would take "٣"
_HEX8 = re.compile(r"[0-9a-fA-F]{8}")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")  # every ASCII control character except newline

Reason = Literal["malformed", "bad_key", "unknown_key", "bad_signature", "bad_origin"]


class CheckpointError(ValueError):
    """A note or checkpoint that is malformed, not signed by the expected key, or from another log.

    ``reason`` names the failure for callers and tests; the message explains it.
    """

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason: Reason = reason


def _malformed(message: str) -> CheckpointError:
    return CheckpointError("malformed", message)


def _b64decode(text: str, what: str) -> bytes:
    """Strict standard base64 with padding; a non-canonical encoding of the same bytes is refused."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _malformed(f"{what} is not valid base64") from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise _malformed(f"{what} is not canonical base64")
    return raw


def _check_text(text: str, what: str) -> None:
    """Signed notes must be UTF-8 without ASCII control characters other than newline."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _malformed(f"{what} is not valid UTF-8") from exc
    if m := _CONTROL.search(text):
        raise _malformed(f"{what} contains the control character {m.group()!r}")


def _is_key_name(name: str) -> bool:
    """Non-empty, no Unicode spaces, no '+' and no control characters (as Go's isValidName)."""
    return bool(name) and "+" not in name and not any(c.isspace() or c < " " for c in name)


def _decimal(text: str, limit: int, what: str) -> int:
    if not _DECIMAL.fullmatch(text):
        raise _malformed(f"{what} {text!r} is not a canonical decimal number")
    value = int(text)
    if value > limit:
        raise _malformed(f"{what} {text} is too large")
    return value


def key_id(name: str, public_key: bytes) -> bytes:
    """Return the 4-byte note key ID SHA-256(name || 0x0A || 0x01 || public key)[:4] of an Ed25519 key."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([ALG_ED25519]) + public_key).digest()[:4]


@dataclass(frozen=True)
class Checkpoint:
    """A tree head: the log's origin, its size, its RFC 9162 root hash, and when it was signed."""

    origin: str
    tree_size: int
    root_hash: bytes
    timestamp: int  # POSIX seconds

    def __post_init__(self) -> None:
        """Refuse values that would not round-trip through the text format."""
        if not isinstance(self.origin, str) or not self.origin:
            raise _malformed("the origin must be a non-empty string")
        if "\n" in self.origin:
            raise _malformed("the origin must be one line")
        _check_text(self.origin, "the origin")
        for value, limit, what in (
            (self.tree_size, _UINT64_MAX, "tree size"),
            (self.timestamp, _TIMESTAMP_MAX, "timestamp"),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
                raise _malformed(f"{what} {value!r} is not an integer in 0..{limit}")
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != 32:
            raise _malformed("the root hash must be 32 bytes")

    def body(self) -> str:
        """Return the note text: origin, size, base64 root and time lines, each ending in a newline."""
        root = base64.b64encode(self.root_hash).decode("ascii")
        return f"{self.origin}\n{self.tree_size}\n{root}\n{TIME_PREFIX}{self.timestamp}\n"


def _parse_body(text: str) -> Checkpoint:
    if not text.endswith("\n"):
        raise _malformed("the checkpoint text must end with a newline")
    lines = text[:-1].split("\n")
    if "" in lines:
        raise _malformed("the checkpoint text contains an empty line")
    if len(lines) < 3:
        raise _malformed("a checkpoint needs origin, tree size and root hash lines")
    origin, size, root, *extensions = lines
    tree_size = _decimal(size, _UINT64_MAX, "tree size")
    root_hash = _b64decode(root, "the root hash")
    if len(root_hash) != 32:
        raise _malformed(f"the root hash is {len(root_hash)} bytes, not 32")
    # This ledger writes exactly one extension line; any other line means another writer.
    if not extensions or not extensions[0].startswith(TIME_PREFIX):
        raise _malformed(f"the line after the root hash must be '{TIME_PREFIX}<seconds>'")
    if len(extensions) > 1:
        raise _malformed(f"unexpected extension line {extensions[1]!r:.80}")
    timestamp = _decimal(extensions[0][len(TIME_PREFIX) :], _TIMESTAMP_MAX, "timestamp")
    return Checkpoint(origin, tree_size, root_hash, timestamp)


def _split_note(note: str) -> tuple[str, list[tuple[str, bytes, bytes]]]:
    """Split a signed note into its text and its (key name, key ID, signature) lines."""
    if not isinstance(note, str):
        raise _malformed("a note must be a str")
    # A character is at least one byte: the cheap test first, then the exact one.
    if len(note) > MAX_NOTE_BYTES or len(note.encode("utf-8", "surrogatepass")) > MAX_NOTE_BYTES:
        raise _malformed(f"the note is longer than {MAX_NOTE_BYTES} bytes")
    _check_text(note, "the note")
    split = note.rfind("\n\n")
    if split < 0:
        raise _malformed("no blank line separates the text from the signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block.endswith("\n"):
        raise _malformed("the signature block must end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise _malformed(f"the note has more than {MAX_SIGNATURES} signatures")
    signatures = []
    for line in lines:
        if not line.startswith(SIGNATURE_PREFIX):
            raise _malformed(f"signature line {line!r:.80} does not start with an em dash and a space")
        name, _, b64 = line[len(SIGNATURE_PREFIX) :].partition(" ")
        if not _is_key_name(name):
            raise _malformed(f"invalid key name {name!r:.80} in a signature line")
        raw = _b64decode(b64, f"the signature of {name}")
        if len(raw) < 5:
            raise _malformed(f"the signature of {name} is too short")
        signatures.append((name, raw[:4], raw[4:]))
    return text, signatures


def parse_checkpoint(note_text: str) -> Checkpoint:
    """Parse a signed checkpoint note WITHOUT checking any signature (use ``NoteVerifier.verify``)."""
    text, _ = _split_note(note_text)
    return _parse_body(text)


class NoteSigner:
    """Signs checkpoints as a C2SP signed note with one Ed25519 key under one key name."""

    def __init__(self, private_key: Ed25519PrivateKey, name: str) -> None:
        """Sign with ``private_key`` under ``name`` (by convention, the log's origin)."""
        if not _is_key_name(name):
            raise CheckpointError("bad_key", f"invalid key name {name!r}: it must be non-empty, without spaces or '+'")
        self._key = private_key
        self._name = name
        self._public = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self._key_id = key_id(name, self._public)

    @classmethod
    def from_signer_key(cls, skey: str) -> NoteSigner:
        """Build a signer from a Go note signer key ``PRIVATE+KEY+<name>+<hex ID>+<base64(0x01 || seed)>``."""
        parts = skey.split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"] or not _HEX8.fullmatch(parts[3]):
            raise CheckpointError("bad_key", "malformed signer key")
        try:
            raw = _b64decode(parts[4], "the signer key")
        except CheckpointError as exc:
            raise CheckpointError("bad_key", str(exc)) from exc
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise CheckpointError("bad_key", "the signer key is not an Ed25519 seed")
        signer = cls(Ed25519PrivateKey.from_private_bytes(raw[1:]), parts[2])
        if signer._key_id != bytes.fromhex(parts[3]):
            raise CheckpointError("bad_key", "the signer key's ID does not match its key")
        return signer

    @property
    def name(self) -> str:
        """The key name written in signature lines."""
        return self._name

    @property
    def verifier_key(self) -> str:
        """The public verifier key string ``<name>+<hex ID>+<base64(0x01 || public key)>``."""
        key = base64.b64encode(bytes([ALG_ED25519]) + self._public).decode("ascii")
        return f"{self._name}+{self._key_id.hex()}+{key}"

    def signer_key(self) -> str:
        """The SECRET Go note signer key string; whoever holds it can sign as this log."""
        seed = self._key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        key = base64.b64encode(bytes([ALG_ED25519]) + seed).decode("ascii")
        return f"PRIVATE+KEY+{self._name}+{self._key_id.hex()}+{key}"

    def sign_text(self, text: str) -> str:
        """Sign a note text (ending in a newline) and return the signed note."""
        if not text.endswith("\n"):
            raise _malformed("a note text must end with a newline")
        _check_text(text, "the note text")
        signature = self._key.sign(text.encode("utf-8"))
        line = base64.b64encode(self._key_id + signature).decode("ascii")
        return f"{text}\n{SIGNATURE_PREFIX}{self._name} {line}\n"

    def sign(self, checkpoint: Checkpoint) -> str:
        """Return the signed note text of ``checkpoint``."""
        return self.sign_text(checkpoint.body())


class NoteVerifier:
    """Verifies checkpoints signed by one Ed25519 key and checks they come from one log."""

    def __init__(self, verifier_key: str, origin: str | None = None) -> None:
        """Trust the key in ``verifier_key`` for checkpoints of ``origin`` (default: the key name)."""
        parts = verifier_key.split("+", 2) if isinstance(verifier_key, str) else []
        if len(parts) != 3 or not _is_key_name(parts[0]) or not _HEX8.fullmatch(parts[1]):
            raise CheckpointError("bad_key", f"malformed verifier key {verifier_key!r:.120}")
        name, hex_id, b64 = parts
        try:
            raw = _b64decode(b64, "the verifier key")
        except CheckpointError as exc:
            raise CheckpointError("bad_key", str(exc)) from exc
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise CheckpointError("bad_key", "the verifier key is not an Ed25519 key (type 0x01, 32 bytes)")
        if key_id(name, raw[1:]) != bytes.fromhex(hex_id):
            raise CheckpointError("bad_key", f"the verifier key's ID {hex_id} does not match its name and key")
        self._name = name
        self._key_id = bytes.fromhex(hex_id)
        self._public = Ed25519PublicKey.from_public_bytes(raw[1:])
        self._origin = name if origin is None else origin

    @property
    def name(self) -> str:
        """The key name this verifier accepts signatures under."""
        return self._name

    @property
    def origin(self) -> str:
        """The origin a verified checkpoint must carry."""
        return self._origin

    def verify(self, note_text: str) -> Checkpoint:
        """Return the checkpoint in ``note_text`` once its signature by this key checks out.

        Signatures by other keys (witness cosignatures, a rotated key) are ignored, as the
        signed-note spec requires. Every signature by this key must be valid, and there must be
        at least one. Raises ``CheckpointError`` with the reason otherwise.
        """
        text, signatures = _split_note(note_text)
        message = text.encode("utf-8")
        ours = [sig for name, kid, sig in signatures if name == self._name and kid == self._key_id]
        if not ours:
            seen = ", ".join(sorted({f"{name}+{kid.hex()}" for name, kid, _ in signatures}))
            raise CheckpointError("unknown_key", f"no signature by {self._name}+{self._key_id.hex()} (found: {seen})")
        for signature in ours:
            try:
                self._public.verify(signature, message)
            except InvalidSignature:
                raise CheckpointError(
                    "bad_signature", f"invalid signature for key {self._name}+{self._key_id.hex()}"
                ) from None
        checkpoint = _parse_body(text)
        if checkpoint.origin != self._origin:
            raise CheckpointError("bad_origin", f"checkpoint origin {checkpoint.origin!r} is not {self._origin!r}")
        return checkpoint


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Load the Ed25519 key in the PKCS#8 PEM file ``path``, refusing a file others can read or write."""
    data = read_private(path, "signing key file")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"signing key file {path} is not an unencrypted PKCS#8 PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"signing key file {path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """Load the signing key in ``path``, first creating it (mode 0600, directory 0700) if it is missing."""
    if not os.path.lexists(path):
        create_private(path, Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    return load_signing_key(path)
