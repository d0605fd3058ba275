"""Model version pins set at run time: the incident runbook's second step, roll back to the previous version.

``gateway models pin NAME VERSION`` (``POST /admin/models/{name}/pin``) makes a route use another version of
its Triton model, and ``gateway models rollback NAME`` returns it to the version it used before, with no
restart. Every change is a row of ``model_pins`` (an append-only history: who, when, from, to) beside the
ledger, so that replicas share it and a restart keeps it, and a ``model.pinned`` ledger entry. A row with an
empty version returns the route to the version its configuration names.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.db import Database, beside_ledger

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS model_pins (id {id}, model TEXT NOT NULL, version TEXT NOT NULL,"
    " previous TEXT NOT NULL, actor TEXT NOT NULL, at TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS model_pins_model ON model_pins (model, id)",
)


@dataclass(frozen=True)
class Pin:
    id: int
    model: str
    version: str  # "" = the configured version
    previous: str
    actor: str
    at: str


class PinStore:
    def __init__(self, ledger_store: str) -> None:
        self._db = Database(beside_ledger(ledger_store, "models.sqlite3"), SCHEMA)

    def close(self) -> None:
        self._db.close()

    def current(self) -> dict[str, str]:
        """The version each pinned model uses now ("" where the last change restored the configured one)."""
        with self._db.reading():
            rows = self._db.execute(
                "SELECT model, version FROM model_pins p WHERE id = (SELECT MAX(id) FROM model_pins q"
                " WHERE q.model = p.model)"
            ).fetchall()
        return {str(m): str(v) for m, v in rows}

    def history(self, model: str) -> list[Pin]:
        """Every change of ``model``'s pin, oldest first."""
        with self._db.reading():
            rows = self._db.execute("SELECT id, model, version, previous, actor, at FROM model_pins WHERE model = ?"
                                    " ORDER BY id", (model,)).fetchall()  # fmt: skip
        return [Pin(int(r[0]), *(str(x) for x in r[1:])) for r in rows]

    def set(self, model: str, version: str, previous: str, actor: str) -> Pin:
        """Record a change; ``previous`` is the version the route used until now."""
        at = datetime.now(UTC).isoformat(timespec="seconds")
        with self._db.transaction():
            self._db.execute("INSERT INTO model_pins (model, version, previous, actor, at) VALUES (?, ?, ?, ?, ?)",
                             (model, version, previous, actor, at))  # fmt: skip
            (pin_id,) = self._db.execute("SELECT MAX(id) FROM model_pins WHERE model = ?", (model,)).fetchone()
        return Pin(int(pin_id), model, version, previous, actor, at)
