"""Offline verification catches every kind of tampering; proof bundles verify standalone."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from ledger.checkpoint import Checkpoint, NoteSigner
from ledger.entry import canonical
from ledger.log import Ledger, LedgerConfig
from ledger.proof import ProofUnavailable, build_proof
from ledger.store import open_store
from ledger.verifier import Report, verify_log
from ledger.verify import BundleError, ProofError, verify_bundle

ORIGIN = "test.local/tamper"
ROOT = Path(__file__).resolve().parents[2]


def make_log(tmp_path: Path, n: int = 100, every: int = 20) -> tuple[Path, str]:
    """A closed SQLite ledger of ``n`` entries with a checkpoint every ``every``; its path and verifier key."""
    cfg = LedgerConfig(store_url=str(tmp_path / "l.sqlite3"), origin=ORIGIN, signing_key=tmp_path / "cp.key",
                       checkpoint_every=every, checkpoint_interval_s=3600)  # fmt: skip
    ledger = Ledger(cfg)
    ledger.start()
    for i in range(n):
        ledger.commit_sync("test.event", f"user{i % 7}", {"i": i, "note": "x" * (i % 5)})
    ledger.close()
    return tmp_path / "l.sqlite3", ledger.verifier_key


def tamper(path: Path, *statements: tuple[str, tuple[Any, ...]]) -> None:
    """Act as an attacker with write access to the database file: drop the guards, then edit."""
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER ledger_entries_no_update")
    db.execute("DROP TRIGGER ledger_entries_no_delete")
    for sql, params in statements:
        db.execute(sql, params)
    db.commit()
    db.close()


def _unguarded_checkpoints(path: Path) -> sqlite3.Connection:
    """The database with the checkpoint guards dropped, as an attacker with file access would."""
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER ledger_checkpoints_no_update")
    db.execute("DROP TRIGGER ledger_checkpoints_no_delete")
    return db


def rows(path: Path) -> list[tuple[int, bytes, bytes]]:
    db = sqlite3.connect(path)
    out = [(s, bytes(h), bytes(b)) for s, h, b in db.execute("SELECT seq, hash, body FROM ledger_entries ORDER BY seq")]
    db.close()
    return out


def rewrite_from(path: Path, start: int, edit: Callable[[dict[str, Any]], dict[str, Any] | None]) -> None:
    """Edit entries from ``start`` on and recompute every later hash and link, as a careful attacker would."""
    original = rows(path)
    prev = json.loads(original[start][2])["prev"]
    new: list[tuple[int, bytes, bytes]] = []
    seq = start
    for _, _, body in original[start:]:
        fields = edit(json.loads(body)) if seq == start or not new else json.loads(body)
        if fields is None:
            continue
        fields["seq"], fields["prev"] = seq, prev
        b = canonical(fields)
        h = hashlib.sha256(b).digest()
        new.append((seq, h, b))
        prev, seq = h.hex(), seq + 1
    tamper(path, ("DELETE FROM ledger_entries WHERE seq >= ?", (start,)),
           *[("INSERT INTO ledger_entries VALUES (?, ?, ?, ?)", (ORIGIN, s, h, b)) for s, h, b in new])  # fmt: skip


def check(path: Path, key: str) -> Report:
    store = open_store(str(path))
    try:
        return verify_log(store, ORIGIN, key)
    finally:
        store.close()


def kinds(report: Report) -> set[str]:
    return {p.kind for p in report.problems}


def test_intact_log_verifies(tmp_path: Path) -> None:
    """An untouched log verifies: every hash, link, checkpoint root and signature."""
    path, key = make_log(tmp_path)
    report = check(path, key)
    assert report.ok, report.problems
    assert (report.entries, report.checkpoints) == (100, 5)


def test_edited_entry(tmp_path: Path) -> None:
    """Editing one entry's data is caught at that entry."""
    path, key = make_log(tmp_path)
    body = rows(path)[42][2].replace(b'"i":42', b'"i":43')
    tamper(path, ("UPDATE ledger_entries SET body = ? WHERE seq = 42", (body,)))
    report = check(path, key)
    assert "edited" in kinds(report)
    assert report.problems[0].seq == 42


def test_edited_entry_with_every_later_hash_recomputed(tmp_path: Path) -> None:
    """A consistent rewrite passes the chain checks but not the signed checkpoints."""
    path, key = make_log(tmp_path)
    rewrite_from(path, 42, lambda f: {**f, "actor": "someone-else"})
    report = check(path, key)
    assert kinds(report) == {"rewritten"}
    assert "tree size 60" in report.problems[0].message  # the first checkpoint after entry 42


def test_deleted_entry(tmp_path: Path) -> None:
    """Deleting an entry leaves a gap in the sequence and a broken link."""
    path, key = make_log(tmp_path)
    tamper(path, ("DELETE FROM ledger_entries WHERE seq = 50", ()))
    report = check(path, key)
    assert "deleted" in kinds(report)
    assert report.problems[0].seq == 50


def test_deleted_entry_renumbered_and_rehashed(tmp_path: Path) -> None:
    """Deleting an entry and re-chaining the rest is caught by the checkpoints."""
    path, key = make_log(tmp_path)
    rewrite_from(path, 50, lambda f: None)
    report = check(path, key)
    assert "rewritten" in kinds(report) or "truncated" in kinds(report)
    assert not report.ok


