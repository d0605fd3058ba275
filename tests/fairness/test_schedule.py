"""Schedule slots: ``every`` intervals on their cadence, and the cron matcher against hand-checked dates (UTC)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.fairness.probeset import Schedule
from gateway.fairness.schedule import Cron, due


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("expr", "now", "latest"),
    [
        ("0 3 * * 1", "2026-03-11 12:00", "2026-03-09 03:00"),  # Mondays at 03:00; the 11th is a Wednesday
        ("0 3 * * 1", "2026-03-09 03:00", "2026-03-09 03:00"),  # the minute itself matches
        ("0 3 * * 1", "2026-03-09 02:59", "2026-03-02 03:00"),
        ("*/15 * * * *", "2026-03-11 12:44", "2026-03-11 12:30"),
        ("5/20 * * * *", "2026-03-11 12:44", "2026-03-11 12:25"),  # 5, 25, 45
        ("0 9-17/4 * * *", "2026-03-11 16:00", "2026-03-11 13:00"),  # 9, 13, 17
        ("30 2 1 * *", "2026-03-11 12:00", "2026-03-01 02:30"),
        ("0 0 29 2 *", "2026-03-11 12:00", "2024-02-29 00:00"),  # a leap day, two years back
        ("0 0 * * 7", "2026-03-11 12:00", "2026-03-08 00:00"),  # 7 is Sunday, as 0 is
        ("0 0 13 * 5", "2026-03-11 12:00", "2026-03-06 00:00"),  # both restricted: the 13th OR a Friday
        ("0 0 1,15 * *", "2026-03-11 12:00", "2026-03-01 00:00"),
        ("0 0 * 6 *", "2026-03-11 12:00", "2025-06-30 00:00"),  # every day of June, last year's last one
    ],
)
def test_cron_latest_match(expr: str, now: str, latest: str) -> None:
    """The latest minute at or before ``now`` that the expression matches."""
    assert Cron.parse(expr).latest(at(now)) == at(latest)


def test_cron_that_never_matches_has_no_slot() -> None:
    """30 February never comes: no slot, rather than a search without end."""
    assert Cron.parse("0 0 30 2 *").latest(at("2026-03-11 12:00")) is None
    assert due(Schedule(cron="0 0 30 2 *"), at("2020-01-01 00:00"), at("2026-03-11 12:00")) is None


def test_every_keeps_its_cadence_and_runs_a_missed_slot_once() -> None:
    """Slots are the reference plus whole intervals: none before the first, and three weeks down is one run."""
    week = Schedule(every="7d")
    ref = at("2026-03-01 10:00")
    assert due(week, ref, at("2026-03-08 09:59")) is None
    assert due(week, ref, at("2026-03-08 10:00")) == at("2026-03-08 10:00")
    assert due(week, ref, at("2026-03-23 08:00")) == at("2026-03-22 10:00")
    assert due(week, at("2026-03-22 10:00"), at("2026-03-23 08:00")) is None


def test_cron_slot_must_be_after_the_reference() -> None:
    """A cron slot at or before the reference (the last slot run, or the first sight) is not due again."""
    monday = Schedule(cron="0 3 * * 1")
    assert due(monday, at("2026-03-09 03:00"), at("2026-03-11 12:00")) is None
    assert due(monday, at("2026-03-09 02:00"), at("2026-03-11 12:00")) == at("2026-03-09 03:00")
    assert due(monday, at("2026-03-01 00:00"), at("2026-03-16 03:00")) == at("2026-03-16 03:00")
