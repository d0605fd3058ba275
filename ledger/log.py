"""The append path: one writer thread, group commit, signed checkpoints.

Callers enqueue events and return at once (``record``) or wait until their entry is durable
(``commit``). The writer thread takes everything queued, assigns sequence numbers, chains and
hashes the entries, and writes them in one transaction: one fsync (SQLite) or one commit
(PostgreSQL) for all the entries that arrived while the previous write was in flight. That is
group commit, and it is why a durable append costs microseconds, not an fsync, under load.

After each write the thread extends the Merkle tree, and every ``checkpoint_every`` entries or
``checkpoint_interval_s`` seconds it signs a checkpoint (C2SP tlog-checkpoint) and stores it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import orjson

from ledger.checkpoint import Checkpoint, NoteSigner, load_or_create_signing_key
from ledger.entry import GENESIS, Entry, canonical, make_entry, timestamp
from ledger.merkle import MerkleTree, leaf_hash
from ledger.store import Checkpointed, Store, StoreConflict, StoreError, open_store

_log = logging.getLogger("ledger")

MAX_QUEUED = 1_000_000
"""Events kept in memory while the store is down; beyond this, ``record`` refuses new ones."""


class LedgerUnavailable(Exception):
    """The ledger cannot make an entry durable; the caller must fail closed."""


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    """What a ledger needs; the gateway builds it from its settings."""

    store_url: str
    origin: str
    signing_key: Path
    checkpoint_every: int = 1000
    checkpoint_interval_s: float = 10.0
    retry_s: float = 1.0


@dataclass(frozen=True, slots=True)
class LedgerStatus:
    """What ``/readyz`` and operators see."""

    ok: bool
    error: str | None
    size: int
    checkpoint_size: int
    checkpoint_time: int | None
    queued: int


_Waiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[int]"] | threading.Event | None


@dataclass(slots=True)
class _Pending:
    kind: str
    actor: str
    data: dict[str, Any]
    ts: str
    waiter: _Waiter
    seq: int = -1


class Ledger:
    """An append-only, hash-chained, checkpointed log of events, written by one thread."""

    def __init__(self, config: LedgerConfig, store: Store | None = None) -> None:
        self.config = config
        self.origin = config.origin
        self._store_arg = store
        self._store: Store | None = None
        self._signer = NoteSigner(load_or_create_signing_key(config.signing_key), config.origin)
        self._queue: deque[_Pending] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._error: str | None = None
        self._fatal = False
        self.tree = MerkleTree()
        self._tree_lock = threading.Lock()  # the writer extends the tree; proof requests read it
        self._head = GENESIS
        self._checkpoint: Checkpointed | None = None

    # ----- lifecycle

    @property
    def verifier_key(self) -> str:
        """The C2SP verifier key for this log's checkpoints (publish it to auditors)."""
        return self._signer.verifier_key

    def start(self) -> None:
        """Open the store, rebuild the tree from it, and start the writer thread."""
        store = self._store_arg or open_store(self.config.store_url)
        self._store = store
        # The head first, then the entries up to it: another writer of this log (a CLI command beside the running
        # gateway) may append meanwhile, and what it appends is taken up as any concurrent append is.
        head = store.head(self.origin)
        hashes = store.hashes(self.origin)
        self.tree = MerkleTree(leaf_hash(h) for h in (hashes if head is None else islice(hashes, head[0] + 1)))
        if head is not None:
            if head[0] != self.tree.size - 1:
                raise StoreError(f"log {self.origin!r} has a gap: last seq {head[0]} but {self.tree.size} entries")
            self._head = head[1].hex()
        checkpoints = store.checkpoints(self.origin)
        self._checkpoint = checkpoints[-1] if checkpoints else None
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._thread.start()
        _log.info("ledger %s open: %d entries, store %r", self.origin, self.tree.size, store)

    def close(self, timeout_s: float = 30.0) -> None:
        """Write what is queued, sign a last checkpoint, and stop the writer."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        if self._store is not None and self._store_arg is None:
            self._store.close()
        self._store = None

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    # ----- appending

    def record(self, kind: str, actor: str, data: dict[str, Any]) -> None:
        """Queue an event; it is durable at the next group commit, with everything queued before it."""
        self._put(_Pending(kind, actor, data, timestamp(), None))

    async def commit(self, kind: str, actor: str, data: dict[str, Any]) -> int:
        """Append an event and wait until it, and everything queued before it, is durable. Returns its seq."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        self._put(_Pending(kind, actor, data, timestamp(), (loop, future)))
        return await future

    def commit_sync(self, kind: str, actor: str, data: dict[str, Any], timeout_s: float = 30.0) -> int:
        """``commit`` for callers without an event loop (the CLI)."""
        done = threading.Event()
        item = _Pending(kind, actor, data, timestamp(), done)
        self._put(item)
        if not done.wait(timeout_s):
            raise LedgerUnavailable(f"the ledger did not write within {timeout_s:g} s")
        if item.seq < 0:
            raise LedgerUnavailable(self._error or "the ledger is closed")
        return item.seq

    def _put(self, item: _Pending) -> None:
        canonical(item.data)  # an event JSON cannot carry is the caller's error (EntryError), never the writer's
        with self._cond:
            if self._thread is None or self._closing:
                raise LedgerUnavailable("the ledger is not running")
            if self._fatal:
                raise LedgerUnavailable(self._error or "the ledger stopped")
            if len(self._queue) >= MAX_QUEUED:
                raise LedgerUnavailable(f"{len(self._queue)} events are waiting for the store: {self._error}")
            self._queue.append(item)
            self._cond.notify()

    # ----- status

    def status(self) -> LedgerStatus:
        cp = self._checkpoint
        return LedgerStatus(
            ok=self._error is None,
            error=self._error,
            size=self.tree.size,
            checkpoint_size=cp.tree_size if cp else 0,
            checkpoint_time=cp.timestamp if cp else None,
            queued=len(self._queue),
        )

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """The RFC 9162 inclusion proof of entry ``index`` in the tree of ``size`` entries (thread-safe)."""
        with self._tree_lock:
            return self.tree.inclusion_proof(index, size)

    @property
    def latest_checkpoint(self) -> Checkpointed | None:
        return self._checkpoint

    # ----- the writer thread

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a bug must not leave a dead writer behind a ledger that says ok
            _log.exception("ledger %s: the writer stopped", self.origin)
            with self._cond:
                self._fatal = True
                self._error = f"the writer stopped: {exc!r}"
                pending = list(self._queue)
                self._queue.clear()
            self._resolve(pending, failed=self._error)

    def _loop(self) -> None:
        next_checkpoint = time.monotonic() + self.config.checkpoint_interval_s
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    if not self._cond.wait(max(0.0, next_checkpoint - time.monotonic())):
                        break  # the checkpoint timer fired
                batch = list(self._queue)
                self._queue.clear()
                closing = self._closing
            if batch and not self._write(batch):
                if closing:
                    return
                time.sleep(self.config.retry_s)
                continue
            due = time.monotonic() >= next_checkpoint
            if closing or due or self._uncheckpointed() >= self.config.checkpoint_every:
                self._sign_checkpoint()
                next_checkpoint = time.monotonic() + self.config.checkpoint_interval_s
            if closing:
                with self._cond:
                    if not self._queue:
                        return

    def _uncheckpointed(self) -> int:
        return self.tree.size - (self._checkpoint.tree_size if self._checkpoint else 0)

    def _write(self, batch: list[_Pending]) -> bool:
        """Write one batch. On failure, waiters are refused and queued records wait for a retry."""
        assert self._store is not None
        last = StoreError("other writers kept appending to this log")
        for _attempt in range(3):
            entries = self._build(batch)
            rows = [(item.seq, e.hash, e.body) for item, e in zip(batch, entries, strict=True)]
            try:
                self._store.append(self.origin, rows)
            except StoreConflict as exc:
                # Another process (the CLI recording a key change) appended to this log: take its
                # entries into the tree, after checking that they extend our chain, and try again.
                try:
                    self._catch_up()
                except StoreError as fork:
                    self._fatal = True
                    return self._failed(batch, fork)
                last = exc
                continue
            except StoreError as exc:
                if not self._landed(rows):
                    return self._failed(batch, exc)
            with self._tree_lock:
                for entry in entries:
                    self.tree.append(leaf_hash(entry.hash))
            self._head = entries[-1].hash.hex()
            if self._error is not None:
                _log.warning("ledger %s writes again", self.origin)
            self._error = None
            self._resolve(batch, failed=None)
            return True
        return self._failed(batch, last)

    def _build(self, batch: list[_Pending]) -> list[Entry]:
        seq, prev = self.tree.size, self._head
        entries: list[Entry] = []
        for item in batch:
            entry = make_entry(log=self.origin, seq=seq, ts=item.ts, kind=item.kind, actor=item.actor,
                               data=item.data, prev=prev)  # fmt: skip
            entries.append(entry)
            item.seq = seq
            seq, prev = seq + 1, entry.hash.hex()
        return entries

    def _catch_up(self) -> None:
        """Add entries another writer appended; raise StoreError if they do not extend our chain."""
        assert self._store is not None
        for seq, digest, body in self._store.read(self.origin, self.tree.size):
            fields = orjson.loads(body)
            if seq != self.tree.size or fields.get("prev") != self._head or hashlib.sha256(body).digest() != digest:
                raise StoreError(f"log {self.origin!r} forked at entry {seq}: another writer does not extend it")
            with self._tree_lock:
                self.tree.append(leaf_hash(digest))
            self._head = digest.hex()

    def _landed(self, rows: list[tuple[int, bytes, bytes]]) -> bool:
        """After an error: did the transaction commit anyway (the acknowledgement was lost)?"""
        assert self._store is not None
        try:
            head = self._store.head(self.origin)
        except StoreError:
            return False
        return head is not None and head[0] == rows[-1][0] and head[1] == rows[-1][1]

    def _failed(self, batch: list[_Pending], exc: StoreError) -> bool:
        self._error = f"cannot write: {exc}"
        _log.error("ledger %s: %s", self.origin, self._error)
        # Waiters are told now (their requests fail closed, and their events are dropped with
        # them); events that nobody waits for go back to the front of the queue for a retry.
        kept = [item for item in batch if item.waiter is None and not self._fatal]
        for item in batch:
            item.seq = -1
        self._resolve([item for item in batch if item.waiter is not None or self._fatal], failed=self._error)
        with self._cond:
            self._queue.extendleft(reversed(kept))
        return False

    def _resolve(self, batch: list[_Pending], failed: str | None) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[int], int]]] = {}
        for item in batch:
            waiter = item.waiter
            if waiter is None:
                continue
            if isinstance(waiter, threading.Event):
                waiter.set()
            else:
                loop, future = waiter
                by_loop.setdefault(loop, []).append((future, item.seq))
        for loop, futures in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
                loop.call_soon_threadsafe(_settle, futures, failed)

    def _sign_checkpoint(self) -> None:
        assert self._store is not None
        size = self.tree.size
        if size == 0 or (self._checkpoint is not None and self._checkpoint.tree_size >= size):
            return
        with self._tree_lock:
            root = self.tree.root(size)
        now = int(time.time())
        note = self._signer.sign(Checkpoint(self.origin, size, root, now))
        checkpoint = Checkpointed(size, root, now, note)
        try:
            self._store.add_checkpoint(self.origin, checkpoint)
        except StoreError as exc:
            self._error = f"cannot store a checkpoint: {exc}"
            _log.error("ledger %s: %s", self.origin, self._error)
            return
        self._checkpoint = checkpoint


def _settle(futures: list[tuple[asyncio.Future[int], int]], failed: str | None) -> None:
    for future, seq in futures:
        if future.done():
            continue  # the caller gave up (cancelled)
        if failed is None:
            future.set_result(seq)
        else:
            future.set_exception(LedgerUnavailable(failed))
