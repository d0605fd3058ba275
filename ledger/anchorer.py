"""Anchor the newest signed checkpoint on the chain, in the background, and resume after crashes.

Anchoring never blocks the append path: it reads checkpoints from its own store connection and
talks to the chain from a worker thread. Anchoring the newest checkpoint commits to every entry
before it, so when the chain was down only the newest waiting checkpoint is anchored.

The chain, not local state, says what is anchored. At every step the anchorer reads the log's
latest anchor from the contract: a transaction that landed although its receipt was never seen
is found in the chain's events and its receipt kept; anchors the chain has lost (a local node
killed before it saved its state) are marked lost and the newest checkpoint is anchored again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ledger.anchor import AnchorRecord, ChainAnchor, ChainError
from ledger.entry import log_id
from ledger.store import Checkpointed, Store, StoreError

_log = logging.getLogger("ledger.anchor")


@dataclass(frozen=True, slots=True)
class AnchorStatus:
    """What ``/readyz`` reports about anchoring."""

    anchored_size: int
    anchored_at: float | None
    checkpoint_size: int
    lag_entries: int
    lag_s: float
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"anchored_size": self.anchored_size, "checkpoint_size": self.checkpoint_size,
                "lag_entries": self.lag_entries, "lag_s": round(self.lag_s, 1), "error": self.error}  # fmt: skip


class Anchorer:
    def __init__(self, store: Store, origin: str, connect: Callable[[], ChainAnchor], interval_s: float = 5.0) -> None:
        """``connect`` opens the chain connection; it is called on the first step and after chain errors."""
        self.store = store
        self.origin = origin
        self.log_id = log_id(origin)
        self._connect = connect
        self.chain: ChainAnchor | None = None
        self.interval_s = interval_s
        self._anchored_size = 0
        self._anchored_at: float | None = None
        self._checkpoint_size = 0
        self._waiting_since: float | None = None
        self._error: str | None = None

    def status(self) -> AnchorStatus:
        lag = self._checkpoint_size - self._anchored_size
        since = self._waiting_since
        return AnchorStatus(self._anchored_size, self._anchored_at, self._checkpoint_size, max(0, lag),
                            0.0 if since is None or lag <= 0 else time.time() - since, self._error)  # fmt: skip

    def step(self) -> AnchorRecord | None:
        """Reconcile with the chain, then anchor the newest checkpoint if it is not anchored yet."""
        try:
            checkpoints = self.store.checkpoints(self.origin)
            if not checkpoints:
                return None
            newest = checkpoints[-1]
            if newest.tree_size > self._checkpoint_size and newest.tree_size > self._anchored_size:
                self._checkpoint_size = newest.tree_size
                if self._waiting_since is None:
                    self._waiting_since = float(newest.timestamp)
            if self.chain is None:
                self.chain = self._connect()
            record = self._step(self.chain, newest)
        except (ChainError, StoreError) as exc:
            if self._error != str(exc):
                _log.warning("anchoring %s is behind: %s", self.origin, exc)
            self._error = str(exc)
            if isinstance(exc, ChainError):
                self.close_chain()  # reconnect next time: the node may have restarted or been replaced
            return None
        except Exception as exc:  # a bug or an unforeseen client error must not end anchoring for good
            _log.exception("anchoring %s failed unexpectedly", self.origin)
            self._error = f"unexpected error: {exc!r}"
            self.close_chain()
            return None
        self._error = None
        return record

    def close_chain(self) -> None:
        if self.chain is not None:
            with contextlib.suppress(Exception):
                self.chain.close()
            self.chain = None

    def _step(self, chain: ChainAnchor, newest: Checkpointed) -> AnchorRecord | None:
        self._checkpoint_size = newest.tree_size
        on_chain = self._reconcile(chain)
        if newest.tree_size <= on_chain:
            self._waiting_since = None
            return None
        record = chain.anchor(self.log_id, newest.tree_size, newest.root)
        self.store.add_anchor(self.origin, record.tree_size, record.to_dict())
        self._anchored_size, self._anchored_at = record.tree_size, time.time()
        self._waiting_since = None
        _log.info("anchored %s at tree size %d in block %d", self.origin, record.tree_size, record.block_number)
        return record

    def _reconcile(self, chain: ChainAnchor) -> int:
        """The tree size the chain holds for this log, with local receipts brought in line with it."""
        latest = chain.latest(self.log_id)
        chain_size = latest[0] if latest else 0
        stored = {int(r["tree_size"]): r for r in self.store.anchors(self.origin)}
        live = [s for s, r in stored.items() if not r.get("lost")]
        if chain_size and chain_size not in live:
            # The transaction landed but its receipt was never seen (crash, timeout): take it from the events.
            for record in chain.anchors(self.log_id):
                if record.tree_size not in live:
                    self.store.add_anchor(self.origin, record.tree_size, record.to_dict())
        for size in live:
            if size > chain_size:
                _log.warning("the chain lost the anchor of %s at tree size %d; anchoring again", self.origin, size)
                self.store.add_anchor(self.origin, size, {**stored[size], "lost": True})
        self._anchored_size = chain_size
        return chain_size

    async def run(self, stop: asyncio.Event) -> None:
        """Step every ``interval_s`` until ``stop`` is set."""
        try:
            while not stop.is_set():
                await asyncio.to_thread(self.step)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval_s)
        finally:
            await asyncio.to_thread(self.close_chain)


__all__ = ["AnchorStatus", "Anchorer"]
