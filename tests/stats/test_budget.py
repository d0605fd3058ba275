"""The privacy budget: exact units, refusals that spend nothing, persistence, concurrency and the answer cache."""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gateway.stats.budget import BudgetStore, Refused, Spent, Usage, units

PERIOD = "2026-11"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[BudgetStore]:
    """A budget store in a fresh SQLite file."""
    s = BudgetStore(tmp_path / "budget.sqlite3")
    yield s
    s.close()


@pytest.mark.parametrize(
    ("value", "per", "expected"),
    [
        (0.1, 10**6, 100_000),
        (0.5, 10**6, 500_000),
        ("0.3", 10**6, 300_000),
        (Decimal("1.000001"), 10**6, 1_000_001),
        (2, 10**6, 2_000_000),
        (1e-9, 10**18, 10**9),
        (0, 10**18, 0),
    ],
)
def test_units_are_exact(value: Any, per: int, expected: int) -> None:
    """Floats are read as the decimals they print as and converted to whole units exactly."""
    assert units(value, per, "x") == expected


@pytest.mark.parametrize("value", [1e-7, 1 / 3, 0.1234567, float("nan"), float("inf"), -0.1, True])
def test_units_refuse_what_they_cannot_hold_exactly(value: Any) -> None:
    """Values finer than a micro-epsilon, not finite, negative or boolean are refused."""
    with pytest.raises(ValueError):
        units(value, 10**6, "epsilon")


def test_exact_arithmetic(store: BudgetStore) -> None:
    """0.9 + 0.1 fits 1.0, 0.1 + 0.2 fits 0.3 (floats say 0.30000000000000004), ten 0.1s exhaust 1.0."""
    assert isinstance(store.spend("a", PERIOD, 0.9, 0, 1.0, 0, "q1"), Spent)
    last = store.spend("a", PERIOD, 0.1, 0, 1.0, 0, "q2")
    assert isinstance(last, Spent) and last.remaining == Usage(0, 0) and last.total.epsilon == 1.0
    assert isinstance(store.spend("b", PERIOD, 0.1, 0, 0.3, 0, "q"), Spent)
    assert isinstance(store.spend("b", PERIOD, 0.2, 0, 0.3, 0, "q"), Spent)
    results = [store.spend("c", PERIOD, 0.1, 0, 1.0, 0, f"q{i}") for i in range(11)]
    assert [isinstance(r, Spent) for r in results] == [True] * 10 + [False]
    assert store.spent("c", PERIOD) == Usage(1_000_000, 0)


def test_overspend_is_refused_and_spends_nothing(store: BudgetStore) -> None:
    """A spend past the epsilon or the delta limit is refused, says what remains, and changes nothing."""
    assert isinstance(store.spend("a", PERIOD, 0.6, 1e-9, 1.0, 2e-9, "q1"), Spent)
    refused = store.spend("a", PERIOD, 0.5, 0, 1.0, 2e-9, "q2")
    assert isinstance(refused, Refused) and refused.remaining.epsilon == 0.4
    assert "remaining this period: epsilon=0.4" in refused.message
    assert isinstance(store.spend("a", PERIOD, 0.1, 2e-9, 1.0, 2e-9, "q3"), Refused)  # delta would reach 3e-9
    assert store.spent("a", PERIOD) == Usage(600_000, 10**9)
    assert store.remaining("a", PERIOD, 1.0, 2e-9) == Usage(400_000, 10**9)
    assert isinstance(store.spend("a", PERIOD, 0.4, 1e-9, 1.0, 2e-9, "q4"), Spent)


def test_budgets_are_per_consumer_and_period(store: BudgetStore) -> None:
    """Spending in one consumer's period leaves other consumers and periods untouched."""
    store.spend("a", "2026-11", 1.0, 0, 1.0, 0, "q")
    assert isinstance(store.spend("a", "2026-12", 1.0, 0, 1.0, 0, "q"), Spent)
    assert isinstance(store.spend("b", "2026-11", 1.0, 0, 1.0, 0, "q"), Spent)
    assert isinstance(store.spend("a", "2026-11", 0.000001, 0, 1.0, 0, "q"), Refused)


