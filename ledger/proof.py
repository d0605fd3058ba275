"""Proof bundles: one entry, its inclusion proof, the signed checkpoint and the anchor receipt.

A bundle is what an external auditor receives for one entry (``GET
/admin/ledger/entries/{seq}/proof``) and checks offline with ``python -m ledger.verify``.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from ledger.merkle import MerkleTree, leaf_hash
from ledger.store import Checkpointed, Store

FORMAT = "llm-gateway-ledger-proof/1"


class Prover(Protocol):
    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """The inclusion proof of leaf ``index`` in the tree of ``size`` leaves."""
        ...


class ProofUnavailable(LookupError):
    """The entry does not exist, or no signed checkpoint covers it yet."""

    def __init__(self, message: str, *, missing: bool) -> None:
        super().__init__(message)
        self.missing = missing


def covering(checkpoints: list[Checkpointed], anchored: set[int], seq: int) -> Checkpointed | None:
    """The checkpoint to prove ``seq`` against: the smallest anchored one covering it, else the newest."""
    covers = [c for c in checkpoints if c.tree_size > seq]
    if not covers:
        return None
    anchored_covers = [c for c in covers if c.tree_size in anchored]
    return anchored_covers[0] if anchored_covers else covers[-1]


def build_proof(store: Store, origin: str, seq: int, verifier_key: str, prover: Prover | None = None) -> dict[str, Any]:
    """The proof bundle for entry ``seq`` of ``origin``. ``prover`` (the running ledger) saves rebuilding the tree."""
    rows = list(store.read(origin, seq, seq + 1))
    if not rows:
        raise ProofUnavailable(f"entry {seq} does not exist", missing=True)
    _, entry_hash, body = rows[0]
    anchors = {int(a["tree_size"]): a for a in store.anchors(origin) if not a.get("lost")}
    checkpoint = covering(store.checkpoints(origin), set(anchors), seq)
    if checkpoint is None:
        raise ProofUnavailable(f"entry {seq} is not covered by a signed checkpoint yet", missing=False)
    if prover is None:
        prover = MerkleTree(leaf_hash(h) for h in store.hashes(origin))
    return {
        "format": FORMAT,
        "entry": {**orjson.loads(body), "hash": entry_hash.hex()},
        "leaf_index": seq,
        "tree_size": checkpoint.tree_size,
        "inclusion_proof": [h.hex() for h in prover.inclusion_proof(seq, checkpoint.tree_size)],
        "checkpoint": checkpoint.note,
        "verifier_key": verifier_key,
        "anchor": anchors.get(checkpoint.tree_size),
    }
