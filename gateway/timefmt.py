"""How the gateway writes a time: ISO 8601 in UTC to the second for machines (API answers, ledger entries,
reports, webhooks), and a short UTC form for people (the CLI's tables, the compliance page)."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(ts: float) -> str:
    """``2026-11-30T10:15:00+00:00``."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def human(ts: float | None, never: str = "never") -> str:
    """``2026-11-30 10:15:00 UTC``, or ``never`` for no time."""
    return never if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
