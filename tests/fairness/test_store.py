"""The fairness store: schedule slots are claimed exactly once across connections and processes (real SQLite and
PostgreSQL), results are listed newest first page by page, and decision records expire."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from benches.bench_ledger import PG_ADMIN, postgres_db
from gateway.fairness.probeset import Schedule
from gateway.fairness.store import AuditRecord, DecisionRow, FairnessStore

START = datetime(2026, 3, 1, 10, tzinfo=UTC)
DAILY = Schedule(every="1d")


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "fairness.sqlite3")
    else:
        with postgres_db(PG_ADMIN, "gateway_fairness") as pg:
            yield pg


def claim_days(url: str, replica: str, days: int) -> list[str]:
    """Claim the daily slot of each of ``days`` days in turn, as a replica's scheduler would; the slots won."""
    store = FairnessStore(url)
    try:
        won = []
        for d in range(days + 1):
            now = START + timedelta(days=d, minutes=1 if d else 0)  # first sight at START: slots at 10:00
            slot = store.claim("nightly", DAILY, now, replica)
            if slot is not None:
                won.append(slot.isoformat())
        return won
    finally:
        store.close()


def test_first_sight_starts_the_cadence(url: str) -> None:
    """A schedule first seen now is not due now; it is due one interval later, once."""
    store = FairnessStore(url)
    try:
        assert store.claim("nightly", DAILY, START, "r1") is None
        assert store.claim("nightly", DAILY, START + timedelta(hours=23), "r1") is None
        assert store.claim("nightly", DAILY, START + timedelta(days=1), "r1") == START + timedelta(days=1)
        assert store.claim("nightly", DAILY, START + timedelta(days=1, hours=1), "r2") is None
    finally:
        store.close()


def test_threads_on_their_own_connections_claim_each_slot_once(url: str) -> None:
    """Four connections claim the same ten daily slots at the same moments: each slot goes to exactly one of
    them (none twice, none missed)."""
    FairnessStore(url).close()  # the schema, once
    won: dict[str, list[str]] = {}
    start = threading.Barrier(4)

    def replica(name: str) -> None:
        start.wait()
        won[name] = claim_days(url, name, 10)

    threads = [threading.Thread(target=replica, args=(f"r{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    slots = sorted(s for w in won.values() for s in w)
    assert len(won) == 4 and slots == [(START + timedelta(days=d)).isoformat() for d in range(1, 11)]


def test_processes_sharing_postgresql_claim_each_slot_once() -> None:
    """Three processes (spawned: nothing shared but the database) race for the same fifteen slots: each is
    claimed by exactly one of them."""
    with postgres_db(PG_ADMIN, "gateway_fairness") as pg:
        FairnessStore(pg).close()
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=3, mp_context=ctx) as pool:
            results = list(pool.map(claim_days, [pg] * 3, ["a", "b", "c"], [15] * 3))
    slots = sorted(s for r in results for s in r)
    assert slots == [(START + timedelta(days=d)).isoformat() for d in range(1, 16)]


def record(i: int, *, name: str = "n", model: str = "m", kind: str = "outcome", accuracy: float | None = None,
           finished: float = 1000.0) -> AuditRecord:  # fmt: skip
    return AuditRecord(f"{i:032x}", name, kind, model, "1", "pass", finished - 5, finished, "test", "log", i,
                       accuracy, {"i": i})  # fmt: skip


def test_results_newest_first_filtered_and_paged(url: str) -> None:
    """Newest first (ties by id), filters, and ``after`` continuing exactly where a page ended."""
    store = FairnessStore(url)
    try:
        for i in range(1, 8):
            store.save_audit(record(i, model="m" if i % 2 else "k", kind="probe" if i == 7 else "outcome",
                                    finished=1000.0 + (i // 2)))  # fmt: skip
        page, more = store.audits(limit=3)
        assert [r.seq for r in page] == [7, 6, 5] and more
        page, more = store.audits(limit=3, after=page[-1].id)
        assert [r.seq for r in page] == [4, 3, 2] and more
        page, more = store.audits(limit=3, after=page[-1].id)
        assert [r.seq for r in page] == [1] and not more
        assert [r.seq for r in store.audits(model="k")[0]] == [6, 4, 2]
        assert [r.seq for r in store.audits(kind="probe")[0]] == [7]
        assert store.audits(after="f" * 32) == ([], False)
        got = store.audit(f"{3:032x}")
        assert got is not None and got.result == {"i": 3} and store.audit("0" * 32) is None
    finally:
        store.close()


def test_baseline_accuracies_by_audit_model_and_time(url: str) -> None:
    """The accuracies of earlier outcome audits of the same definition and model, since a time, oldest first."""
    store = FairnessStore(url)
    try:
        store.save_audit(record(1, accuracy=0.9, finished=100))
        store.save_audit(record(2, accuracy=0.8, finished=200))
        store.save_audit(record(3, accuracy=0.7, finished=300, model="other"))
        store.save_audit(record(4, accuracy=0.6, finished=300, name="other"))
        store.save_audit(record(5, accuracy=None, finished=300))
        assert store.accuracies("n", "m", 150) == [0.8]
        assert store.accuracies("n", "m", 0) == [0.9, 0.8]
    finally:
        store.close()


def test_expired_decisions_are_purged_labelled_or_not(url: str) -> None:
    """Retention: rows past ``expires_at`` go, the others stay."""
    store = FairnessStore(url)
    try:
        now = time.time()
        store.add_decisions([DecisionRow(f"{i:032x}", "a", "m", "1", 1, "g", now - 10, now + (i - 2) * 100)
                             for i in range(5)])  # fmt: skip
        assert store.purge(now) == 2
        assert sum(store.coverage("a", "m", now - 20, now).values()) == 3
    finally:
        store.close()
