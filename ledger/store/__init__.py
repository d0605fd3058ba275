"""Where entries, checkpoints and anchor receipts live: SQLite (embedded) or PostgreSQL (replicas).

A store is synchronous and used from one thread at a time: the ledger's writer thread owns one,
readers open their own. ``append`` returns only when the rows are durable (fsync on SQLite,
commit on PostgreSQL), which is what group commit amortizes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Checkpointed", "Row", "Store", "StoreConflict", "StoreError", "open_store"]

Row = tuple[int, bytes, bytes]
"""One entry as stored: ``(seq, hash, canonical body)``."""


class StoreError(Exception):
    """The store cannot be opened, read or written."""


class StoreConflict(StoreError):
    """Another writer appended to the same log: each replica needs a log of its own."""


@dataclass(frozen=True, slots=True)
class Checkpointed:
    """A signed checkpoint as stored: the tree it commits to and its signed note."""

    tree_size: int
    root: bytes
    timestamp: int
    note: str


class Store(Protocol):
    def head(self, log: str) -> Row | None:
        """The last entry of ``log``, or None when the log is empty."""
        ...

    def append(self, log: str, rows: Sequence[Row]) -> None:
        """Append rows in one transaction; durable on return. ``StoreConflict`` if a seq is taken."""
        ...

    def read(self, log: str, start: int = 0, stop: int | None = None) -> Iterator[Row]:
        """Entries with ``start <= seq < stop``, in order of seq."""
        ...

    def hashes(self, log: str) -> Iterator[bytes]:
        """The entry hashes of ``log`` in order of seq (to rebuild the Merkle tree)."""
        ...

    def count(self, log: str) -> int:
        """How many entries ``log`` holds."""
        ...

    def add_checkpoint(self, log: str, checkpoint: Checkpointed) -> None:
        """Keep a signed checkpoint."""
        ...

    def checkpoints(self, log: str) -> list[Checkpointed]:
        """All checkpoints of ``log``, by tree size."""
        ...

    def add_anchor(self, log: str, tree_size: int, record: dict[str, Any]) -> None:
        """Keep the receipt of an on-chain anchor of the checkpoint at ``tree_size``."""
        ...

    def anchors(self, log: str) -> list[dict[str, Any]]:
        """All anchor receipts of ``log``, by tree size."""
        ...

    def logs(self) -> list[str]:
        """The names of the logs this store holds."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


def open_store(url: str) -> Store:
    """A store for ``url``: ``postgresql://...``, ``sqlite:///path`` or a plain file path."""
    if url.startswith(("postgresql://", "postgres://")):
        from ledger.store._postgres import PostgresStore

        return PostgresStore(url)
    from ledger.store._sqlite import SQLiteStore

    return SQLiteStore(url.removeprefix("sqlite://"))
