"""When a scheduled audit is due: ``every`` intervals and five-field cron expressions, in UTC.

An audit's schedule (``probeset.Schedule``) names *slots*, the moments at which it should run. The scheduler
keeps, per audit, a reference time: the slot it last ran, or the moment it first saw the schedule. ``due``
returns the newest slot after the reference that is not in the future, or None:

- ``every: 7d``: slots are the reference plus whole multiples of the interval. A gateway that was down for
  three weeks runs the audit once when it comes back, not three times, and stays on its cadence.
- ``cron: "0 3 * * 1"``: slots are the minutes the expression matches, in UTC. As in Vixie cron, when both
  day of month and day of week are restricted (neither starts with ``*``), a day matching either one
  matches; ``7`` is Sunday like ``0``; ``a-b/n`` and ``*/n`` step through a range, ``a/n`` runs from a to the
  field's end.

A schedule first seen now has its first slot one interval (or the next cron match) from now: deploying a
policy folder does not start every audit at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from gateway.fairness.probeset import Schedule

_UNITS = {"m": 60, "h": 3600, "d": 86400}
_FIELDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_SEARCH_DAYS = 5 * 366  # the rarest date a valid expression can name, 29 February, recurs within 5 years


def every_seconds(text: str) -> int:
    """``"7d"`` -> 604800 (the units of ``Schedule.every``: m, h, d)."""
    return int(text[:-1]) * _UNITS[text[-1]]


def _field(text: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if base == "*":
            start, end = low, high
        elif "-" in base:
            a, b = base.split("-")
            start, end = int(a), int(b)
        else:
            start = int(base)
            end = high if step_text else start
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class Cron:
    """A parsed expression: the allowed values of each field (day of week 0-6, Sunday 0)."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    any_day: bool
    """Day of month is ``*``-based (unrestricted)."""
    any_weekday: bool

    @classmethod
    def parse(cls, text: str) -> Cron:
        """Parse an expression ``probeset.Schedule`` validated (ValueError on anything else)."""
        fields = text.split()
        if len(fields) != 5:
            raise ValueError(f"{text!r} needs five fields")
        sets = [_field(f, lo, hi) for f, (lo, hi) in zip(fields, _FIELDS, strict=True)]
        weekdays = frozenset(d % 7 for d in sets[4])
        return cls(sets[0], sets[1], sets[2], sets[3], weekdays, fields[2].startswith("*"), fields[4].startswith("*"))

    def day_matches(self, day: datetime) -> bool:
        if day.month not in self.months:
            return False
        dom = day.day in self.days
        dow = (day.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return (self.any_day or dom) and (self.any_weekday or dow)
        return dom or dow

    def latest(self, at: datetime) -> datetime | None:
        """The latest matching minute at or before ``at`` (UTC), or None within the search horizon."""
        at = at.astimezone(UTC).replace(second=0, microsecond=0)
        day = at.replace(hour=0, minute=0)
        for back in range(_SEARCH_DAYS):
            d = day - timedelta(days=back)
            if not self.day_matches(d):
                continue
            for hour in sorted(self.hours, reverse=True):
                if back == 0 and hour > at.hour:
                    continue
                for minute in sorted(self.minutes, reverse=True):
                    if back == 0 and hour == at.hour and minute > at.minute:
                        continue
                    return d.replace(hour=hour, minute=minute)
        return None


def due(schedule: Schedule, reference: datetime, now: datetime) -> datetime | None:
    """The newest slot of ``schedule`` after ``reference`` and not after ``now``; None if there is none."""
    if schedule.every is not None:
        step = every_seconds(schedule.every)
        n = int((now - reference).total_seconds() // step)
        return reference + timedelta(seconds=n * step) if n >= 1 else None
    assert schedule.cron is not None
    slot = Cron.parse(schedule.cron).latest(now)
    return slot if slot is not None and slot > reference else None
