"""The privacy budget: exact, persistent, per consumer and period, with a cache of released answers.

Epsilon is accounted in micro-epsilon and delta in units of 1e-18, as integers: a float is read as the decimal
it prints as (``0.1`` is one tenth), and a value that is not a whole number of units is refused, so ten spends
of 0.1 are exactly 1.0. A spend is one conditional UPDATE (``spent + x <= limit``) inside a transaction
(SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: the row lock makes a concurrent UPDATE wait and re-check), so
requests that together would overspend cannot all win, across threads, processes and replicas.

The answer cache holds RELEASED (noisy) answers only, keyed by (consumer, period, query): a repeated query
gets the identical answer and spends nothing, so averaging repeats cannot wash out the noise.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from gateway.db import Database

EPSILON_UNITS = 10**6  # micro-epsilon
DELTA_UNITS = 10**18  # delta <= 1 fits in a signed 64-bit integer

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS dp_budget (consumer TEXT NOT NULL, period TEXT NOT NULL,"
    " epsilon BIGINT NOT NULL, delta BIGINT NOT NULL, PRIMARY KEY (consumer, period))",
    "CREATE TABLE IF NOT EXISTS dp_spends (consumer TEXT NOT NULL, period TEXT NOT NULL, query_key TEXT NOT NULL,"
    " epsilon BIGINT NOT NULL, delta BIGINT NOT NULL, spent_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS dp_answers (consumer TEXT NOT NULL, period TEXT NOT NULL, query_key TEXT NOT NULL,"
    " answer TEXT NOT NULL, created_at TEXT NOT NULL, PRIMARY KEY (consumer, period, query_key))",
)
_ANSWER = "SELECT answer FROM dp_answers WHERE consumer = ? AND period = ? AND query_key = ?"


def units(value: float | int | Decimal | str, per: int, name: str) -> int:
    """``value`` as a whole number of 1/``per`` units; ValueError if negative, not finite or not exact."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, not {value!r}")
    exact = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if not exact.is_finite() or exact < 0:
        raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
    scaled = exact * per
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{name}={value!r} is not a whole multiple of 1/{per}")
    return int(scaled)


@dataclass(frozen=True)
class Usage:
    """An amount of privacy budget, in exact units."""

    epsilon_units: int
    delta_units: int

    @property
    def epsilon(self) -> float:
        return self.epsilon_units / EPSILON_UNITS

    @property
    def delta(self) -> float:
        return self.delta_units / DELTA_UNITS


def usage(epsilon: float | Decimal | str, delta: float | Decimal | str, prefix: str = "") -> Usage:
    """(epsilon, delta) in exact units; ValueError unless each is a whole number of units."""
    return Usage(units(epsilon, EPSILON_UNITS, prefix + "epsilon"), units(delta, DELTA_UNITS, prefix + "delta"))


@dataclass(frozen=True)
class Spent:
    """The spend went through: ``total`` is spent in the period now, ``remaining`` is left."""

    spent: Usage
    total: Usage
    remaining: Usage


@dataclass(frozen=True)
class Refused:
    """The spend would overspend the period's budget: nothing was spent."""

    requested: Usage
    remaining: Usage

    @property
    def message(self) -> str:
        return (f"privacy budget exhausted: this query needs epsilon={self.requested.epsilon:g}, "
                f"delta={self.requested.delta:g}; remaining this period: epsilon={self.remaining.epsilon:g}, "
                f"delta={self.remaining.delta:g}")  # fmt: skip


class BudgetStore:
    """Budgets and released answers in an SQLite file (a path or ``sqlite:///path``) or ``postgresql://...``."""

    def __init__(self, url: str | Path) -> None:
        self._db = Database(url, _SCHEMA)
        self._execute = self._db.execute
        self._transaction = self._db.transaction

    def close(self) -> None:
        """Release the connection."""
        self._db.close()

    def _spent(self, consumer: str, period: str) -> Usage:
        row = self._execute("SELECT epsilon, delta FROM dp_budget WHERE consumer = ? AND period = ?",
                            (consumer, period)).fetchone()  # fmt: skip
        return Usage(0, 0) if row is None else Usage(int(row[0]), int(row[1]))

    def spend(
        self,
        consumer: str,
        period: str,
        epsilon: float,
        delta: float,
        limit_epsilon: float,
        limit_delta: float,
        query_key: str,
    ) -> Spent | Refused:
        """Spend (epsilon, delta) of ``consumer``'s budget for ``period`` if the total stays within the limits."""
        _check_names(consumer, period, query_key)
        want = usage(epsilon, delta)
        limit = usage(limit_epsilon, limit_delta, "limit_")
        if want.epsilon_units == 0:
            raise ValueError("epsilon must be > 0")
        with self._transaction():
            self._execute("INSERT INTO dp_budget (consumer, period, epsilon, delta) VALUES (?, ?, 0, 0) "
                          "ON CONFLICT (consumer, period) DO NOTHING", (consumer, period))  # fmt: skip
            updated = self._execute(
                "UPDATE dp_budget SET epsilon = epsilon + ?, delta = delta + ? WHERE consumer = ? AND period = ?"
                " AND epsilon + ? <= ? AND delta + ? <= ?",
                (want.epsilon_units, want.delta_units, consumer, period,
                 want.epsilon_units, limit.epsilon_units, want.delta_units, limit.delta_units),
            ).rowcount  # fmt: skip
            total = self._spent(consumer, period)
            if updated == 1:
                self._execute("INSERT INTO dp_spends VALUES (?, ?, ?, ?, ?, ?)",
                              (consumer, period, query_key, want.epsilon_units, want.delta_units, _now()))  # fmt: skip
        left = _left(limit, total)
        return Spent(want, total, left) if updated == 1 else Refused(want, left)

    def spent(self, consumer: str, period: str) -> Usage:
        """What ``consumer`` has spent in ``period``."""
        with self._db.reading():
            return self._spent(consumer, period)

    def remaining(self, consumer: str, period: str, limit_epsilon: float, limit_delta: float) -> Usage:
        """What is left of the limits (given by the privacy policy, not stored) for ``consumer`` in ``period``."""
        limit = usage(limit_epsilon, limit_delta, "limit_")
        return _left(limit, self.spent(consumer, period))

    def cached(self, consumer: str, period: str, query_key: str) -> dict[str, Any] | None:
        """The answer released earlier for this query in this period, or None."""
        with self._db.reading():
            row = self._execute(_ANSWER, (consumer, period, query_key)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def remember(self, consumer: str, period: str, query_key: str, answer: Mapping[str, Any]) -> dict[str, Any]:
        """Store a RELEASED answer (never true values); return the stored one, which wins if another came first."""
        _check_names(consumer, period, query_key)
        text = json.dumps(answer, sort_keys=True, allow_nan=False)
        with self._transaction():
            self._execute("INSERT INTO dp_answers VALUES (?, ?, ?, ?, ?) "
                          "ON CONFLICT (consumer, period, query_key) DO NOTHING",
                          (consumer, period, query_key, text, _now()))  # fmt: skip
            (stored,) = self._execute(_ANSWER, (consumer, period, query_key)).fetchone()
        return dict(json.loads(stored))


def _left(limit: Usage, spent: Usage) -> Usage:
    return Usage(max(0, limit.epsilon_units - spent.epsilon_units), max(0, limit.delta_units - spent.delta_units))


def _check_names(*names: str) -> None:
    for name in names:
        if not name or len(name) > 512:
            raise ValueError("consumer, period and query key must be non-empty strings of at most 512 characters")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
