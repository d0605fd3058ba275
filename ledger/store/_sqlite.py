"""The embedded store: one SQLite file in WAL mode, fsync on every commit (``synchronous=FULL``)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ledger.store import Checkpointed, Row, StoreConflict, StoreError
from ledger.store._migrations import SQLITE

_BATCH = 5000


class SQLiteStore:
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # the WAL is fsynced at each commit
            self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the ledger database {self.path}: {exc}") from exc

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    def _migrate(self) -> None:
        db = self._db
        db.execute("CREATE TABLE IF NOT EXISTS ledger_schema (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
        known = max(v for v, _ in SQLITE)
        (current,) = db.execute("SELECT coalesce(max(version), 0) FROM ledger_schema").fetchone()
        if current > known:
            raise StoreError(f"{self.path} has schema version {current}; this version knows up to {known}")
        for version, sql in SQLITE:
            if version <= current:
                continue
            db.execute("BEGIN IMMEDIATE")
            try:
                (now,) = db.execute("SELECT coalesce(max(version), 0) FROM ledger_schema").fetchone()
                if now < version:  # another process may have migrated meanwhile
                    for statement in _statements(sql):
                        db.execute(statement)
                    db.execute("INSERT INTO ledger_schema VALUES (?, datetime('now'))", (version,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def head(self, log: str) -> Row | None:
        row = self._db.execute(
            "SELECT seq, hash, body FROM ledger_entries WHERE log = ? ORDER BY seq DESC LIMIT 1", (log,)
        ).fetchone()
        return None if row is None else (row[0], _blob(row[1]), _blob(row[2]))

    def append(self, log: str, rows: Sequence[Row]) -> None:
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("INSERT INTO ledger_entries (log, seq, hash, body) VALUES (?, ?, ?, ?)",
                               [(log, seq, h, body) for seq, h, body in rows])  # fmt: skip
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.IntegrityError as exc:
            raise StoreConflict(f"another writer appended to log {log!r} in {self.path}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write to the ledger database {self.path}: {exc}") from exc

    def read(self, log: str, start: int = 0, stop: int | None = None) -> Iterator[Row]:
        end = (1 << 62) if stop is None else stop
        while start < end:
            rows = self._db.execute(
                "SELECT seq, hash, body FROM ledger_entries WHERE log = ? AND seq >= ? AND seq < ? "
                "ORDER BY seq LIMIT ?",
                (log, start, end, _BATCH),
            ).fetchall()
            for seq, h, body in rows:
                yield seq, _blob(h), _blob(body)
            if len(rows) < _BATCH:
                return
            start = rows[-1][0] + 1

    def hashes(self, log: str) -> Iterator[bytes]:
        cur = self._db.execute("SELECT hash FROM ledger_entries WHERE log = ? ORDER BY seq", (log,))
        while rows := cur.fetchmany(_BATCH):
            for (h,) in rows:
                yield _blob(h)

    def count(self, log: str) -> int:
        (n,) = self._db.execute("SELECT count(*) FROM ledger_entries WHERE log = ?", (log,)).fetchone()
        return int(n)

    def add_checkpoint(self, log: str, checkpoint: Checkpointed) -> None:
        c = checkpoint
        self._write("INSERT OR IGNORE INTO ledger_checkpoints VALUES (?, ?, ?, ?, ?)",
                    (log, c.tree_size, c.root, c.timestamp, c.note))  # fmt: skip

    def checkpoints(self, log: str) -> list[Checkpointed]:
        rows = self._db.execute(
            "SELECT tree_size, root, timestamp, note FROM ledger_checkpoints WHERE log = ? ORDER BY tree_size", (log,)
        ).fetchall()
        return [Checkpointed(size, bytes(root), ts, note) for size, root, ts, note in rows]

    def add_anchor(self, log: str, tree_size: int, record: dict[str, Any]) -> None:
        self._write("INSERT OR REPLACE INTO ledger_anchors VALUES (?, ?, ?)",
                    (log, tree_size, json.dumps(record, sort_keys=True)))  # fmt: skip

    def anchors(self, log: str) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT record FROM ledger_anchors WHERE log = ? ORDER BY tree_size", (log,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def logs(self) -> list[str]:
        return [r[0] for r in self._db.execute(_LOGS)]

    def close(self) -> None:
        self._db.close()

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        try:
            self._db.execute(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write to the ledger database {self.path}: {exc}") from exc


def _statements(script: str) -> list[str]:
    """Split a migration into statements, keeping trigger bodies (``BEGIN ... END;``) whole."""
    out: list[str] = []
    buf = ""
    for part in script.split(";"):
        buf += part + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \n;"):
                out.append(buf.strip())
            buf = ""
    return out


def _blob(value: object) -> bytes:
    """A BLOB column's value; an edited database may hold TEXT there, which must not crash a verifier."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode()


_LOGS = (  # a loose index scan: one probe of the (log, seq) key per log, not a pass over every entry
    "WITH RECURSIVE l(log) AS (SELECT MIN(log) FROM ledger_entries UNION ALL"
    " SELECT (SELECT MIN(log) FROM ledger_entries WHERE log > l.log) FROM l WHERE l.log IS NOT NULL)"
    " SELECT log FROM l WHERE log IS NOT NULL"
)
