"""Releases over a real ledger store: facts indexed from entries, per-caller bounds, public keys, noise, budget.

The ledgers here are written with real, hash-chained entries (``benches._synthetic_ledger``) with chosen days.
Checks on released values use the release's own stated 95% half-width, and where a check must not depend on
luck, a query with a large epsilon (so the noise scale is far below the differences checked).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from benches._synthetic_ledger import Traffic, write
from gateway.authz.files import load
from gateway.db import Database, stats_url
from gateway.errors import BudgetExhausted, InvalidRequest
from gateway.identity.principal import Principal
from gateway.stats import compute
from gateway.stats.facts import SCHEMA, FactIndex
from gateway.stats.policy import PrivacyPolicy
from gateway.stats.query import StatsQuery
from gateway.stats.service import StatsService

POLICIES = Path(__file__).resolve().parents[2] / "policies"
DAY = date(2026, 11, 2)
NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
MODELS = ("e5-small", "smollm2-135m-instruct")
PUBLIC = compute.PublicKeys(MODELS, frozenset({"user", "analyst", "admin"}))


def at(day: date, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(minutes=minute)


def policy(**changes: Any) -> PrivacyPolicy:
    """The shipped privacy.yaml with some sections changed (for example a large epsilon for exact-ish checks)."""
    base = load(POLICIES).privacy.model_dump()
    for section, values in changes.items():
        base[section] = {**base[section], **values}
    return PrivacyPolicy.model_validate(base)


SHARP = policy(query={"epsilon": 1000.0, "max_epsilon": 1000.0})
"""Scale sensitivity/1000: at sensitivity 200 (20 a day, 10 days) |noise| >= 3 has probability < 1e-6."""


class Ledger:
    """A ledger store with one log, and a fact index over it."""

    def __init__(self, tmp: Path) -> None:
        self.url = str(tmp / "ledger.sqlite3")
        self.traffic = Traffic()
        self.db = Database(stats_url(self.url), SCHEMA)
        self.index = FactIndex(self.db, self.url)

    def add(self, events: list[Any], origin: str = "gw/a") -> None:
        write(self.url, origin, events)

    def release(self, pol: PrivacyPolicy, **params: str) -> dict[str, Any]:
        self.index.catch_up()
        q = StatsQuery.parse({"from": "2026-11-01", "to": "2026-11-10", **params}, pol, today=NOW.date())
        return compute.release(q, pol, self.index, PUBLIC)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    led = Ledger(tmp_path)
    yield led
    led.db.close()


def values(answer: dict[str, Any], dim: str) -> dict[str, float]:
    return {g[dim]: g["value"] for g in answer["groups"]}


def test_a_caller_counts_at_most_k_requests_a_day(ledger: Ledger) -> None:
    """50 requests of one caller on one day count as K = 20; another caller's 3 count as 3."""
    t = ledger.traffic
    events = [e for i in range(50) for e in t.request(at(DAY, i), "apikey:heavy", owner="heavy", model=MODELS[0])]
    events += [e for i in range(3) for e in t.request(at(DAY, i), "apikey:light", owner="light", model=MODELS[1])]
    ledger.add(events)
    got = values(ledger.release(SHARP, metric="requests", group_by="model"), "model")
    assert abs(got[MODELS[0]] - 20) <= 3 and abs(got[MODELS[1]] - 3) <= 3
    assert set(got) == {*MODELS, compute.OTHER}  # every public key, with or without facts


def test_one_owner_with_several_keys_is_one_caller(ledger: Ledger) -> None:
    """Two API keys of one owner share the owner's K per day: the privacy unit is the owner, not the key."""
    t = ledger.traffic
    events = [e for i in range(15) for key in ("apikey:k1", "apikey:k2") for e in t.request(at(DAY, i), key, owner="o")]
    ledger.add(events)
    got = ledger.release(SHARP, metric="requests")
    assert abs(got["groups"][0]["value"] - 20) <= 3  # 30 requests, one unit: 20 counted


