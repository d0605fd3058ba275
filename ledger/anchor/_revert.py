"""Decode AuditAnchor's custom errors (NotOwner, NotIncreasing, DuplicateRoot) from revert data."""

from __future__ import annotations

from functools import cache
from typing import Any

from eth_abi.abi import decode
from eth_utils.crypto import keccak

from ._artifact import load_artifact


@cache
def _errors() -> dict[bytes, tuple[str, tuple[str, ...]]]:
    """4-byte selector -> (error name, argument types), from the committed ABI."""
    table = {}
    for item in load_artifact()["abi"]:
        if item["type"] == "error":
            types = tuple(arg["type"] for arg in item["inputs"])
            table[keccak(text=f"{item['name']}({','.join(types)})")[:4]] = (item["name"], types)
    return table


def revert_reason(data: Any) -> tuple[str, tuple[object, ...]]:
    """(error name, decoded arguments) from a revert's data, or ("unknown", ()) if undecodable."""
    if isinstance(data, dict):  # some nodes nest it: {"data": "0x..."}
        data = data.get("data")
    if not isinstance(data, str | bytes):
        return "unknown", ()
    try:
        raw = bytes.fromhex(data.removeprefix("0x")) if isinstance(data, str) else data
    except ValueError:
        return "unknown", ()
    known = _errors().get(raw[:4])
    if known is None:
        return "unknown", ()
    name, types = known
    try:
        args = decode(list(types), raw[4:])
    except Exception:  # eth-abi raises several unrelated types for short or malformed data
        return name, ()
    return name, tuple("0x" + a.hex() if isinstance(a, bytes) else a for a in args)
