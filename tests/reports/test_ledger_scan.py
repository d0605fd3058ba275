"""The report's pass over the ledger: period bounds by UTC day, kinds kept exactly, traffic skipped, and keys of
the same names nested in ``data`` never mistaken for the entry's own."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

from benches._synthetic_ledger import write
from gateway.reports.ledger_scan import scan
from ledger.store import open_store


def _at(day: int, hour: int = 12) -> datetime:
    return datetime(2026, 11, day, hour, tzinfo=UTC)


def test_scan_keeps_the_gateway_events_of_the_period(tmp_path: Path) -> None:
    """Entries on the first and last day are in, the days around are out; the newest policy before the period
    is remembered; a nested ``kind``/``ts`` in data does not confuse the byte search."""
    url = str(tmp_path / "ledger.sqlite3")
    write(url, "gw.test/a", [
        (_at(9), "policy.loaded", "gateway", {"version": 1, "digest": "a" * 64, "files": {}}),
        (_at(10, 0), "authn.failed", "anonymous", {"reason": "unknown API key"}),
        (_at(10), "request.admitted", "apikey:k", {"model": "echo", "nested": {"kind": "policy.accepted"}}),
        (_at(11), "fairness.audit", "service:fairness-auditor",
         {"status": "pass", "metric": {"kind": "estimate", "ts": "1999-01-01"}}),
        (_at(12, 23), "alert.fired", "gateway", {"alert": "error_rate"}),
        (_at(13, 0), "alert.resolved", "gateway", {"alert": "error_rate"}),
    ])  # fmt: skip
    write(url, "gw.test/b", [(_at(11), "policy.accepted", "apikey:admin", {"version": 2})])
    write(url, "gw.test/0", [(_at(9, 18), "policy.loaded", "gateway", {"version": 7})])  # another replica, later
    store = open_store(url)
    try:
        found = scan(store, date(2026, 11, 10), date(2026, 11, 12))
    finally:
        store.close()
    assert found.entries == 5
    assert {k: [(e["log"], e["seq"]) for e in v] for k, v in found.events.items()} == {
        "authn.failed": [("gw.test/a", 1)], "fairness.audit": [("gw.test/a", 3)], "alert.fired": [("gw.test/a", 4)],
        "policy.accepted": [("gw.test/b", 0)],
    }  # fmt: skip
    assert found.before["policy.loaded"]["data"]["version"] == 7  # the newest of every log, not the last read
    a = found.logs["gw.test/a"]
    assert (a.first_seq, a.last_seq, a.entries) == (1, 4, 4)
    assert found.logs["gw.test/b"].entries == 1


def test_an_empty_store_scans_to_nothing(tmp_path: Path) -> None:
    """No log at all: no entries, no events, no extent."""
    store = open_store(str(tmp_path / "ledger.sqlite3"))
    try:
        found = scan(store, date(2026, 11, 1), date(2026, 11, 30))
    finally:
        store.close()
    assert (found.entries, found.events, found.logs, found.before) == (0, {}, {}, {})
