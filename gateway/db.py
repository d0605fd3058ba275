"""One connection to the gateway's own tables beside the ledger: SQLite (WAL) or PostgreSQL, with exclusive
write transactions.

With PostgreSQL, the tables of every component (statistics, model pins, fairness results) live in the
ledger's database, so that replicas share them. With SQLite each component has its own file beside
``ledger.sqlite3`` (``stats.sqlite3``, ...): SQLite has one writer per file, and none of them may ever hold
the ledger's write lock.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_PG_LOCK = 0x44504244  # advisory lock serializing schema creation across replicas


def beside_ledger(ledger_store: str, sqlite_name: str) -> str:
    """Where a component's tables live for a ledger store URL: the ledger's PostgreSQL database, or the SQLite
    file ``sqlite_name`` in the ledger file's folder."""
    if ledger_store.startswith(("postgresql://", "postgres://")):
        return ledger_store
    return str(Path(ledger_store.removeprefix("sqlite://")).with_name(sqlite_name))


def stats_url(ledger_store: str) -> str:
    """Where the statistics tables live (``stats.sqlite3`` beside an SQLite ledger)."""
    return beside_ledger(ledger_store, "stats.sqlite3")


class Database:
    """A connection used by one thread at a time; ``transaction`` takes the write lock up front."""

    def __init__(self, url: str | Path, schema: Sequence[str]) -> None:
        text = str(url)
        self._lock = threading.Lock()
        self.pg = text.startswith(("postgresql://", "postgres://"))
        if self.pg:
            import psycopg

            self._conn: Any = psycopg.connect(text, autocommit=True, connect_timeout=10)
        else:
            path = Path(text.removeprefix("sqlite://"))
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
        with self.transaction():
            if self.pg:
                self.execute("SELECT pg_advisory_xact_lock(?)", (_PG_LOCK,))
            for statement in schema:  # {id}: an ascending integer key, {blob}: bytes, in either dialect
                key, blob = ("BIGSERIAL PRIMARY KEY", "BYTEA") if self.pg else ("INTEGER PRIMARY KEY", "BLOB")
                self.execute(statement.replace("{id}", key).replace("{blob}", blob))

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self, lock_key: int | None = None) -> Iterator[None]:
        """One write transaction. SQLite takes the file's write lock at BEGIN; PostgreSQL takes the advisory
        lock ``lock_key`` if given (row locks serialize the rest)."""
        with self._lock:
            if self.pg:
                with self._conn.transaction():
                    if lock_key is not None:
                        self.execute("SELECT pg_advisory_xact_lock(?)", (lock_key,))
                    yield
                return
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Reads outside a write transaction (each statement sees committed data)."""
        with self._lock:
            yield

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement with ``?`` placeholders (turned into ``%s`` for PostgreSQL)."""
        return self._conn.execute(sql.replace("?", "%s") if self.pg else sql, params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        if self.pg:
            with self._conn.cursor() as cur:
                cur.executemany(sql.replace("?", "%s"), rows)
        else:
            self._conn.executemany(sql, rows)
