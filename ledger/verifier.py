"""Verify a whole log: every hash, every link, every checkpoint root and signature, every anchor.

Nothing read from the store is trusted: entry hashes are recomputed from the entry bodies, the
Merkle tree is rebuilt from the recomputed hashes, and checkpoints and anchors are compared with
that tree. What each check catches:

- an edited entry: its recomputed hash differs from the stored one, or the next ``prev`` breaks;
- an edited entry with every later hash recomputed: the chain is consistent again, but the
  Merkle roots of signed checkpoints and on-chain anchors after it differ;
- deleted, reordered or inserted entries: sequence numbers and ``prev`` links break;
- a truncated tail: a checkpoint or anchor covers more entries than the log holds;
- a forged checkpoint: its Ed25519 signature does not verify under the log's key;
- a reset or replaced chain: the anchor transaction, block or event is not where the receipt says.

Entries after the newest anchor can still be altered silently: the report counts them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from ledger.checkpoint import CheckpointError, NoteVerifier
from ledger.entry import GENESIS, EntryError, canonical_entry, check_fields, log_id
from ledger.merkle import MerkleTree, leaf_hash
from ledger.store import Store


class AnchorSource(Protocol):
    """The chain, as the verifier needs it (``ledger.anchor.ChainAnchor`` implements it)."""

    def anchors(self, log_id: bytes, from_block: int = 0) -> list[Any]:
        """The anchor records of ``log_id`` found in the chain's events."""
        ...

    def verify_anchor(self, record: Any) -> None:
        """Raise if the chain does not hold ``record``'s transaction, block and event."""
        ...


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding: where, what kind of tampering it indicates, and the evidence."""

    kind: str
    message: str
    seq: int | None = None

    def __str__(self) -> str:
        where = f"entry {self.seq}: " if self.seq is not None else ""
        return f"{where}{self.message} [{self.kind}]"


@dataclass(slots=True)
class Report:
    """The outcome of a verification."""

    origin: str
    entries: int = 0
    checkpoints: int = 0
    anchors_checked: int = 0
    anchored_size: int = 0
    chain_checked: bool = False
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def unanchored(self) -> int:
        """Entries after the newest verified anchor: these could still be changed undetected."""
        return max(0, self.entries - self.anchored_size)

    def to_dict(self) -> dict[str, Any]:
        return {
            "origin": self.origin, "ok": self.ok, "entries": self.entries, "checkpoints": self.checkpoints,
            "anchors_checked": self.anchors_checked, "anchored_size": self.anchored_size,
            "chain_checked": self.chain_checked, "unanchored": self.unanchored,
            "problems": [{"kind": p.kind, "seq": p.seq, "message": p.message} for p in self.problems],
        }  # fmt: skip


def verify_log(
    store: Store,
    origin: str,
    verifier_key: str,
    chain: AnchorSource | None = None,
    progress: Callable[[int], None] | None = None,
    max_problems: int = 20,
) -> Report:
    """Verify the log ``origin`` in ``store``; ``chain`` adds the on-chain checks."""
    report = Report(origin)
    verifier = NoteVerifier(verifier_key)
    checkpoints = {c.tree_size: c for c in store.checkpoints(origin)}
    anchors = _anchor_roots(store, origin, chain, report)
    tree = MerkleTree()
    prev = GENESIS
    expected = 0

    def problem(kind: str, message: str, seq: int | None = None) -> None:
        if len(report.problems) < max_problems:
            report.problems.append(Problem(kind, message, seq))

    for stored_seq, stored_hash, body in store.read(origin):
        try:
            fields = check_fields(orjson.loads(body))
            recanon = canonical_entry(fields)
        except (EntryError, orjson.JSONDecodeError) as exc:
            problem("malformed", f"not a valid entry: {exc}", stored_seq)
            fields, recanon = {"seq": stored_seq, "prev": None}, body
        seq = fields["seq"]
        if stored_seq != expected:
            if stored_seq > expected:
                problem("deleted", f"entries {expected}..{stored_seq - 1} are missing", expected)
            else:
                problem("reordered", f"sequence number {stored_seq} follows {expected - 1}", stored_seq)
        if seq != stored_seq:
            problem("reordered", f"the entry says seq {seq} but is stored as seq {stored_seq}", stored_seq)
        digest = hashlib.sha256(recanon).digest()
        if recanon != body or digest != stored_hash:
            problem("edited", "its content does not match its hash", stored_seq)
        if fields.get("log", origin) != origin:
            problem("moved", f"the entry belongs to log {fields['log']!r}", stored_seq)
        if fields["prev"] != prev:
            problem("reordered", "its prev link does not match the entry before it", stored_seq)
        prev = digest.hex()
        tree.append(leaf_hash(digest))
        expected = stored_seq + 1
        size = tree.size
        cp = checkpoints.get(size)
        if cp is not None and cp.root != tree.root():
            problem("rewritten", f"the signed checkpoint at tree size {size} does not match entries 0..{size - 1}: "
                    "entries before it were changed and re-hashed", None)  # fmt: skip
        root = anchors.get(size)
        if root is not None and root != tree.root():
            problem("rewritten", f"the anchored root at tree size {size} does not match entries 0..{size - 1}: "
                    "entries before it were changed and re-hashed", None)  # fmt: skip
        if progress is not None and size % 10_000 == 0:
            progress(10_000)
    if progress is not None:
        progress(tree.size % 10_000)
    report.entries = tree.size

    for size, cp in sorted(checkpoints.items()):
        report.checkpoints += 1
        try:
            signed = verifier.verify(cp.note)
        except CheckpointError as exc:
            problem("forged-checkpoint", f"the checkpoint at tree size {size} has no valid signature: {exc}")
            continue
        if (signed.origin, signed.tree_size, signed.root_hash) != (origin, size, cp.root):
            problem("forged-checkpoint", f"the checkpoint stored at tree size {size} signs something else")
        if size > tree.size:
            problem("truncated", f"a checkpoint covers {size} entries but the log holds {tree.size}: "
                    "entries were removed from its end")  # fmt: skip
    for size in sorted(anchors):
        if size > tree.size:
            problem("truncated", f"an anchor covers {size} entries but the log holds {tree.size}: "
                    "entries were removed from its end")  # fmt: skip
        else:
            report.anchored_size = max(report.anchored_size, size)
    return report


def _anchor_roots(store: Store, origin: str, chain: AnchorSource | None, report: Report) -> dict[int, bytes]:
    """The roots anchored for ``origin``: from the chain itself when given, else from stored receipts."""
    roots: dict[int, bytes] = {}
    stored = store.anchors(origin)
    if chain is None:
        for receipt in stored:
            roots[int(receipt["tree_size"])] = bytes.fromhex(receipt["root"].removeprefix("0x"))
        return roots
    from ledger.anchor import AnchorRecord  # the chain checks need web3; plain verification does not

    report.chain_checked = True
    for found in chain.anchors(log_id(origin)):
        roots[found.tree_size] = found.root
    for stored_record in stored:
        if stored_record.get("lost"):
            continue  # the chain lost it (a local node crashed); a later anchor covers these entries
        try:
            record = AnchorRecord.from_dict(stored_record)
        except ValueError as exc:
            report.problems.append(Problem("malformed", f"a stored anchor receipt is malformed: {exc}"))
            continue
        try:
            chain.verify_anchor(record)
        except Exception as exc:  # the chain client's own errors: each is a finding, not a crash
            report.problems.append(Problem(
                "chain-reset", f"the anchor of tree size {record.tree_size} is not on the chain: {exc}"))  # fmt: skip
            continue
        report.anchors_checked += 1
    return roots