def test_reordered_entries(tmp_path: Path) -> None:
    """Swapping two entries breaks the links."""
    path, key = make_log(tmp_path)
    r = rows(path)
    tamper(path, ("UPDATE ledger_entries SET body = ?, hash = ? WHERE seq = 30", (r[31][2], r[31][1])),
           ("UPDATE ledger_entries SET body = ?, hash = ? WHERE seq = 31", (r[30][2], r[30][1])))  # fmt: skip
    report = check(path, key)
    assert "reordered" in kinds(report)
    assert report.problems[0].seq == 30


def test_truncated_tail(tmp_path: Path) -> None:
    """Removing the last entries is caught by the checkpoint that covers them."""
    path, key = make_log(tmp_path)
    tamper(path, ("DELETE FROM ledger_entries WHERE seq >= 85", ()))
    report = check(path, key)
    assert "truncated" in kinds(report)


def test_forged_checkpoint(tmp_path: Path) -> None:
    """A checkpoint signed with another key, or edited, is rejected."""
    path, key = make_log(tmp_path)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    forger = NoteSigner(Ed25519PrivateKey.generate(), ORIGIN)
    db = _unguarded_checkpoints(path)
    size, root, ts = db.execute(
        "SELECT tree_size, root, timestamp FROM ledger_checkpoints ORDER BY tree_size"
    ).fetchone()
    db.execute("UPDATE ledger_checkpoints SET note = ? WHERE tree_size = ?",
               (forger.sign(Checkpoint(ORIGIN, size, bytes(root), ts)), size))  # fmt: skip
    db.commit()
    db.close()
    report = check(path, key)
    assert kinds(report) == {"forged-checkpoint"}


def test_rewrite_with_rewritten_checkpoints_needs_the_key(tmp_path: Path) -> None:
    """Rewriting entries and re-signing the checkpoints without the key is still caught."""
    path, key = make_log(tmp_path)
    rewrite_from(path, 10, lambda f: {**f, "kind": "test.other"})
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ledger.merkle import MerkleTree, leaf_hash

    tree = MerkleTree(leaf_hash(h) for _, h, _ in rows(path))
    forger = NoteSigner(Ed25519PrivateKey.generate(), ORIGIN)
    db = _unguarded_checkpoints(path)
    for size, ts in db.execute("SELECT tree_size, timestamp FROM ledger_checkpoints").fetchall():
        db.execute("UPDATE ledger_checkpoints SET root = ?, note = ? WHERE tree_size = ?",
                   (tree.root(size), forger.sign(Checkpoint(ORIGIN, size, tree.root(size), ts)), size))  # fmt: skip
    db.commit()
    db.close()
    assert "forged-checkpoint" in kinds(check(path, key))


def test_proof_bundle_verifies_standalone(tmp_path: Path) -> None:
    """A proof bundle checks out with ``python -m ledger.verify`` in a process that never imports gateway."""
    path, key = make_log(tmp_path)
    store = open_store(str(path))
    bundle = build_proof(store, ORIGIN, 37, key)
    store.close()
    assert bundle["tree_size"] == 100 and bundle["anchor"] is None  # no anchor yet: the newest checkpoint
    verified = verify_bundle(bundle, key=key)
    assert verified.seq == 37
    proof_file = tmp_path / "proof.json"
    proof_file.write_bytes(orjson.dumps(bundle))
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['ledger.verify', {str(proof_file)!r}, '--key', {key!r}]\n"
        "try:\n    runpy.run_module('ledger.verify', run_name='__main__')\n"
        "except SystemExit as stop:\n    code = stop.code\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'gateway'], 'imported gateway'\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK: entry 37" in done.stdout


@pytest.mark.parametrize("edit, reason", [
    (lambda b: b["entry"]["data"].update(i=1), "altered"),
    (lambda b: b.update(leaf_index=36), "leaf index"),
    (lambda b: b["inclusion_proof"].__setitem__(0, "00" * 32), "inclusion proof"),
    (lambda b: b.update(checkpoint=b["checkpoint"].replace("\n100\n", "\n101\n")), "signature"),
    (lambda b: b.update(format="other"), "not a proof bundle"),
    (lambda b: b.update(entry=[]), "'entry' is missing or of the wrong type"),
    (lambda b: b.update(anchor="0x00"), "'anchor' is missing or of the wrong type"),
])  # fmt: skip
def test_tampered_bundle_is_rejected(tmp_path: Path, edit: Callable[[dict[str, Any]], None], reason: str) -> None:
    """Each edit of a proof bundle makes the standalone check fail with a reason."""
    path, key = make_log(tmp_path)
    store = open_store(str(path))
    bundle = build_proof(store, ORIGIN, 37, key)
    store.close()
    edit(bundle)
    with pytest.raises((ProofError, BundleError), match=reason):
        verify_bundle(bundle, key=key)


def test_proof_for_missing_or_uncheckpointed_entry(tmp_path: Path) -> None:
    """No proof for an entry that does not exist, nor for one no checkpoint covers yet."""
    path, key = make_log(tmp_path, n=10, every=1000)
    db = _unguarded_checkpoints(path)
    db.execute("DELETE FROM ledger_checkpoints")
    db.commit()
    db.close()
    store = open_store(str(path))
    with pytest.raises(ProofUnavailable) as missing:
        build_proof(store, ORIGIN, 99, key)
    assert missing.value.missing
    with pytest.raises(ProofUnavailable) as pending:
        build_proof(store, ORIGIN, 3, key)
    assert not pending.value.missing
    store.close()
