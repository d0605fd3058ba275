"""The fairness tables beside the ledger: decision records, audit results and schedule slots.

PostgreSQL: in the ledger's database, shared by the replicas. SQLite: ``fairness.sqlite3`` beside the ledger's
file (``gateway.db``). Three tables:

- ``fairness_decisions``: one row per recorded decision (request id, outcome audit, model, version, decision
  0/1 or NULL when unreadable, group, time, expiry) and, once uploaded, its outcome and upload id. Audit data
  with a retention, deleted by ``purge`` when ``expires_at`` passes; never a prompt or an answer.
- ``fairness_audits``: every finished audit, probe or outcome, with its result as JSON, for the API.
- ``fairness_schedule``: per scheduled audit, when the scheduler first saw it and the last slot claimed
  (``claim``: the exactly-once step, see ``gateway.fairness.scheduler``).

Methods block (database I/O): callers on the event loop run them in a thread.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.db import Database, beside_ledger
from gateway.fairness.probeset import Schedule
from gateway.fairness.schedule import due
from gateway.timefmt import iso

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS fairness_decisions (request_id TEXT PRIMARY KEY, audit TEXT NOT NULL,"
    " model TEXT NOT NULL, version TEXT NOT NULL, prediction SMALLINT, grp TEXT NOT NULL,"
    " decided_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION NOT NULL, outcome SMALLINT,"
    " upload_id TEXT)",
    "CREATE INDEX IF NOT EXISTS fairness_decisions_audit ON fairness_decisions (audit, model, decided_at)",
    "CREATE INDEX IF NOT EXISTS fairness_decisions_expiry ON fairness_decisions (expires_at)",
    "CREATE TABLE IF NOT EXISTS fairness_audits (id TEXT PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL,"
    " model TEXT NOT NULL, version TEXT NOT NULL, status TEXT NOT NULL, started_at DOUBLE PRECISION NOT NULL,"
    " finished_at DOUBLE PRECISION NOT NULL, requested_by TEXT NOT NULL, log TEXT NOT NULL, seq BIGINT,"
    " accuracy DOUBLE PRECISION, result TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS fairness_audits_newest ON fairness_audits (finished_at, id)",
    "CREATE INDEX IF NOT EXISTS fairness_audits_model ON fairness_audits (name, model, finished_at)",
    "CREATE TABLE IF NOT EXISTS fairness_schedule (name TEXT PRIMARY KEY, since DOUBLE PRECISION NOT NULL,"
    " last_slot DOUBLE PRECISION, claimed_by TEXT, claimed_at DOUBLE PRECISION)",
)
SQLITE_FILE = "fairness.sqlite3"


def fairness_url(ledger_store: str) -> str:
    """Where the fairness tables live for a ledger store URL."""
    return beside_ledger(ledger_store, SQLITE_FILE)


def lock_key(name: str) -> int:
    """The PostgreSQL advisory lock of one audit's schedule row (a signed 64-bit key from its name)."""
    return int.from_bytes(hashlib.sha256(f"fairness-schedule:{name}".encode()).digest()[:8], "big", signed=True)


@dataclass(frozen=True, slots=True)
class DecisionRow:
    request_id: str
    audit: str
    model: str
    version: str
    prediction: int | None
    group: str
    decided_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class Cell:
    """Labelled decisions of one model version and group with one (prediction, outcome) pair."""

    version: str
    group: str
    prediction: int | None
    outcome: int
    count: int


@dataclass(frozen=True)
class AuditRecord:
    """One finished audit as the API shows it; ``result`` is the whole report."""

    id: str
    name: str
    kind: str
    model: str
    version: str
    status: str
    started_at: float
    finished_at: float
    requested_by: str
    log: str
    """The ledger log holding its ``fairness.audit`` entry (a gateway's origin, or ``<origin>/fairness``)."""
    seq: int | None
    accuracy: float | None
    result: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        """The list view: everything but the result, plus the checks that did not pass."""
        return {
            "id": self.id, "object": "fairness.audit", "name": self.name, "kind": self.kind, "model": self.model,
            "version": self.version or None, "status": self.status, "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at), "requested_by": self.requested_by,
            "ledger": {"log": self.log, "seq": self.seq}, "accuracy": self.accuracy,
        }  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "result": self.result}