def test_each_day_has_its_own_bound_and_sensitivity_grows_with_days(ledger: Ledger) -> None:
    t = ledger.traffic
    events = [e for d in range(3) for i in range(25) for e in t.request(at(DAY + timedelta(days=d), i), "user:a")]
    ledger.add(events)
    got = ledger.release(SHARP, metric="requests", group_by="day")
    per_day = values(got, "day")
    assert len(per_day) == 10  # every day of the query, public by construction
    for d in range(3):
        assert abs(per_day[(DAY + timedelta(days=d)).isoformat()] - 20) <= 2
    assert got["privacy"]["sensitivity"] == 20 * 10 and got["privacy"]["bounds"]["days"] == 10


def test_tokens_are_clamped_per_request(ledger: Ledger) -> None:
    t = ledger.traffic
    ledger.add(t.request(at(DAY), "user:a", prompt_tokens=100_000, completion_tokens=0)
               + t.request(at(DAY), "user:b", prompt_tokens=100, completion_tokens=50))  # fmt: skip
    got = ledger.release(SHARP, metric="tokens")
    p = got["privacy"]
    assert p["bounds"]["tokens_per_request"] == 4096 and p["sensitivity"] == 20 * 10 * 4096
    assert abs(got["groups"][0]["value"] - (4096 + 150)) <= 5 * p["noise_scale"]


def test_errors_fallbacks_denials_and_pii_are_counted_by_their_keys(ledger: Ledger) -> None:
    t = ledger.traffic
    events = t.request(at(DAY), "user:a", outcome="error", status=502, pii_in={"EMAIL_ADDRESS:replace": 3})
    events += t.request(at(DAY), "user:b", fallback=True, pii_out={"PERSON:replace": 1, "US_SSN:block": 1})
    events += t.denial(at(DAY), "user:c", "authz.decision", {"object": "model:gpt-x", "allowed": False, "rule": ""})
    events += t.denial(at(DAY), "user:c", "authz.limit", {"model": "m", "refused": "x", "reason": "rate_limit"})
    events += t.denial(at(DAY), "user:d", "pii.blocked", {"entity": "US_SSN"})
    events += t.denial(at(DAY), "anonymous", "authn.failed", {"reason": "bad key"})  # no caller: not a fact
    ledger.add(events)
    assert abs(ledger.release(SHARP, metric="errors")["groups"][0]["value"] - 1) <= 2
    assert abs(ledger.release(SHARP, metric="fallbacks")["groups"][0]["value"] - 1) <= 2
    denials = values(ledger.release(SHARP, metric="denials", group_by="reason"), "reason")
    expected = {"model_denied": 1, "rate_limit": 1, "pii_blocked": 1}
    assert all(abs(v - expected.get(k, 0)) <= 2 for k, v in denials.items()) and len(denials) == 8
    one_day = {"from": DAY.isoformat(), "to": DAY.isoformat()}  # sensitivity 20 * 3 * 2: scale 0.12
    pii = ledger.release(SHARP, metric="pii_detections", group_by="entity,direction", **one_day)
    found = {(g["entity"], g["direction"]): g["value"] for g in pii["groups"]}
    expected_pii = {("EMAIL_ADDRESS", "prompt"): 1, ("PERSON", "answer"): 1, ("US_SSN", "answer"): 1}
    assert all(abs(v - expected_pii.get(k, 0)) <= 2 for k, v in found.items())
    assert len(found) == (len(compute._domain("entity", _q(), PUBLIC))) * 2


def _q() -> StatsQuery:
    return StatsQuery.parse({"metric": "requests", "from": "2026-11-01", "to": "2026-11-01"}, SHARP, NOW.date())


def test_facts_follow_the_ledger_incrementally_and_across_logs(ledger: Ledger) -> None:
    """A completion in a later batch fills in its request; a second replica's log is indexed too, once."""
    t = ledger.traffic
    first = t.request(at(DAY), "user:a", latency_ms=123)
    ledger.add(first[:3])  # admitted, not completed yet
    assert ledger.index.catch_up() == 3
    ledger.add(first[3:])
    other = Traffic()
    ledger.add(other.request(at(DAY), "user:b"), origin="gw/b")
    assert ledger.index.catch_up() == 1 + 4
    assert ledger.index.catch_up() == 0
    rows = ledger.index.rows("SELECT unit, latency_ms, outcome FROM dp_facts ORDER BY unit", ())
    assert rows == [("user:a", 123, "ok"), ("user:b", 100, "ok")]
    assert ledger.index.indexed() == {"gw/a": 4, "gw/b": 4}


