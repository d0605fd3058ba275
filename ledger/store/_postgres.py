"""The replica store: PostgreSQL, one log per replica in shared tables. A commit is durable."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from ledger.store import Checkpointed, Row, StoreConflict, StoreError
from ledger.store._migrations import POSTGRES

_BATCH = 5000
_LOCK_ID = 0x4C454447  # advisory lock that serializes migrations across replicas


def _safe(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class PostgresStore:
    def __init__(self, url: str) -> None:
        self.url = _safe(url)
        try:
            self._db = psycopg.connect(url, autocommit=False, connect_timeout=10)
            self._migrate()
        except psycopg.Error as exc:
            raise StoreError(f"cannot open the ledger database {self.url}: {exc}") from exc

    def __repr__(self) -> str:
        return f"PostgresStore({self.url!r})"

    def _migrate(self) -> None:
        db = self._db
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
            db.execute("CREATE TABLE IF NOT EXISTS ledger_schema "
                       "(version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")  # fmt: skip
            row = db.execute("SELECT coalesce(max(version), 0) FROM ledger_schema").fetchone()
            current = row[0] if row else 0
            known = max(v for v, _ in POSTGRES)
            if current > known:
                raise StoreError(f"{self.url} has schema version {current}; this version knows up to {known}")
            for version, sql in POSTGRES:
                if version > current:
                    db.execute(sql.encode())
                    db.execute("INSERT INTO ledger_schema (version) VALUES (%s)", (version,))
        db.commit()

    def head(self, log: str) -> Row | None:
        row = self._fetchone("SELECT seq, hash, body FROM ledger_entries WHERE log = %s ORDER BY seq DESC LIMIT 1",
                             (log,))  # fmt: skip
        return None if row is None else (row[0], bytes(row[1]), bytes(row[2]))

    def append(self, log: str, rows: Sequence[Row]) -> None:
        try:
            with self._db.cursor() as cur:
                cur.executemany("INSERT INTO ledger_entries (log, seq, hash, body) VALUES (%s, %s, %s, %s)",
                                [(log, seq, h, body) for seq, h, body in rows])  # fmt: skip
            self._db.commit()
        except psycopg.errors.UniqueViolation as exc:
            self._db.rollback()
            raise StoreConflict(f"another writer appended to log {log!r} in {self.url}") from exc
        except psycopg.Error as exc:
            self._rollback()
            raise StoreError(f"cannot write to the ledger database {self.url}: {exc}") from exc

    def read(self, log: str, start: int = 0, stop: int | None = None) -> Iterator[Row]:
        end = (1 << 62) if stop is None else stop
        while start < end:
            rows = self._fetchall(
                "SELECT seq, hash, body FROM ledger_entries WHERE log = %s AND seq >= %s AND seq < %s "
                "ORDER BY seq LIMIT %s",
                (log, start, end, _BATCH),
            )
            for seq, h, body in rows:
                yield seq, bytes(h), bytes(body)
            if len(rows) < _BATCH:
                return
            start = rows[-1][0] + 1

    def hashes(self, log: str) -> Iterator[bytes]:
        start = 0
        while True:  # the hash column only: rebuilding the tree at start must not fetch every body
            rows = self._fetchall("SELECT seq, hash FROM ledger_entries WHERE log = %s AND seq >= %s "
                                  "ORDER BY seq LIMIT %s", (log, start, _BATCH))  # fmt: skip
            for _, h in rows:
                yield bytes(h)
            if len(rows) < _BATCH:
                return
            start = rows[-1][0] + 1

    def count(self, log: str) -> int:
        row = self._fetchone("SELECT count(*) FROM ledger_entries WHERE log = %s", (log,))
        return int(row[0]) if row else 0

    def add_checkpoint(self, log: str, checkpoint: Checkpointed) -> None:
        c = checkpoint
        self._write("INSERT INTO ledger_checkpoints VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    (log, c.tree_size, c.root, c.timestamp, c.note))  # fmt: skip

    def checkpoints(self, log: str) -> list[Checkpointed]:
        rows = self._fetchall("SELECT tree_size, root, timestamp, note FROM ledger_checkpoints WHERE log = %s "
                              "ORDER BY tree_size", (log,))  # fmt: skip
        return [Checkpointed(size, bytes(root), ts, note) for size, root, ts, note in rows]

    def add_anchor(self, log: str, tree_size: int, record: dict[str, Any]) -> None:
        self._write("INSERT INTO ledger_anchors VALUES (%s, %s, %s) "
                    "ON CONFLICT (log, tree_size) DO UPDATE SET record = EXCLUDED.record",
                    (log, tree_size, json.dumps(record, sort_keys=True)))  # fmt: skip

    def anchors(self, log: str) -> list[dict[str, Any]]:
        rows = self._fetchall("SELECT record FROM ledger_anchors WHERE log = %s ORDER BY tree_size", (log,))
        return [json.loads(r[0]) for r in rows]

    def logs(self) -> list[str]:
        return [r[0] for r in self._fetchall(_LOGS, ())]

    def close(self) -> None:
        self._db.close()

    def _rollback(self) -> None:
        with contextlib.suppress(psycopg.Error):  # the connection is gone; the next call reports it
            self._db.rollback()

    def _fetchone(self, sql: str, params: tuple[Any, ...]) -> Any:
        try:
            row = self._db.execute(sql.encode(), params).fetchone()
            self._db.commit()  # end the read transaction so it holds no snapshot
            return row
        except psycopg.Error as exc:
            self._rollback()
            raise StoreError(f"cannot read the ledger database {self.url}: {exc}") from exc

    def _fetchall(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        try:
            rows = self._db.execute(sql.encode(), params).fetchall()
            self._db.commit()
            return rows
        except psycopg.Error as exc:
            self._rollback()
            raise StoreError(f"cannot read the ledger database {self.url}: {exc}") from exc

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        try:
            self._db.execute(sql.encode(), params)
            self._db.commit()
        except psycopg.Error as exc:
            self._rollback()
            raise StoreError(f"cannot write to the ledger database {self.url}: {exc}") from exc


_LOGS = (  # a loose index scan: one probe of the (log, seq) key per log, not a pass over every entry
    "WITH RECURSIVE l(log) AS (SELECT MIN(log) FROM ledger_entries UNION ALL"
    " SELECT (SELECT MIN(log) FROM ledger_entries WHERE log > l.log) FROM l WHERE l.log IS NOT NULL)"
    " SELECT log FROM l WHERE log IS NOT NULL"
)