_AUDIT_COLUMNS = "id, name, kind, model, version, status, started_at, finished_at, requested_by, log, seq, accuracy"


def _record(row: Sequence[Any], result: Any) -> AuditRecord:
    r = list(row)
    loaded = orjson.loads(result) if isinstance(result, str | bytes) else {}
    return AuditRecord(str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5]), float(r[6]), float(r[7]),
                       str(r[8]), str(r[9]), None if r[10] is None else int(r[10]),
                       None if r[11] is None else float(r[11]), loaded)  # fmt: skip


class FairnessStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.db = Database(url, SCHEMA)

    def close(self) -> None:
        self.db.close()

    # ----- decisions

    def add_decisions(self, rows: Sequence[DecisionRow]) -> None:
        """Insert decision records in one transaction (a request id already present is left as it is)."""
        with self.db.transaction():
            self.db.executemany(
                "INSERT INTO fairness_decisions (request_id, audit, model, version, prediction, grp, decided_at,"
                " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (request_id) DO NOTHING",
                [(r.request_id, r.audit, r.model, r.version, r.prediction, r.group, r.decided_at, r.expires_at)
                 for r in rows],
            )  # fmt: skip

    def cells(self, audit: str, model: str, start: float, end: float) -> list[Cell]:
        """The labelled decisions of ``model`` under ``audit`` made in [start, end), counted by cell."""
        with self.db.reading():
            rows = self.db.execute(
                "SELECT version, grp, prediction, outcome, COUNT(*) FROM fairness_decisions WHERE audit = ?"
                " AND model = ? AND decided_at >= ? AND decided_at < ? AND outcome IS NOT NULL"
                " GROUP BY version, grp, prediction, outcome",
                (audit, model, start, end),
            ).fetchall()
        return [Cell(str(v), str(g), None if p is None else int(p), int(o), int(n)) for v, g, p, o, n in rows]

    def coverage(self, audit: str, model: str, start: float, end: float) -> dict[tuple[str, str], int]:
        """Decisions recorded in [start, end), labelled or not, by (version, group)."""
        with self.db.reading():
            rows = self.db.execute(
                "SELECT version, grp, COUNT(*) FROM fairness_decisions WHERE audit = ? AND model = ?"
                " AND decided_at >= ? AND decided_at < ? GROUP BY version, grp",
                (audit, model, start, end),
            ).fetchall()
        return {(str(v), str(g)): int(n) for v, g, n in rows}

    def purge(self, now: float | None = None) -> int:
        """Delete the decision records past their retention; how many."""
        with self.db.transaction():
            cur = self.db.execute("DELETE FROM fairness_decisions WHERE expires_at < ?", (now or time.time(),))
            return int(cur.rowcount or 0)

    # ----- audit results

    def save_audit(self, record: AuditRecord) -> None:
        with self.db.transaction():
            self.db.execute(
                f"INSERT INTO fairness_audits ({_AUDIT_COLUMNS}, result) VALUES ({', '.join('?' * 13)})",
                (record.id, record.name, record.kind, record.model, record.version, record.status, record.started_at,
                 record.finished_at, record.requested_by, record.log, record.seq, record.accuracy,
                 orjson.dumps(record.result).decode()),
            )  # fmt: skip

    def audit(self, audit_id: str) -> AuditRecord | None:
        with self.db.reading():
            row = self.db.execute(f"SELECT {_AUDIT_COLUMNS}, result FROM fairness_audits WHERE id = ?",
                                  (audit_id,)).fetchone()  # fmt: skip
        return None if row is None else _record(row[:-1], row[-1])

    def audits(self, *, name: str | None = None, model: str | None = None, kind: str | None = None,
               limit: int = 50, after: str | None = None) -> tuple[list[AuditRecord], bool]:  # fmt: skip
        """Newest first, filtered; ``after`` is the id of the last record of the previous page. Also whether
        more follow. An unknown ``after`` gives an empty page."""
        where, params = [], []
        for column, value in (("name", name), ("model", model), ("kind", kind)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        with self.db.reading():
            if after is not None:
                cursor = self.db.execute("SELECT finished_at FROM fairness_audits WHERE id = ?", (after,)).fetchone()
                if cursor is None:
                    return [], False
                where.append("(finished_at < ? OR (finished_at = ? AND id < ?))")
                params += [cursor[0], cursor[0], after]
            sql = f"SELECT {_AUDIT_COLUMNS} FROM fairness_audits"
            if where:
                sql += " WHERE " + " AND ".join(where)
            rows = self.db.execute(sql + " ORDER BY finished_at DESC, id DESC LIMIT ?", (*params, limit + 1)).fetchall()
        return [_record(r, None) for r in rows[:limit]], len(rows) > limit

    def finished_between(self, start: float, end: float) -> list[AuditRecord]:
        """Every audit finished at ``start <= finished_at < end``, with its result, oldest first (reports)."""
        with self.db.reading():
            rows = self.db.execute(f"SELECT {_AUDIT_COLUMNS}, result FROM fairness_audits WHERE finished_at >= ? "
                                   "AND finished_at < ? ORDER BY finished_at, id", (start, end)).fetchall()  # fmt: skip
        return [_record(r[:-1], r[-1]) for r in rows]

    def accuracies(self, name: str, model: str, since: float) -> list[float]:
        """The accuracies of ``model``'s outcome audits under ``name`` finished since ``since``, oldest first."""
        with self.db.reading():
            rows = self.db.execute(
                "SELECT accuracy FROM fairness_audits WHERE name = ? AND model = ? AND kind = 'outcome'"
                " AND finished_at >= ? AND accuracy IS NOT NULL ORDER BY finished_at",
                (name, model, since),
            ).fetchall()
        return [float(a) for (a,) in rows]

    # ----- schedule

    def claim(self, name: str, schedule: Schedule, now: datetime, replica: str) -> datetime | None:
        """Claim the slot of ``name`` due at ``now``, if any: the caller then runs the audit, and no other caller
        (another replica included) gets that slot. The schedule row is created on first sight (its first slot
        is one interval later).

        Under the row's PostgreSQL advisory lock (SQLite: the file's write lock, ``BEGIN IMMEDIATE``), the last
        slot is read and, when a newer one is due, moved on in the same transaction: a replica that takes the
        lock after another committed its claim reads the new slot and finds nothing due."""
        with self.db.transaction(lock_key=lock_key(name)):
            self.db.execute("INSERT INTO fairness_schedule (name, since) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                            (name, now.timestamp()))  # fmt: skip
            since, last = self.db.execute("SELECT since, last_slot FROM fairness_schedule WHERE name = ?",
                                          (name,)).fetchone()  # fmt: skip
            reference = datetime.fromtimestamp(float(last if last is not None else since), UTC)
            slot = due(schedule, reference, now)
            if slot is None:
                return None
            self.db.execute("UPDATE fairness_schedule SET last_slot = ?, claimed_by = ?, claimed_at = ? WHERE name = ?",
                            (slot.timestamp(), replica, now.timestamp(), name))  # fmt: skip
            return slot

    def reschedule(self, name: str, reference: datetime) -> None:
        """Set the reference time of ``name`` (its next slot is computed from it): for operators and tests."""
        with self.db.transaction(lock_key=lock_key(name)):
            self.db.execute("INSERT INTO fairness_schedule (name, since) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
                            (name, reference.timestamp()))  # fmt: skip
            self.db.execute("UPDATE fairness_schedule SET since = ?, last_slot = NULL WHERE name = ?",
                            (reference.timestamp(), name))  # fmt: skip
