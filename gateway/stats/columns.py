"""The facts in memory, as numpy columns, so that a release over a million facts is a few array passes.

A SQL ``GROUP BY`` over a million rows costs 0.4-1 s in SQLite or PostgreSQL on the project's machine; the
same aggregation over integer-coded numpy columns costs a few tens of milliseconds. The tables stay the
durable copy: ``refresh`` reads only the rows changed since the last refresh (each indexing batch stamps
the facts it inserts or completes with a new change number), so facts indexed by another replica arrive too.
Memory: about 40 bytes per request fact.

Strings (models, routes, role sets, reasons, kinds of personal data, callers) are coded as integers per
column; code 0 is "none".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.db import Database

REQUEST_COLUMNS = ("day", "nth", "unit", "model", "route", "roles", "outcome", "fallback", "prompt_tokens",
                   "completion_tokens", "latency_ms")  # fmt: skip
DENIAL_COLUMNS = ("day", "nth", "unit", "reason")
PII_COLUMNS = ("day", "nth", "k", "direction", "entity")
_CODED = {"unit", "model", "route", "roles", "outcome", "reason", "direction", "entity"}
_DTYPES = {"day": np.int32, "nth": np.uint32, "k": np.int16, "fallback": np.int8, "prompt_tokens": np.int64,
           "completion_tokens": np.int64, "latency_ms": np.int64}  # fmt: skip


@dataclass
class Codes:
    """Strings to small integers and back, for one column; 0 is None."""

    labels: list[str | None] = field(default_factory=lambda: [None])
    index: dict[str | None, int] = field(default_factory=lambda: {None: 0})

    def code(self, value: Any) -> int:
        key = None if value is None else str(value)
        c = self.index.get(key)
        if c is None:
            c = self.index[key] = len(self.labels)
            self.labels.append(key)
        return c


class Table:
    """The columns of one kind of fact, positioned by fact id (ascending)."""

    def __init__(self, columns: tuple[str, ...]) -> None:
        self.names = columns
        self.ids = np.empty(0, dtype=np.int64)
        self.cols: dict[str, np.ndarray[Any, Any]] = {c: np.empty(0, dtype=self._dtype(c)) for c in columns}
        self.codes: dict[str, Codes] = {c: Codes() for c in columns if c in _CODED}

    @staticmethod
    def _dtype(name: str) -> Any:
        return np.int32 if name in _CODED else _DTYPES[name]

    def __len__(self) -> int:
        return len(self.ids)

    def _encode(self, rows: list[tuple[Any, ...]]) -> tuple[np.ndarray[Any, Any], dict[str, np.ndarray[Any, Any]]]:
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        out = {}
        for i, name in enumerate(self.names, start=1):
            if name in _CODED:
                code = self.codes[name].code
                out[name] = np.fromiter((code(r[i]) for r in rows), dtype=np.int32, count=len(rows))
            elif name == "nth":  # never capped: a cap below a day's bound would count a caller's facts beyond it
                out[name] = np.fromiter((int(r[i]) for r in rows), dtype=np.uint32, count=len(rows))
            else:  # integers where None (not completed, no tokens) is -1
                out[name] = np.fromiter((-1 if r[i] is None else int(r[i]) for r in rows), dtype=_DTYPES[name],
                                        count=len(rows))  # fmt: skip
        return ids, out

    def apply(self, rows: list[tuple[Any, ...]]) -> None:
        """Rows ``(id, *columns)`` in ascending id: new ids are appended, known ids overwritten."""
        if not rows:
            return
        ids, values = self._encode(rows)
        last = self.ids[-1] if len(self.ids) else -1
        new = ids > last
        if (~new).any():
            pos = np.searchsorted(self.ids, ids[~new])
            if (pos >= len(self.ids)).any() or (self.ids[np.minimum(pos, len(self.ids) - 1)] != ids[~new]).any():
                raise RuntimeError("a changed fact is not in memory: the fact tables were rebuilt")
            for name, arr in values.items():
                self.cols[name][pos] = arr[~new]
        if new.any():
            self.ids = np.concatenate([self.ids, ids[new]])
            for name, arr in values.items():
                self.cols[name] = np.concatenate([self.cols[name], arr[new]])


class FactColumns:
    """Request, denial and PII facts in memory, kept in step with the fact tables by change number."""

    def __init__(self) -> None:
        self.request = Table(REQUEST_COLUMNS)
        self.denial = Table(DENIAL_COLUMNS)
        self.pii = Table(PII_COLUMNS)
        self._change = 0
        self._pii_id = 0

    def refresh(self, db: Database) -> None:
        """Read what changed in the tables since the last refresh."""
        with db.reading():
            # Sorting in SQL only for the first load: with ORDER BY, the planners scan by id instead of using
            # the index on change, a pass over every fact for the few that changed.
            facts = db.execute(
                "SELECT id, kind, day, nth, unit, model, route, roles, outcome, fallback, prompt_tokens,"
                " completion_tokens, latency_ms, reason, change FROM dp_facts WHERE change > ?"
                + (" ORDER BY id" if self._change == 0 else ""),
                (self._change,),
            ).fetchall()
            facts.sort(key=lambda r: int(r[0]))
            pii = db.execute("SELECT id, day, nth, k, direction, entity FROM dp_pii WHERE id > ? ORDER BY id",
                             (self._pii_id,)).fetchall()  # fmt: skip
        if facts:
            self.request.apply([(r[0], *r[2:13]) for r in facts if r[1] == "request"])
            self.denial.apply([(r[0], r[2], r[3], r[4], r[13]) for r in facts if r[1] == "denial"])
            self._change = max(int(r[14]) for r in facts)
        if pii:
            self.pii.apply([tuple(r) for r in pii])
            self._pii_id = int(pii[-1][0])
