"""The facts that statistics are computed from: one row per request or denial, read from the ledger.

The ledger is the only source. ``FactIndex.catch_up`` reads the entries appended since its cursor (every
log in the store: one per replica) and keeps, per entry that matters, what releases may group by and sum:

- ``request.admitted`` opens a request fact (day, caller, model, route, roles, and the kinds of personal
  data found in the prompt); ``request.completed`` fills in its outcome, status, fallback, tokens, latency
  and the kinds found in the answer;
- ``authz.decision`` (denied), ``authz.limit``, ``pii.blocked`` and ``pii.unavailable`` are denial facts,
  each with a reason.

The privacy unit of a fact is the caller's owner: an API key's owner, or a token's subject, learnt from the
``owner`` that ``authz.decision`` entries carry (kept in ``dp_units``), so that one person's several keys are
one unit. Each fact carries ``nth``: 1 + how many facts of its kind its caller had earlier that UTC day. A release
counts only facts with ``nth <= K``, which bounds one caller's contribution per day whatever K the privacy
policy says now. Authentication failures have no identified caller (the actor is ``anonymous``), so they
are not facts: a release cannot bound them per caller.

Catching up is one write transaction per batch, guarded by the cursor: replicas sharing a PostgreSQL store
index each entry exactly once (the advisory lock serializes them; the loser finds the cursor moved).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import orjson

from gateway.db import Database
from gateway.stats.columns import FactColumns
from ledger.store import Store, open_store

_EPOCH = date(1970, 1, 1).toordinal()
_INDEX_LOCK = 0x44504658  # advisory lock of the indexer (PostgreSQL)

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS dp_cursor (log TEXT PRIMARY KEY, next_seq BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS dp_meta (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS dp_facts (id {id}, log TEXT NOT NULL, seq BIGINT NOT NULL, kind TEXT NOT NULL,"
    " day INTEGER NOT NULL, unit TEXT NOT NULL, nth INTEGER NOT NULL, model TEXT, route TEXT, roles TEXT,"
    " reason TEXT, outcome TEXT, status INTEGER, fallback INTEGER, prompt_tokens BIGINT,"
    " completion_tokens BIGINT, latency_ms BIGINT, change BIGINT NOT NULL, UNIQUE (log, seq))",
    "CREATE INDEX IF NOT EXISTS dp_facts_kind_day ON dp_facts (kind, day)",
    "CREATE INDEX IF NOT EXISTS dp_facts_change ON dp_facts (change)",
    "CREATE TABLE IF NOT EXISTS dp_pii (id {id}, log TEXT NOT NULL, seq BIGINT NOT NULL, direction TEXT NOT NULL,"
    " entity TEXT NOT NULL, k INTEGER NOT NULL, day INTEGER NOT NULL, nth INTEGER NOT NULL,"
    " UNIQUE (log, seq, direction, entity))",
    "CREATE TABLE IF NOT EXISTS dp_units (subject TEXT PRIMARY KEY, unit TEXT NOT NULL)",
)

_FACT_COLUMNS = ("log", "seq", "kind", "day", "unit", "nth", "model", "route", "roles", "reason", "outcome",
                 "status", "fallback", "prompt_tokens", "completion_tokens", "latency_ms", "change")  # fmt: skip
_INSERT_FACT = f"INSERT INTO dp_facts ({', '.join(_FACT_COLUMNS)}) VALUES ({', '.join('?' * len(_FACT_COLUMNS))})"
_INSERT_PII = "INSERT INTO dp_pii (log, seq, direction, entity, k, day, nth) VALUES (?, ?, ?, ?, ?, ?, ?)"
_COMPLETE = ("UPDATE dp_facts SET outcome = ?, status = ?, fallback = ?, prompt_tokens = ?, completion_tokens = ?,"
             " latency_ms = ?, model = COALESCE(model, ?), change = ?"
             " WHERE log = ? AND seq = ? AND kind = 'request'")  # fmt: skip

DENIAL_REASONS = ("route_denied", "model_denied", "rate_limit", "max_tokens", "stream", "pii_blocked",
                  "pii_unavailable", "other")  # fmt: skip
"""Every reason a denial fact can carry: public by construction."""


def day_number(d: date) -> int:
    """Days since 1970-01-01 (how facts store their UTC day)."""
    return d.toordinal() - _EPOCH


def day_of(number: int) -> date:
    return date.fromordinal(number + _EPOCH)


def _entities(pii: Any) -> list[str]:
    """The kinds in a ledger ``pii`` map (``{"EMAIL_ADDRESS:replace": 2}``), sorted, each once."""
    if not isinstance(pii, dict):
        return []
    return sorted({str(key).split(":", 1)[0] for key, n in pii.items() if isinstance(n, int) and n > 0})


def _denial(kind: str, data: dict[str, Any]) -> tuple[str, str | None, str | None] | None:
    """(reason, model, route) when the entry is a denial, else None."""
    if kind == "authz.decision":
        if data.get("allowed") is not False:
            return None
        obj = str(data.get("object", ""))
        if obj.startswith("model:"):
            return "model_denied", obj.removeprefix("model:"), None
        return "route_denied", None, obj.removeprefix("route:")
    if kind == "authz.limit":
        reason = data.get("reason")
        return (reason if reason in DENIAL_REASONS else "other"), data.get("model"), None
    if kind == "pii.blocked":
        return "pii_blocked", None, None
    if kind == "pii.unavailable":
        return "pii_unavailable", None, None
    return None


@dataclass
class _Batch:
    """What one catch-up transaction writes."""

    facts: dict[tuple[str, int], list[Any]] = field(default_factory=dict)
    pii: list[tuple[Any, ...]] = field(default_factory=list)
    completions: list[tuple[Any, ...]] = field(default_factory=list)
    late_pii: list[tuple[str, int, list[str]]] = field(default_factory=list)
    cursors: dict[str, int] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    entries: int = 0


class FactIndex:
    """Facts of the ledger at ``ledger_url``, kept in the statistics tables of ``db``."""

    def __init__(self, db: Database, ledger_url: str) -> None:
        self._db = db
        self._ledger_url = ledger_url
        self._counters: dict[tuple[str, str, int], int] = {}
        self._loaded: set[tuple[str, int]] = set()
        self._units: dict[str, str] = {}
        self.columns = FactColumns()
        self._store: Store | None = None
        self.lock = threading.Lock()
        """Held by a release while it catches up and reads the columns (they change on refresh)."""

    def catch_up(self, batch_entries: int = 50_000) -> int:
        """Index every entry appended since the last call (any replica's) and refresh the in-memory columns;
        returns how many entries were read."""
        if self._store is None:  # kept open: a PostgreSQL connection costs tens of milliseconds
            self._store = open_store(self._ledger_url)
        try:
            total = 0
            while True:
                done = self._one_batch(self._store, batch_entries)
                total += done
                if done < batch_entries:
                    break
        except Exception:
            self.close()  # a broken connection is opened afresh next time
            raise
        self.columns.refresh(self._db)
        return total

    def close(self) -> None:
        """Close the ledger store connection (the fact tables' connection belongs to the caller)."""
        if self._store is not None:
            self._store.close()
            self._store = None

    def _one_batch(self, store: Store, limit: int) -> int:
        with self._db.transaction(lock_key=_INDEX_LOCK):
            cursors = dict(self._db.execute("SELECT log, next_seq FROM dp_cursor").fetchall())
            batch = _Batch()
            self._counters.clear()  # another replica may have indexed since: reload what this batch needs
            self._loaded.clear()
            self._units = dict(self._db.execute("SELECT subject, unit FROM dp_units").fetchall())
            for log in store.logs():
                start = int(cursors.get(log, 0))
                for seq, _, body in store.read(log, start, start + limit - batch.entries):
                    self._add(batch, log, seq, orjson.loads(body))
                    batch.entries += 1
                    batch.cursors[log] = seq + 1
                if batch.entries >= limit:
                    break
            self._write(batch, cursors)
        return batch.entries

    def _nth(self, kind: str, unit: str, day: int) -> int:
        if (kind, day) not in self._loaded:  # one query per kind and day, not per caller
            self._loaded.add((kind, day))
            for u, n in self._db.execute("SELECT unit, MAX(nth) FROM dp_facts WHERE kind = ? AND day = ? "
                                         "GROUP BY unit", (kind, day)).fetchall():  # fmt: skip
                self._counters[(kind, u, day)] = int(n)
        key = (kind, unit, day)
        n = self._counters.get(key, 0) + 1
        self._counters[key] = n
        return n

    def _add(self, batch: _Batch, log: str, seq: int, entry: dict[str, Any]) -> None:
        kind, data, actor = entry.get("kind"), entry.get("data") or {}, str(entry.get("actor", ""))
        owner = data.get("owner")
        if kind == "authz.decision" and isinstance(owner, str) and owner and self._units.get(actor) != owner:
            self._units[actor] = batch.units[actor] = owner
        unit = self._units.get(actor, actor)
        if kind == "request.admitted":
            day = day_number(date.fromisoformat(str(entry["ts"])[:10]))
            nth = self._nth("request", unit, day)
            roles = ",".join(sorted(str(r) for r in data.get("roles", ())))
            batch.facts[(log, seq)] = [log, seq, "request", day, unit, nth, data.get("model"), data.get("route"),
                                       roles, None, None, None, None, None, None, None]  # fmt: skip
            for k, entity in enumerate(_entities(data.get("pii")), start=1):
                batch.pii.append((log, seq, "prompt", entity, k, day, nth))
        elif kind == "request.completed":
            admitted = data.get("admitted_seq")
            if not isinstance(admitted, int):
                return
            done = (data.get("outcome"), data.get("status"), int(bool(data.get("fallback_used"))),
                    data.get("prompt_tokens"), data.get("completion_tokens"), data.get("latency_ms"))  # fmt: skip
            fact = batch.facts.get((log, admitted))
            entities = _entities(data.get("pii"))
            if fact is not None:
                fact[10:16] = done
                fact[6] = fact[6] or data.get("model")
                batch.pii.extend((log, admitted, "answer", e, k, fact[3], fact[5]) for k, e in enumerate(entities, 1))
            else:
                batch.completions.append((*done, data.get("model"), log, admitted))  # change added at write
                if entities:
                    batch.late_pii.append((log, admitted, entities))
        else:
            denial = _denial(str(kind), data)
            if denial is None or actor in ("", "anonymous"):
                return
            day = day_number(date.fromisoformat(str(entry["ts"])[:10]))
            reason, model, route = denial
            batch.facts[(log, seq)] = [log, seq, "denial", day, unit, self._nth("denial", unit, day), model,
                                       route, None, reason, None, None, None, None, None, None]  # fmt: skip

    def _write(self, batch: _Batch, before: dict[str, int]) -> None:
        db = self._db
        if not batch.cursors:
            return
        row = db.execute("SELECT value FROM dp_meta WHERE name = 'change'").fetchone()
        change = 1 + (0 if row is None else int(row[0]))  # stamps what this batch inserts or completes
        if row is None:
            db.execute("INSERT INTO dp_meta (name, value) VALUES ('change', ?)", (change,))
        else:
            db.execute("UPDATE dp_meta SET value = ? WHERE name = 'change'", (change,))
        db.executemany(_INSERT_FACT, [[*f, change] for f in batch.facts.values()])
        db.executemany(_COMPLETE, [(*c[:7], change, *c[7:]) for c in batch.completions])
        for log, admitted, entities in batch.late_pii:
            row = db.execute("SELECT day, nth FROM dp_facts WHERE log = ? AND seq = ? AND kind = 'request'",
                             (log, admitted)).fetchone()  # fmt: skip
            if row is not None:
                batch.pii.extend((log, admitted, "answer", e, k, row[0], row[1]) for k, e in enumerate(entities, 1))
        db.executemany(_INSERT_PII, batch.pii)
        for subject, unit in batch.units.items():
            db.execute("DELETE FROM dp_units WHERE subject = ?", (subject,))
            db.execute("INSERT INTO dp_units (subject, unit) VALUES (?, ?)", (subject, unit))
        for log, next_seq in batch.cursors.items():
            if log in before:
                db.execute("UPDATE dp_cursor SET next_seq = ? WHERE log = ?", (next_seq, log))
            else:
                db.execute("INSERT INTO dp_cursor (log, next_seq) VALUES (?, ?)", (log, next_seq))

    # -- reading ------------------------------------------------------------------------------------------

    def rows(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Run a read-only aggregate over the fact tables."""
        with self._db.reading():
            return [tuple(r) for r in self._db.execute(sql, params).fetchall()]

    def indexed(self) -> dict[str, int]:
        """The next ledger seq to index, per log."""
        return dict(self.rows("SELECT log, next_seq FROM dp_cursor", ()))
