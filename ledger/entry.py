"""Ledger entries: canonical JSON (RFC 8785, JCS), hashed with SHA-256 and chained by ``prev``.

An entry is the JSON object ``{"v", "log", "seq", "ts", "kind", "actor", "data", "prev"}``. Its
hash is SHA-256 over the JCS bytes of that object. ``prev`` is the previous entry's hash in hex
(64 zeros for ``seq`` 0), so editing any entry breaks every later link. The Merkle tree's leaf
for an entry is the 32-byte entry hash (see ``docs/ledger.md``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import rfc8785

VERSION = 1
GENESIS = "0" * 64
_MAX_SAFE_INT = 2**53 - 1


class EntryError(ValueError):
    """An entry that cannot be canonicalized or parsed."""


def _orjson_is_jcs(value: Any) -> bool:
    """Whether orjson's sorted output equals JCS for ``value``.

    The two agree on strings, escapes, integers up to 2**53 and key order when keys are ASCII.
    They differ on floats (number formatting) and on keys outside the BMP (JCS sorts by UTF-16
    code units), so those go through the reference implementation. (Exact type tests, and
    strings handled without a call: the verifier runs this for every entry.)
    """
    t = type(value)
    if t is str or t is bool or value is None:
        return True
    if t is int:
        return bool(-_MAX_SAFE_INT <= value <= _MAX_SAFE_INT)
    if t is dict:
        for k, v in value.items():
            if type(k) is not str or not k.isascii():
                return False
            tv = type(v)
            if not (tv is str or tv is bool or v is None) and not _orjson_is_jcs(v):
                return False
        return True
    if t is list or t is tuple:
        return all(_orjson_is_jcs(v) for v in value)
    return False


def canonical(value: Any) -> bytes:
    """The RFC 8785 (JCS) bytes of ``value``; raises ``EntryError`` for what JSON cannot carry."""
    try:
        if _orjson_is_jcs(value):
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:  # orjson's errors are TypeErrors
        raise EntryError(f"entry is not canonical JSON: {exc}") from exc


def canonical_entry(fields: dict[str, Any]) -> bytes:
    """``canonical(fields)`` for fields that passed ``check_fields``: only ``data`` can hold what orjson
    and JCS disagree on (the other fields are fixed ASCII keys with strings and integers), so only it is walked."""
    if abs(fields["seq"]) <= _MAX_SAFE_INT and abs(fields["v"]) <= _MAX_SAFE_INT and _orjson_is_jcs(fields["data"]):
        return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    return canonical(fields)


def log_id(origin: str) -> bytes:
    """The bytes32 id under which a log's checkpoints are anchored: SHA-256 of its origin."""
    return hashlib.sha256(origin.encode()).digest()


def timestamp(now: float | None = None) -> str:
    """RFC 3339 UTC time with microseconds, as entries carry it."""
    t = datetime.now(UTC) if now is None else datetime.fromtimestamp(now, UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class Entry:
    """One ledger entry, with its canonical bytes and hash."""

    body: bytes
    hash: bytes

    @property
    def fields(self) -> dict[str, Any]:
        """The entry as a JSON object, without its hash."""
        parsed: dict[str, Any] = orjson.loads(self.body)
        return parsed

    @property
    def seq(self) -> int:
        seq: int = self.fields["seq"]
        return seq

    def as_json(self) -> dict[str, Any]:
        """The entry as exported and served: its fields plus ``hash`` in hex."""
        return {**self.fields, "hash": self.hash.hex()}


def make_entry(*, log: str, seq: int, ts: str, kind: str, actor: str, data: dict[str, Any], prev: str) -> Entry:
    """Build, canonicalize and hash one entry."""
    body = canonical({"v": VERSION, "log": log, "seq": seq, "ts": ts, "kind": kind, "actor": actor,
                      "data": data, "prev": prev})  # fmt: skip
    return Entry(body, hashlib.sha256(body).digest())


REQUIRED = {"v": int, "log": str, "seq": int, "ts": str, "kind": str, "actor": str, "data": dict, "prev": str}


_KEYS = frozenset(REQUIRED)


def check_fields(fields: Any) -> dict[str, Any]:
    """The fields of an entry read back from storage or a proof, checked for shape."""
    f = fields
    if (  # the common case, unrolled: the verifier calls this once per entry
        type(f) is dict and f.keys() == _KEYS and f["v"] == VERSION and type(f["v"]) is int
        and type(f["seq"]) is int and type(f["log"]) is str and type(f["ts"]) is str and type(f["kind"]) is str
        and type(f["actor"]) is str and type(f["data"]) is dict and type(f["prev"]) is str
    ):  # fmt: skip
        return f
    if not isinstance(fields, dict):
        raise EntryError("entry is not a JSON object")
    for name, kind in REQUIRED.items():
        if name not in fields:
            raise EntryError(f"entry has no {name!r}")
        if not isinstance(fields[name], kind) or (kind is int and isinstance(fields[name], bool)):
            raise EntryError(f"entry field {name!r} is not a {kind.__name__}")
    extra = set(fields) - set(REQUIRED)
    if extra:
        raise EntryError(f"entry has unknown fields: {', '.join(sorted(extra))}")
    if fields["v"] != VERSION:
        raise EntryError(f"entry version {fields['v']} is not supported (expected {VERSION})")
    return fields


def entry_hash(fields: dict[str, Any]) -> bytes:
    """SHA-256 over the JCS bytes of ``fields`` (without ``hash``)."""
    return hashlib.sha256(canonical({k: v for k, v in fields.items() if k != "hash"})).digest()