def test_a_role_no_policy_names_is_released_only_when_many_callers_hold_it(ledger: Ledger) -> None:
    """Partition selection: a role from one caller's token stays hidden; one held by 400 callers shows."""
    t = ledger.traffic
    events = t.request(at(DAY), "user:lonely", roles=("secret-project",))
    events += [e for i in range(400) for e in t.request(at(DAY), f"user:c{i}", roles=("common-idp-group",))]
    ledger.add(events)
    pol = policy(query={"epsilon": 50.0, "max_epsilon": 50.0, "delta": 1e-7})  # selection at 25, scale 2.4
    got = ledger.release(pol, metric="requests", group_by="role", to="2026-11-02", **{"from": "2026-11-02"})
    roles = values(got, "role")
    assert "secret-project" not in roles and "common-idp-group" in roles
    assert {"user", "analyst", "admin"} <= set(roles)
    sel = got["privacy"]["partition_selection"]
    assert sel == {"epsilon": 25.0, "delta": 1e-7, "selected": 1} and got["privacy"]["delta"] == 1e-7


def test_latency_quantiles_and_means_state_their_mechanism(ledger: Ledger) -> None:
    t = ledger.traffic
    ledger.add([e for i in range(300) for e in t.request(at(DAY), f"user:{i}", latency_ms=200 + i % 7,
                                                         prompt_tokens=100, completion_tokens=0)])  # fmt: skip
    lat = ledger.release(SHARP, metric="latency_ms")
    p50 = lat["groups"][0]["value"]["p50"]
    assert 150 <= p50 <= 260 and lat["privacy"]["accuracy"]["unit"] == "rank"
    mean = ledger.release(SHARP, metric="tokens_per_request")
    assert mean["privacy"]["mechanism"] == "noisy_sum/noisy_count"
    assert mean["groups"][0]["value"] == pytest.approx(100, abs=3 * mean["groups"][0]["accuracy_95"])  # P(miss) < 1e-4


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"metric": "salaries"}, "metric"),
        ({"metric": "requests", "group_by": "user"}, "group_by"),
        ({"metric": "denials", "group_by": "model"}, "group_by"),
        ({"metric": "requests", "group_by": "day,day"}, "group_by"),
        ({"metric": "requests", "from": "yesterday"}, "from"),
        ({"metric": "requests", "to": "2026-10-01"}, "to"),
        ({"metric": "requests", "to": "2027-01-01"}, "to"),
        ({"metric": "requests", "from": "2025-01-01"}, "from"),
        ({"metric": "requests", "epsilon": "5"}, "epsilon"),
        ({"metric": "requests", "epsilon": "0.0000001"}, "epsilon"),
        ({"metric": "requests", "epsilon": "nan"}, "epsilon"),
        ({"metric": "requests", "userid": "1"}, "userid"),
    ],
)
def test_bad_queries_name_the_parameter(params: dict[str, str], param: str) -> None:
    pol = load(POLICIES).privacy
    with pytest.raises(InvalidRequest) as info:
        StatsQuery.parse({"from": "2026-11-01", "to": "2026-11-10", **params}, pol, today=NOW.date())
    assert info.value.param == param


# -- the service: cache, budget, ledger ----------------------------------------------------------------------


