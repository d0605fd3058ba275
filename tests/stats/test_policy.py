"""privacy.yaml: periods, the budget a consumer gets, and the latency candidates."""

from __future__ import annotations

import itertools
from datetime import date
from pathlib import Path

import pytest

from gateway.authz.files import load
from gateway.stats.policy import Latency, PrivacyPolicy, period_end, period_of

POLICIES = Path(__file__).resolve().parents[2] / "policies"


@pytest.mark.parametrize(
    ("day", "period", "label", "end"),
    [
        (date(2026, 11, 30), "day", "2026-11-30", date(2026, 12, 1)),
        (date(2026, 11, 30), "week", "2026-W49", date(2026, 12, 7)),
        (date(2027, 1, 1), "week", "2026-W53", date(2027, 1, 4)),  # ISO weeks cross the year
        (date(2026, 11, 30), "month", "2026-11", date(2026, 12, 1)),
        (date(2026, 12, 31), "month", "2026-12", date(2027, 1, 1)),
    ],
)
def test_periods(day: date, period: str, label: str, end: date) -> None:
    assert period_of(day, period) == label  # type: ignore[arg-type]
    assert period_end(day, period) == end  # type: ignore[arg-type]


def test_a_consumer_gets_its_own_budget_else_its_largest_role_else_the_default() -> None:
    policy = PrivacyPolicy.model_validate({"budget": {
        "default": {"epsilon": 1.0}, "roles": {"analyst": {"epsilon": 3.0}, "auditor": {"epsilon": 4.0}},
        "consumers": {"apikey:dash": {"epsilon": 0.5}}}})  # fmt: skip
    assert policy.limit("apikey:dash", frozenset({"auditor"})).epsilon == 0.5
    assert policy.limit("user:a", frozenset({"analyst", "auditor"})).epsilon == 4.0
    assert policy.limit("user:b", frozenset({"user"})).epsilon == 1.0


def test_latency_candidates_are_a_geometric_grid_of_whole_milliseconds() -> None:
    c = Latency().candidates()
    assert c[0] == 1.0 and c[-1] == 120_000.0 and list(c) == sorted(set(c))
    assert all(b / a < 1.2 for a, b in itertools.pairwise(c[10:]))  # about 12% apart past the first ones
    with pytest.raises(ValueError, match="more than 2000 candidates"):
        Latency(steps_per_decade=1000)


def test_the_shipped_file_is_what_the_docs_say() -> None:
    p = load(POLICIES).privacy
    assert (p.query.epsilon, p.budget.period, p.budget.default.epsilon) == (0.5, "month", 2.0)
    assert p.bounds.requests_per_day == 20 and p.limit("user:x", frozenset({"analyst"})).epsilon == 3.0
