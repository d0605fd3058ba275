"""What a statistics query may ask: the metrics, what each may be grouped by, and the query's own checks.

A query is ``metric``, ``group_by`` (a comma-separated list), ``from`` and ``to`` (UTC dates, inclusive) and
optionally ``epsilon``. ``StatsQuery.parse`` turns request parameters into a checked query or raises
``InvalidRequest`` naming the parameter; ``key`` is its canonical form, which the answer cache uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Literal

from gateway.errors import InvalidRequest
from gateway.stats.budget import usage
from gateway.stats.policy import PrivacyPolicy

Kind = Literal["count", "sum", "mean", "quantiles"]


@dataclass(frozen=True)
class Metric:
    name: str
    kind: Kind
    table: Literal["request", "denial", "pii"]
    dimensions: tuple[str, ...]
    description: str


_REQUEST_DIMS = ("model", "role", "route", "day")
METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("requests", "count", "request", _REQUEST_DIMS, "admitted requests"),
    Metric("errors", "count", "request", _REQUEST_DIMS, "admitted requests that ended in an error"),
    Metric("fallbacks", "count", "request", _REQUEST_DIMS, "admitted requests served by a fallback model"),
    Metric("tokens", "sum", "request", _REQUEST_DIMS, "prompt plus completion tokens"),
    Metric("prompt_tokens", "sum", "request", _REQUEST_DIMS, "prompt tokens"),
    Metric("completion_tokens", "sum", "request", _REQUEST_DIMS, "completion tokens"),
    Metric("tokens_per_request", "mean", "request", _REQUEST_DIMS, "mean tokens per completed request"),
    Metric("latency_ms", "quantiles", "request", ("model", "route", "day"), "latency quantiles in milliseconds"),
    Metric("denials", "count", "denial", ("reason", "day"), "requests refused, by reason"),
    Metric("pii_detections", "count", "pii", ("entity", "direction", "day"),
           "requests in which a kind of personal data was found, in prompts or answers"),
)}  # fmt: skip


def _day(value: str | None, name: str) -> date:
    if not value:
        raise InvalidRequest(f"{name} is required: a UTC date such as 2026-11-01", param=name)
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"{name} must be a date such as 2026-11-01, not {value!r}", param=name) from None


@dataclass(frozen=True)
class StatsQuery:
    metric: Metric
    group_by: tuple[str, ...]
    start: date
    end: date
    epsilon: float

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    @property
    def key(self) -> str:
        """The canonical query: the same question, asked again, has the same key."""
        groups = ",".join(self.group_by)
        return f"{self.metric.name}|{groups}|{self.start}|{self.end}|{self.epsilon!r}"

    def describe(self) -> dict[str, object]:
        return {"metric": self.metric.name, "group_by": list(self.group_by), "from": self.start.isoformat(),
                "to": self.end.isoformat(), "epsilon": self.epsilon}  # fmt: skip

    @classmethod
    def parse(cls, params: Mapping[str, str], policy: PrivacyPolicy, today: date | None = None) -> StatsQuery:
        """A checked query from request parameters; ``InvalidRequest`` names the bad one."""
        unknown = sorted(set(params) - {"metric", "group_by", "from", "to", "epsilon"})
        if unknown:
            raise InvalidRequest(f"unknown parameter {unknown[0]!r}", param=unknown[0])
        name = params.get("metric", "")
        metric = METRICS.get(name)
        if metric is None:
            raise InvalidRequest(f"metric must be one of {', '.join(METRICS)}, not {name!r}", param="metric")
        group_by = tuple(g.strip() for g in params.get("group_by", "").split(",") if g.strip())
        for g in group_by:
            if g not in metric.dimensions:
                raise InvalidRequest(f"{metric.name} can be grouped by {', '.join(metric.dimensions)}, not {g!r}",
                                     param="group_by")  # fmt: skip
        if len(set(group_by)) != len(group_by):
            raise InvalidRequest("group_by names a dimension twice", param="group_by")
        start, end = _day(params.get("from"), "from"), _day(params.get("to"), "to")
        today = today or datetime.now(UTC).date()
        if end < start:
            raise InvalidRequest(f"to ({end}) is before from ({start})", param="to")
        if end > today:
            raise InvalidRequest(f"to ({end}) is in the future (today is {today} UTC)", param="to")
        days = (end - start).days + 1
        if days > policy.query.max_days:
            raise InvalidRequest(f"a query covers at most {policy.query.max_days} days, not {days}", param="from")
        epsilon = policy.query.epsilon
        if "epsilon" in params:
            try:
                epsilon = float(params["epsilon"])
                usage(epsilon, 0)
            except ValueError:
                raise InvalidRequest(f"epsilon must be a positive number with at most 6 decimals, not "
                                     f"{params['epsilon']!r}", param="epsilon") from None  # fmt: skip
            if not 0 < epsilon <= policy.query.max_epsilon:
                raise InvalidRequest(f"epsilon must be above 0 and at most {policy.query.max_epsilon}",
                                     param="epsilon")  # fmt: skip
        return cls(metric, group_by, start, end, epsilon)