class Audit:
    """An audit sink that keeps what it is given (the service's ledger entries are checked here)."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, dict[str, Any]]] = []

    def record(self, kind: str, actor: str, data: dict[str, Any]) -> None:
        self.entries.append((kind, actor, data))

    async def commit(self, kind: str, actor: str, data: dict[str, Any]) -> int:
        self.record(kind, actor, data)
        return len(self.entries)


ANALYST = Principal("user:ana", "user", frozenset({"analyst"}), "ana")


def service(ledger: Ledger, audit: Audit, pol: PrivacyPolicy) -> StatsService:
    return StatsService(ledger.url, audit, lambda: pol, lambda: PUBLIC)  # type: ignore[arg-type]


def test_repeated_query_returns_the_cached_answer_and_spends_nothing(ledger: Ledger) -> None:
    ledger.add(ledger.traffic.request(at(DAY), "user:a"))
    audit, pol = Audit(), load(POLICIES).privacy
    svc = service(ledger, audit, pol)
    q = {"metric": "requests", "group_by": "model", "from": "2026-11-01", "to": "2026-11-10"}
    first = asyncio.run(svc.release(ANALYST, frozenset({"analyst"}), q, now=NOW))
    again = asyncio.run(svc.release(ANALYST, frozenset({"analyst"}), q, now=NOW))
    assert first["cached"] is False and again["cached"] is True
    assert first["groups"] == again["groups"] and first["released_at"] == again["released_at"]
    assert first["budget"]["spent_now"] == {"epsilon": 0.5, "delta": 0.0}
    assert again["budget"]["spent_now"] == {"epsilon": 0.0, "delta": 0.0}
    assert again["budget"]["remaining"] == {"epsilon": 2.5, "delta": 1e-6}  # analyst: 3.0 a month
    released = [e for e in audit.entries if e[0] == "stats.released"]
    assert len(released) == 1 and released[0][1] == "user:ana"
    data = released[0][2]
    assert {"query", "mechanism", "epsilon", "delta", "sensitivity", "bounds", "answer_sha256"} <= set(data)
    assert "groups" in data and not isinstance(data["groups"], list)  # how many groups, never their values
    svc.close()


def test_overspend_is_refused_spends_nothing_and_survives_a_restart(ledger: Ledger) -> None:
    """Budget 2.0 (default), 0.5 a query: four distinct queries pass, the fifth is refused with what is left;
    a new service on the same store (a restart) still refuses, and a query from the next month passes."""
    ledger.add(ledger.traffic.request(at(DAY), "user:a"))
    audit, pol = Audit(), load(POLICIES).privacy
    bob = Principal("user:bob", "user", frozenset({"user"}), "bob")
    svc = service(ledger, audit, pol)

    def ask(s: StatsService, to: str, now: datetime = NOW) -> dict[str, Any]:
        params = {"metric": "requests", "from": "2026-11-01", "to": to}
        return asyncio.run(s.release(bob, frozenset({"user"}), params, now=now))

    for day in range(1, 5):
        assert ask(svc, f"2026-11-0{day}")["budget"]["remaining"]["epsilon"] == pytest.approx(2.0 - 0.5 * day)
    with pytest.raises(BudgetExhausted) as info:
        ask(svc, "2026-11-05")
    err = info.value
    assert err.status == 429 and "remaining this period: epsilon=0" in err.message
    assert err.body()["error"]["remaining_budget"] == {"epsilon": 0.0, "delta": 1e-6}
    assert int(err.headers["retry-after"]) == (datetime(2026, 12, 1, tzinfo=UTC) - NOW).total_seconds()
    assert [k for k, _, _ in audit.entries].count("stats.refused") == 1
    svc.close()
    restarted = service(ledger, audit, pol)
    with pytest.raises(BudgetExhausted):
        ask(restarted, "2026-11-05")
    assert ask(restarted, "2026-11-01")["cached"] is True  # the cache survives too
    assert ask(restarted, "2026-11-05", now=datetime(2026, 12, 1, 9, tzinfo=UTC))["cached"] is False
    restarted.close()


def test_concurrent_queries_that_together_overspend_exactly_one_wins(ledger: Ledger) -> None:
    """Budget for one query, eight different queries at once on two services (two replicas): one answer."""
    ledger.add(ledger.traffic.request(at(DAY), "user:a"))
    pol = policy(budget={"default": {"epsilon": 0.5, "delta": 0.0}})
    audit = Audit()
    services = [service(ledger, audit, pol), service(ledger, audit, pol)]
    carol = Principal("user:carol", "user", frozenset({"user"}), "carol")

    async def run() -> list[Any]:
        calls = [services[i % 2].release(carol, frozenset(), {"metric": "requests", "from": "2026-11-01",
                                                               "to": f"2026-11-0{i + 1}"}, now=NOW)
                 for i in range(8)]  # fmt: skip
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(run())
    assert sum(isinstance(r, dict) for r in results) == 1
    assert sum(isinstance(r, BudgetExhausted) for r in results) == 7
    for s in services:
        s.close()


def test_the_same_query_at_once_spends_once(ledger: Ledger) -> None:
    ledger.add(ledger.traffic.request(at(DAY), "user:a"))
    audit = Audit()
    svc = service(ledger, audit, load(POLICIES).privacy)
    q = {"metric": "requests", "from": "2026-11-01", "to": "2026-11-10"}

    async def run() -> list[dict[str, Any]]:
        return await asyncio.gather(*(svc.release(ANALYST, frozenset({"analyst"}), q, now=NOW) for _ in range(5)))

    answers = asyncio.run(run())
    assert len({str(a["groups"]) for a in answers}) == 1
    assert sorted(a["cached"] for a in answers) == [False, True, True, True, True]
    assert [k for k, _, _ in audit.entries].count("stats.released") == 1
    svc.close()


def test_replicas_sharing_postgresql_index_each_entry_once_and_share_the_budget() -> None:
    """Two replicas (two indexes, two services) on one PostgreSQL database: catching up at the same time
    indexes every entry once; facts one replica indexed reach the other's memory; the budget is shared."""
    from concurrent.futures import ThreadPoolExecutor

    from benches.bench_ledger import PG_ADMIN, postgres_db

    with postgres_db(PG_ADMIN, "gateway_test_stats") as url:
        ta, tb = Traffic(), Traffic()
        write(url, "gw/a", [e for i in range(30) for e in ta.request(at(DAY, i), f"user:a{i % 4}")])
        write(url, "gw/b", [e for i in range(20) for e in tb.request(at(DAY, i), f"user:b{i % 4}")])
        dbs = [Database(url, SCHEMA) for _ in range(2)]
        indexes = [FactIndex(db, url) for db in dbs]
        with ThreadPoolExecutor(2) as pool:
            read = list(pool.map(lambda ix: ix.catch_up(batch_entries=7), indexes))
        assert sum(read) == 4 * 50  # every entry read by exactly one of them
        assert indexes[0].rows("SELECT COUNT(*), COUNT(outcome) FROM dp_facts", ()) == [(50, 50)]
        assert len(indexes[0].columns.request) == len(indexes[1].columns.request) == 50
        write(url, "gw/b", tb.request(at(DAY, 99), "user:late"))
        assert indexes[1].catch_up() == 4 and indexes[0].catch_up() == 0
        assert len(indexes[0].columns.request) == 51  # indexed by the other replica, refreshed by change number
        for ix in indexes:
            ix.close()
        audit, pol = Audit(), policy(budget={"default": {"epsilon": 0.5, "delta": 0.0}})
        services = [service_at(url, audit, pol), service_at(url, audit, pol)]
        erin = Principal("user:erin", "user", frozenset(), "erin")

        async def run() -> list[Any]:
            return await asyncio.gather(*(services[i % 2].release(erin, frozenset(), {
                "metric": "requests", "from": "2026-11-01", "to": f"2026-11-0{i + 1}"}, now=NOW)
                for i in range(4)), return_exceptions=True)  # fmt: skip

        results = asyncio.run(run())
        assert sum(isinstance(r, dict) for r in results) == 1
        assert sum(isinstance(r, BudgetExhausted) for r in results) == 3
        for s in services:
            s.close()
        for db in dbs:
            db.close()


def service_at(url: str, audit: Audit, pol: PrivacyPolicy) -> StatsService:
    return StatsService(url, audit, lambda: pol, lambda: PUBLIC)  # type: ignore[arg-type]