def test_spent_budget_and_answers_survive_reopening(tmp_path: Path) -> None:
    """After the store is closed and reopened (a restart), the spent budget and cached answers are there."""
    path = tmp_path / "budget.sqlite3"
    first = BudgetStore(f"sqlite://{path}")
    first.spend("a", PERIOD, 0.7, 0, 1.0, 0, "q")
    first.remember("a", PERIOD, "q", {"value": 41})
    first.close()
    again = BudgetStore(path)
    try:
        assert again.spent("a", PERIOD) == Usage(700_000, 0)
        assert isinstance(again.spend("a", PERIOD, 0.4, 0, 1.0, 0, "q2"), Refused)
        assert again.cached("a", PERIOD, "q") == {"value": 41}
    finally:
        again.close()


def test_cache_returns_the_identical_answer_and_spends_nothing(store: BudgetStore) -> None:
    """The first released answer is stored; later ones for the same key get it back; reads spend nothing."""
    answer = {"value": [200.0, 290.0], "epsilon": 0.5, "mechanism": "quantile"}
    assert store.cached("a", PERIOD, "latency") is None
    store.spend("a", PERIOD, 0.5, 0, 1.0, 0, "latency")
    assert store.remember("a", PERIOD, "latency", answer) == answer
    assert store.remember("a", PERIOD, "latency", {"value": [1.0, 2.0]}) == answer  # the first release wins
    before = store.spent("a", PERIOD)
    assert [store.cached("a", PERIOD, "latency") for _ in range(3)] == [answer] * 3
    assert store.spent("a", PERIOD) == before
    assert store.cached("a", "2026-12", "latency") is None and store.cached("b", PERIOD, "latency") is None


def _spend_in_process(path: str, start: Any, results: Any) -> None:
    """Child process: wait for the start signal, then try to spend 0.3 of 1.0."""
    store = BudgetStore(path)
    start.wait(60)
    results.put(isinstance(store.spend("shared", PERIOD, 0.3, 0, 1.0, 0, "q"), Spent))
    store.close()


def test_concurrent_processes_cannot_overspend_sqlite(tmp_path: Path) -> None:
    """Eight processes each spending 0.3 of 1.0 at once on one SQLite file: exactly three win."""
    path = str(tmp_path / "budget.sqlite3")
    BudgetStore(path).close()  # create the schema first
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_spend_in_process, args=(path, start, results)) for _ in range(8)]
    for p in procs:
        p.start()
    start.set()
    wins = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    results.close()
    assert sum(wins) == 3
    store = BudgetStore(path)
    assert store.spent("shared", PERIOD) == Usage(900_000, 0)
    store.close()


def test_concurrent_threads_cannot_overspend_postgres(pg_url: str) -> None:
    """Eight threads, each with its own PostgreSQL connection, spending 0.3 of 1.0 at once: exactly three win."""
    consumer = f"c-{uuid.uuid4().hex[:8]}"
    stores = [BudgetStore(pg_url) for _ in range(8)]
    barrier = threading.Barrier(len(stores))
    wins: list[bool] = []

    def spend(store: BudgetStore) -> None:
        barrier.wait(30)
        wins.append(isinstance(store.spend(consumer, PERIOD, 0.3, 1e-9, 1.0, 1e-6, "q"), Spent))

    threads = [threading.Thread(target=spend, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert len(wins) == 8 and sum(wins) == 3
        assert stores[0].spent(consumer, PERIOD) == Usage(900_000, 3 * 10**9)
        stores[0].remember(consumer, PERIOD, "q", {"value": 7})
        assert stores[1].cached(consumer, PERIOD, "q") == {"value": 7}
    finally:
        for s in stores:
            s.close()
