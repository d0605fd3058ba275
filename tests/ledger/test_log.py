"""The append path: group commit, durability, checkpoints, restarts, other writers, failing stores."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import string
import threading
from pathlib import Path
from typing import Any

import pytest
import rfc8785

from ledger.checkpoint import NoteVerifier
from ledger.entry import EntryError, canonical, canonical_entry, make_entry
from ledger.log import Ledger, LedgerConfig, LedgerUnavailable
from ledger.merkle import MerkleTree, leaf_hash
from ledger.store import Store, StoreError, open_store
from ledger.verifier import verify_log


def config(tmp_path: Path, url: str | None = None, **kw: Any) -> LedgerConfig:
    return LedgerConfig(store_url=url or str(tmp_path / "ledger.sqlite3"), origin=kw.pop("origin", "test.local/log"),
                        signing_key=tmp_path / "checkpoint.key", **kw)  # fmt: skip


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    alphabet = string.printable + "é€\u2028\x00\x1f\U0001f600\ue000"
    kind = rng.randrange(7 if depth < 3 else 5)
    if kind == 0:
        return rng.randrange(-(2**53) + 1, 2**53)
    if kind == 1:
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(8)))
    if kind == 2:
        return rng.choice([True, False, None])
    if kind == 3:
        return rng.uniform(-1e6, 1e6) if rng.random() < 0.5 else rng.choice([0.1, 1e21, 1e-7, 5e-324, 123.0])
    if kind == 4:
        return rng.randrange(10)
    if kind == 5:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {"".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 5))): _random_value(rng, depth + 1)
            for _ in range(rng.randrange(4))}  # fmt: skip


def test_canonical_equals_rfc8785() -> None:
    """The fast canonical form is byte-identical to the RFC 8785 reference on random JSON values."""
    rng = random.Random(8785)
    for _ in range(3000):
        value = {"data": _random_value(rng)}
        assert canonical(value) == rfc8785.dumps(value)


async def test_commit_is_durable_and_chained(tmp_path: Path) -> None:
    """Committed entries are in the store, numbered in order and linked by prev hashes."""
    ledger = Ledger(config(tmp_path))
    ledger.start()
    seqs = await asyncio.gather(*(ledger.commit("test.event", f"user{i}", {"i": i}) for i in range(50)))
    assert sorted(seqs) == list(range(50))
    store = open_store(str(tmp_path / "ledger.sqlite3"))
    rows = list(store.read("test.local/log"))
    assert [r[0] for r in rows] == list(range(50))
    ledger.close()
    report = verify_log(store, "test.local/log", ledger.verifier_key)
    assert report.ok, report.problems
    assert report.entries == 50 and report.checkpoints >= 1


async def test_group_commit_batches_many_entries_per_transaction(tmp_path: Path) -> None:
    """Entries that arrive together share one transaction (far fewer commits than entries)."""
    commits = 0
    store = open_store(str(tmp_path / "ledger.sqlite3"))
    append = store.append

    def counting(log: str, rows: Any) -> None:
        nonlocal commits
        commits += 1
        append(log, rows)

    store.append = counting  # type: ignore[method-assign]
    ledger = Ledger(config(tmp_path), store=store)
    ledger.start()
    await asyncio.gather(*(ledger.commit("test.event", "u", {"i": i}) for i in range(2000)))
    ledger.close()
    assert store.count("test.local/log") == 2000
    assert commits < 200, commits


async def test_restart_continues_the_chain(tmp_path: Path) -> None:
    """A restarted ledger rebuilds its tree and continues the same chain."""
    first = Ledger(config(tmp_path))
    first.start()
    for i in range(10):
        first.record("test.event", "u", {"i": i})
    first.close()
    second = Ledger(config(tmp_path))
    second.start()
    assert await second.commit("test.event", "u", {"i": 10}) == 10
    second.close()
    store = open_store(str(tmp_path / "ledger.sqlite3"))
    assert verify_log(store, "test.local/log", second.verifier_key).ok


async def test_checkpoints_every_n_entries_and_signed(tmp_path: Path) -> None:
    """A checkpoint is signed every N entries; its root is the tree's root at that size."""
    ledger = Ledger(config(tmp_path, checkpoint_every=10, checkpoint_interval_s=3600))
    ledger.start()
    for i in range(35):
        await ledger.commit("test.event", "u", {"i": i})
    ledger.close()
    store = open_store(str(tmp_path / "ledger.sqlite3"))
    checkpoints = store.checkpoints("test.local/log")
    assert [c.tree_size for c in checkpoints][-1] == 35  # the last one is signed on close
    assert len(checkpoints) >= 4
    tree = MerkleTree(leaf_hash(h) for h in store.hashes("test.local/log"))
    verifier = NoteVerifier(ledger.verifier_key)
    for c in checkpoints:
        signed = verifier.verify(c.note)
        assert (signed.tree_size, signed.root_hash) == (c.tree_size, tree.root(c.tree_size))


async def test_checkpoint_on_timer(tmp_path: Path) -> None:
    """With few entries, a checkpoint is still signed after checkpoint_interval_s."""
    ledger = Ledger(config(tmp_path, checkpoint_every=1000, checkpoint_interval_s=0.2))
    ledger.start()
    await ledger.commit("test.event", "u", {})
    for _ in range(100):
        if ledger.latest_checkpoint is not None:
            break
        await asyncio.sleep(0.05)
    assert ledger.latest_checkpoint is not None and ledger.latest_checkpoint.tree_size == 1
    ledger.close()


