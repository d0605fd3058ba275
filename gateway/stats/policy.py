"""``policies/privacy.yaml``: budgets, per-query epsilon and contribution bounds of the statistics releases.

Security teams own this file. It is validated with the rest of the policy folder, at start and on every
reload; a bad edit is rejected with its file, key and reason while the old policy keeps serving. Epsilon and
delta must be whole numbers of the budget's units (micro-epsilon, 1e-18 delta: ``gateway.stats.budget``), so
what the file says is what is accounted, exactly.
"""

from __future__ import annotations

import math
from datetime import date, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.stats.budget import Usage, usage


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Budget(_Strict):
    """A total (epsilon, delta) per consumer per period."""

    epsilon: float = Field(gt=0, le=100)
    delta: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _exact(self) -> Budget:
        usage(self.epsilon, self.delta)  # raises ValueError unless both are whole numbers of units
        return self

    @property
    def units(self) -> Usage:
        return usage(self.epsilon, self.delta)


class Budgets(_Strict):
    period: Literal["day", "week", "month"] = "month"
    """Budgets start afresh at the start of each UTC day, ISO week or calendar month."""
    default: Budget
    """Every consumer's budget, unless a role or the consumer itself has an entry."""
    roles: dict[str, Budget] = {}
    """By role name (plain, such as ``auditor``): a consumer with several gets the largest epsilon."""
    consumers: dict[str, Budget] = {}
    """By subject (``user:alice``, ``apikey:bi-dashboard``): wins over roles and default."""

    @field_validator("roles")
    @classmethod
    def _role_names(cls, value: dict[str, Budget]) -> dict[str, Budget]:
        for role in value:
            if not role or role.startswith("role:"):
                raise ValueError(f"roles are plain names such as 'auditor', not {role!r}")
        return value


class QueryDefaults(_Strict):
    epsilon: float = Field(0.5, gt=0)
    """Spent by a query that does not ask for another epsilon."""
    max_epsilon: float = Field(1.0, gt=0)
    """The most one query may ask for."""
    delta: float = Field(1e-7, gt=0, lt=1)
    """Spent by a query that groups by a key that is not public (caller-supplied role names): the chance that
    partition selection releases a group held by a single caller."""
    max_days: int = Field(92, ge=1, le=3660)
    """The longest period one query may cover (the sensitivity grows with it)."""

    @model_validator(mode="after")
    def _consistent(self) -> QueryDefaults:
        usage(self.epsilon, self.delta)
        usage(self.max_epsilon, 0)
        if self.epsilon > self.max_epsilon:
            raise ValueError(f"epsilon ({self.epsilon}) is above max_epsilon ({self.max_epsilon})")
        return self


class Bounds(_Strict):
    """How much one caller (the privacy unit) may contribute; more is left out, so sensitivity is finite."""

    requests_per_day: int = Field(20, ge=1, le=100_000)
    """At most this many of a caller's requests per UTC day are counted (the first ones)."""
    denials_per_day: int = Field(10, ge=1, le=100_000)
    """At most this many of a caller's denials per UTC day are counted."""
    tokens_per_request: int = Field(4096, ge=1, le=10_000_000)
    """Token counts of one request are clamped to [0, this]."""
    latency_samples_per_day: int = Field(5, ge=1, le=100_000)
    """For latency quantiles, only a caller's first this many requests of each UTC day are used."""
    roles_per_request: int = Field(3, ge=1, le=100)
    """By role, a request counts for at most this many of its caller's roles (in name order)."""
    pii_entities_per_request: int = Field(3, ge=1, le=50)
    """By entity type, a request counts for at most this many kinds of personal data in each direction."""


class Latency(_Strict):
    """The candidates of the quantile mechanism: a geometric grid, so that the error is relative."""

    min_ms: int = Field(1, ge=1)
    max_ms: int = Field(120_000, ge=2)
    steps_per_decade: int = Field(20, ge=1, le=1000)
    quantiles: tuple[float, ...] = Field((0.5, 0.9, 0.99), min_length=1, max_length=10)

    @model_validator(mode="after")
    def _range(self) -> Latency:
        if self.max_ms <= self.min_ms:
            raise ValueError(f"max_ms ({self.max_ms}) must be above min_ms ({self.min_ms})")
        if not all(0 < q < 1 for q in self.quantiles):
            raise ValueError("quantiles must lie strictly between 0 and 1")
        if len(self.candidates()) > 2000:
            raise ValueError("the grid has more than 2000 candidates: lower steps_per_decade")
        return self

    def candidates(self) -> tuple[float, ...]:
        """Whole milliseconds from min_ms to max_ms, ``steps_per_decade`` per factor of ten, no duplicates."""
        steps = math.ceil(math.log10(self.max_ms / self.min_ms) * self.steps_per_decade)
        grid = {round(self.min_ms * 10 ** (i / self.steps_per_decade)) for i in range(steps)} | {self.max_ms}
        return tuple(float(v) for v in sorted(v for v in grid if self.min_ms <= v <= self.max_ms))


class PrivacyPolicy(_Strict):
    budget: Budgets
    query: QueryDefaults = QueryDefaults()
    bounds: Bounds = Bounds()
    latency: Latency = Latency()

    def limit(self, subject: str, roles: frozenset[str]) -> Budget:
        """The budget of one consumer: its own entry, else the largest of its roles', else the default."""
        own = self.budget.consumers.get(subject)
        if own is not None:
            return own
        mine = [self.budget.roles[r] for r in sorted(roles) if r in self.budget.roles]
        return max(mine, key=lambda b: (b.epsilon, b.delta)) if mine else self.budget.default


def period_of(day: date, period: Literal["day", "week", "month"]) -> str:
    """The budget period that ``day`` falls in: ``2026-11-30``, ``2026-W49`` or ``2026-11``."""
    if period == "day":
        return day.isoformat()
    if period == "week":
        year, week, _ = day.isocalendar()
        return f"{year}-W{week:02d}"
    return f"{day.year}-{day.month:02d}"


def period_end(day: date, period: Literal["day", "week", "month"]) -> date:
    """The first day of the next period (when the budget starts afresh)."""
    if period == "day":
        return day + timedelta(days=1)
    if period == "week":
        return day + timedelta(days=7 - day.weekday())
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)
