"""Check a proof bundle offline: ``python -m ledger.verify proof.json [--key VKEY] [--rpc URL]``.

This is what an external auditor runs. It needs only this package (no gateway, no database):

1. the entry's hash is SHA-256 over the RFC 8785 canonical JSON of its fields;
2. the inclusion proof leads from that entry to the root of the checkpoint (RFC 9162);
3. the checkpoint's Ed25519 signature verifies under the log's verifier key (C2SP signed note);
4. the anchor receipt names the same log, tree size and root; with ``--rpc`` the chain is asked
   whether that transaction, block and event are really there.

Exit status 0 means every check passed; 1 means a check failed (the reason is printed); 2 means
the bundle could not be read or is not shaped like a bundle, or ``--key`` is not a verifier key.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger.checkpoint import CheckpointError, NoteVerifier
from ledger.entry import EntryError, check_fields, entry_hash, log_id
from ledger.merkle import leaf_hash, verify_inclusion

FORMAT = "llm-gateway-ledger-proof/1"


class ProofError(Exception):
    """A check failed; the message says which and why."""


class BundleError(Exception):
    """The input is not a proof bundle (or the pinned key is not a key): nothing was checked."""


_SHAPE: dict[str, tuple[type, ...]] = {
    "entry": (dict,), "leaf_index": (int,), "tree_size": (int,), "inclusion_proof": (list,),
    "checkpoint": (str,), "verifier_key": (str, type(None)), "anchor": (dict, type(None)),
}  # fmt: skip


def _check_shape(bundle: dict[str, Any]) -> None:
    for name, kinds in _SHAPE.items():
        value = bundle.get(name)
        if not isinstance(value, kinds) or isinstance(value, bool):
            raise BundleError(f"field {name!r} is missing or of the wrong type")
    if not all(isinstance(h, str) for h in bundle["inclusion_proof"]):
        raise BundleError("inclusion_proof must be a list of hex strings")


@dataclass(frozen=True, slots=True)
class Verified:
    """What a valid bundle proves."""

    origin: str
    seq: int
    tree_size: int
    root: bytes
    checkpoint_time: int
    anchored: bool
    chain_checked: bool


def _hex(value: Any, what: str, size: int = 32) -> bytes:
    try:
        raw = bytes.fromhex(str(value).removeprefix("0x"))
    except ValueError as exc:
        raise ProofError(f"{what} is not hex") from exc
    if len(raw) != size:
        raise ProofError(f"{what} is {len(raw)} bytes, expected {size}")
    return raw


def verify_bundle(bundle: dict[str, Any], key: str | None = None, rpc_url: str | None = None) -> Verified:
    """Check ``bundle``; ``key`` pins the verifier key (else the bundle's own is used)."""
    if bundle.get("format") != FORMAT:
        raise BundleError(f"not a proof bundle (format {bundle.get('format')!r}, expected {FORMAT!r})")
    _check_shape(bundle)
    entry = dict(bundle["entry"])
    claimed = _hex(entry.pop("hash", None), "the entry hash")
    try:
        fields = check_fields(entry)
        digest = entry_hash(fields)
    except EntryError as exc:
        raise ProofError(f"the entry is malformed: {exc}") from exc
    if digest != claimed:
        raise ProofError("the entry was altered: its content does not match its hash")

    vkey = key or bundle.get("verifier_key")
    if not isinstance(vkey, str):
        raise ProofError("no verifier key: pass --key with the log's published key")
    try:
        verifier = NoteVerifier(vkey)
    except CheckpointError as exc:
        if key is not None:
            raise BundleError(f"--key is not a verifier key: {exc}") from exc
        raise ProofError(f"the bundle's verifier key is malformed: {exc}") from exc
    try:
        checkpoint = verifier.verify(bundle["checkpoint"])
    except CheckpointError as exc:
        raise ProofError(f"the checkpoint signature does not verify: {exc}") from exc
    if checkpoint.origin != fields["log"]:
        raise ProofError(f"the checkpoint is for log {checkpoint.origin!r}, the entry for {fields['log']!r}")

    index, size = bundle.get("leaf_index"), bundle.get("tree_size")
    if index != fields["seq"] or size != checkpoint.tree_size:
        raise ProofError("the proof's leaf index or tree size does not match the entry and checkpoint")
    proof = [_hex(h, "an inclusion proof hash") for h in bundle.get("inclusion_proof") or []]
    if not verify_inclusion(leaf_hash(digest), fields["seq"], checkpoint.tree_size, proof, checkpoint.root_hash):
        raise ProofError("the inclusion proof does not lead to the checkpoint's root: the entry is not in that log")

    anchor = bundle.get("anchor")
    chain_checked = False
    if anchor is not None:
        if _hex(anchor.get("log_id"), "the anchor's log id") != log_id(checkpoint.origin):
            raise ProofError("the anchor is for another log")
        if anchor.get("tree_size") != checkpoint.tree_size or _hex(anchor.get("root"), "the anchor's root") != (
            checkpoint.root_hash
        ):
            raise ProofError("the anchor does not anchor this checkpoint's tree size and root")
        if rpc_url is not None:
            from ledger.anchor import AnchorRecord, ChainError, check_on_chain

            try:
                check_on_chain(rpc_url, AnchorRecord.from_dict(anchor))
            except (ChainError, KeyError, ValueError) as exc:
                raise ProofError(f"the anchor is not on the chain at {rpc_url}: {exc}") from exc
            chain_checked = True
    return Verified(checkpoint.origin, fields["seq"], checkpoint.tree_size, checkpoint.root_hash,
                    checkpoint.timestamp, anchor is not None, chain_checked)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ledger.verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path, help="a proof bundle (JSON) from /admin/ledger/entries/{seq}/proof")
    parser.add_argument("--key", help="the log's published verifier key (name+hash+base64); pin it")
    parser.add_argument("--rpc", help="a JSON-RPC URL of the chain, to check the anchor transaction")
    args = parser.parse_args(argv)
    try:
        bundle = json.loads(args.bundle.read_text())
    except (OSError, ValueError) as exc:
        print(f"cannot read {args.bundle}: {exc}", file=sys.stderr)
        return 2
    if not isinstance(bundle, dict):
        print(f"{args.bundle} is not a proof bundle", file=sys.stderr)
        return 2
    try:
        v = verify_bundle(bundle, key=args.key, rpc_url=args.rpc)
    except BundleError as exc:
        print(f"cannot check {args.bundle}: {exc}", file=sys.stderr)
        return 2
    except ProofError as exc:
        print(f"FAILED: {exc}")
        return 1
    print(f"OK: entry {v.seq} is in log {v.origin!r} at tree size {v.tree_size}, root {v.root.hex()}, "
          f"signed at {v.checkpoint_time}")  # fmt: skip
    if args.key is None:
        print("note: the verifier key was taken from the bundle; pass --key with the published key to pin it")
    if not v.anchored:
        print("note: this checkpoint has no anchor yet")
    elif v.chain_checked:
        print(f"anchor: on the chain at {args.rpc}")
    else:
        print("note: the anchor receipt matches; pass --rpc to check it on the chain")
    return 0


if __name__ == "__main__":
    sys.exit(main())