async def test_second_writer_on_the_same_log(tmp_path: Path) -> None:
    """A second process appending to the same log (the CLI) is absorbed: one chain, nothing lost."""
    gateway = Ledger(config(tmp_path))
    gateway.start()
    await gateway.commit("test.event", "gateway", {"n": 0})
    cli = Ledger(config(tmp_path))
    cli.start()
    assert cli.commit_sync("apikey.created", "cli", {"key_id": "gk_x"}) == 1
    cli.close()
    assert await gateway.commit("test.event", "gateway", {"n": 1}) == 2
    gateway.close()
    store = open_store(str(tmp_path / "ledger.sqlite3"))
    report = verify_log(store, "test.local/log", gateway.verifier_key)
    assert report.ok, report.problems
    assert report.entries == 3


class FailingStore:
    """A real SQLite store whose appends fail while ``broken`` is set (a full disk, a lost database)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.broken = threading.Event()

    def append(self, log: str, rows: Any) -> None:
        if self.broken.is_set():
            raise StoreError("disk I/O error")
        self.inner.append(log, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_store_failure_fails_closed_and_recovers(tmp_path: Path) -> None:
    """While the store fails, commit raises LedgerUnavailable, queued records wait, and all land after."""
    store = FailingStore(open_store(str(tmp_path / "ledger.sqlite3")))
    ledger = Ledger(config(tmp_path, retry_s=0.05), store=store)  # type: ignore[arg-type]
    ledger.start()
    await ledger.commit("test.event", "u", {"n": 0})
    store.broken.set()
    ledger.record("test.decision", "u", {"kept": True})
    with pytest.raises(LedgerUnavailable, match="disk I/O error"):
        await ledger.commit("test.event", "u", {"n": 1})
    assert not ledger.status().ok
    store.broken.clear()
    seq = await ledger.commit("test.event", "u", {"n": 2})
    assert ledger.status().ok
    ledger.close()
    kinds = [r[2] for r in store.inner.read("test.local/log")]
    assert len(kinds) == 3 and seq == 2
    assert b'"kept":true' in kinds[1]


def test_closed_ledger_refuses(tmp_path: Path) -> None:
    """A ledger that is not running refuses new events instead of dropping them."""
    ledger = Ledger(config(tmp_path))
    with pytest.raises(LedgerUnavailable):
        ledger.record("test.event", "u", {})


def test_entries_are_append_only_in_sqlite(tmp_path: Path) -> None:
    """The schema refuses UPDATE and DELETE on entries (tampering needs to drop the triggers first)."""
    ledger = Ledger(config(tmp_path))
    ledger.start()
    ledger.commit_sync("test.event", "u", {})
    ledger.close()
    db = sqlite3.connect(tmp_path / "ledger.sqlite3")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE ledger_entries SET body = x'00'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM ledger_entries")


async def test_postgres_store(pg_url: str, tmp_path: Path) -> None:
    """The same ledger on real PostgreSQL: durable commits, two replica logs side by side, verification."""
    a = Ledger(config(tmp_path, url=pg_url, origin="test.local/replica-a"))
    b = Ledger(config(tmp_path, url=pg_url, origin="test.local/replica-b"))
    a.start()
    b.start()
    await asyncio.gather(*(x.commit("test.event", "u", {"i": i}) for i in range(100) for x in (a, b)))
    a.close()
    b.close()
    store = open_store(pg_url)
    assert {"test.local/replica-a", "test.local/replica-b"} <= set(store.logs())
    for ledger in (a, b):
        report = verify_log(store, ledger.origin, ledger.verifier_key)
        assert report.ok and report.entries == 100, report.problems
    store.close()


async def test_an_event_json_cannot_carry_is_refused_and_the_writer_lives_on(tmp_path: Path) -> None:
    """NaN, huge integers and non-JSON values are refused to the caller; later events still commit."""
    ledger = Ledger(config(tmp_path))
    ledger.start()
    for bad in ({"x": float("nan")}, {"x": 2**64}, {"x": object()}, {1: "non-string key"}):
        with pytest.raises(EntryError):
            ledger.record("test.event", "u", bad)
        with pytest.raises(EntryError):
            await ledger.commit("test.event", "u", bad)
    assert await ledger.commit("test.event", "u", {"ok": True}) == 0
    assert ledger.status().ok
    ledger.close()


def test_canonical_entry_equals_rfc8785() -> None:
    """The verifier's fast canonical form of an entry equals the reference, tricky data included."""
    rng = random.Random(9162)
    values: list[Any] = [{"data": _random_value(rng)} for _ in range(2000)]
    values += [{"k\u00e9": 1, "\U0001f600": 2, "\ue000": 3}, {"v": "1.5e3"}, {"n": 1234567890123456}, {"f": 1.5}]
    for value in values:
        entry = make_entry(log="l", seq=7, ts="t", kind="k", actor="a", data=value, prev="p")
        fields = json.loads(entry.body)
        assert canonical_entry(fields) == rfc8785.dumps(fields) == entry.body


def test_postgres_refuses_update_delete_truncate(pg_url: str, tmp_path: Path) -> None:
    """On PostgreSQL, entries and checkpoints cannot be updated, deleted or truncated."""
    import psycopg

    ledger = Ledger(config(tmp_path, url=pg_url, origin="test.local/guarded"))
    ledger.start()
    ledger.commit_sync("test.event", "u", {})
    ledger.close()
    with psycopg.connect(pg_url, autocommit=True) as db:
        for sql in ("UPDATE ledger_entries SET body = 'x'", "DELETE FROM ledger_entries", "TRUNCATE ledger_entries",
                    "UPDATE ledger_checkpoints SET note = 'x'", "TRUNCATE ledger_checkpoints"):  # fmt: skip
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                db.execute(sql.encode())
