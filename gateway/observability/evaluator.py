"""The gateway's own evaluation of ``policies/alerts.yaml``, over rolling windows kept in memory.

Every ``alerts.interval_s`` the evaluator reads each signal a rule names (``signals``: cumulative counters, or
gauges) and keeps the readings for the longest window that needs them. A rule's value for one series (a model,
a GPU, or the whole gateway) is then computed as its exported PromQL would: the increase of a counter (or of a
ratio's numerator over its denominator's) since the last reading at least one window old, or a gauge's mean
within the window. No data (no requests in the window) is no value, and no value never fires.

Each series moves through pending (the condition holds, not yet ``for`` long) to firing, and back: a firing
series whose condition stops holding, whose data disappears, or whose rule is removed, resolves. Firing and
resolving are events handed to ``notify`` (the ledger, a log line and the webhook: ``monitor``); each happens
once per episode. Baselines (``deviation``, ``drop``) keep at most ~120 samples per series over their window.
State lives in this process: a restart starts every window and baseline afresh (Prometheus, with the exported
rules, keeps them across restarts).
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.observability.alerts_policy import AlertPolicy, AlertRule
from gateway.observability.signals import SIGNALS, Key, Signal, Sources

log = logging.getLogger(__name__)

BASELINE_SAMPLES = 120


@dataclass(frozen=True)
class AlertEvent:
    status: Literal["firing", "resolved"]
    rule: AlertRule
    labels: dict[str, str]
    value: float | None
    started_at: float
    """Wall-clock time the condition started to hold."""
    ended_at: float | None = None


@dataclass
class _Series:
    rule: AlertRule
    since: float
    started_at: float
    firing: bool = False
    value: float | None = None


@dataclass
class _History:
    retention_s: float
    readings: deque[tuple[float, dict[Key, Any]]] = field(default_factory=deque)


class Evaluator:
    def __init__(self, sources: Sources, rules: Callable[[], AlertPolicy],
                 notify: Callable[[AlertEvent], Awaitable[None]], interval_s: float) -> None:  # fmt: skip
        self.sources = sources
        self.rules = rules
        self.notify = notify
        self.interval_s = interval_s
        self._history: dict[str, _History] = {}
        self._series: dict[tuple[str, Key], _Series] = {}
        self._baselines: dict[tuple[str, Key], deque[tuple[float, float]]] = {}
        self._gauged: set[tuple[str, str]] = set()  # (alert, severity) label pairs of alerts_firing

    def prime(self, now: float | None = None) -> None:
        """Take the first readings (at start, before any request): every counter's zero is the base of its
        first windows. Triton's readings start with the first step."""
        self._read(self.rules().rules, time.monotonic() if now is None else now)

    async def step(self, now: float | None = None) -> list[AlertEvent]:
        """Read the signals, evaluate every rule, and notify firing and resolved series."""
        now = time.monotonic() if now is None else now
        wall = time.time()
        rules = self.rules().rules
        if any(SIGNALS[r.signal].uses_triton for r in rules) and self.sources.triton is not None:
            await self.sources.triton.refresh()
        self._read(rules, now)
        events: list[AlertEvent] = []
        seen: set[tuple[str, Key]] = set()
        for rule in rules:
            signal = SIGNALS[rule.signal]
            keys = set(self._history[signal.name].readings[-1][1])
            keys |= {k for (name, k) in self._series if name == rule.name}
            for key in sorted(keys):
                seen.add((rule.name, key))
                value = self._value(signal, rule, key, now)
                events.extend(self._advance(rule, signal, key, value, self._holds(rule, key, value, now), now, wall))
        for sid in [sid for sid in self._series if sid not in seen]:  # the rule is gone: its alerts resolve
            s = self._series.pop(sid)
            if s.firing:
                events.append(AlertEvent("resolved", s.rule, _labels(SIGNALS[s.rule.signal], sid[1]), s.value,
                                         s.started_at, wall))  # fmt: skip
        names = {r.name for r in rules}
        for bid in [bid for bid in self._baselines if bid[0] not in names]:
            del self._baselines[bid]
        self._gauges(rules)
        for event in events:
            try:
                await self.notify(event)
            except Exception:  # one failing channel must not keep the others from hearing of the alert
                log.exception("alert %s: notifying %s failed", event.rule.name, event.status)
        return events

    def _read(self, rules: tuple[AlertRule, ...], now: float) -> None:
        need: dict[str, float] = {}
        for r in rules:
            need[r.signal] = max(need.get(r.signal, 0.0), r.window_s + 2 * self.interval_s)
        for name in [n for n in self._history if n not in need]:
            del self._history[name]
        for name, retention in need.items():
            h = self._history.setdefault(name, _History(retention))
            h.retention_s = retention
            h.readings.append((now, SIGNALS[name].read(self.sources)))
            while len(h.readings) > 2 and h.readings[1][0] <= now - retention:
                h.readings.popleft()  # keep one reading older than the retention: the base of the longest window

    def _value(self, signal: Signal, rule: AlertRule, key: Key, now: float) -> float | None:
        readings = self._history[signal.name].readings
        current = readings[-1][1].get(key)
        if signal.kind == "gauge":
            inside = [v[key] for t, v in readings if t > now - rule.window_s and key in v]
            return sum(inside) / len(inside) if inside else None
        if current is None or len(readings) < 2:
            return None
        base_t, base = next(((t, v) for t, v in reversed(readings) if t <= now - rule.window_s), readings[0])
        if signal.kind == "ratio":
            old = base.get(key, (0.0, 0.0))
            den = current[1] - old[1]
            return (current[0] - old[0]) / den if den > 0 else None
        increase = current - base.get(key, 0.0)
        if signal.kind == "increase":
            return float(increase)
        return float(increase) / (now - base_t) if now > base_t else None

    def _holds(self, rule: AlertRule, key: Key, value: float | None, now: float) -> bool:
        if value is None or math.isnan(value):
            return False
        if rule.above is not None:
            return value > rule.above
        if rule.below is not None:
            return value < rule.below
        samples = self._baseline(rule, key, value, now)
        if rule.deviation is not None:
            if len(samples) < rule.deviation.min_samples:
                return False
            mean, sd = statistics.fmean(samples), statistics.pstdev(samples)
            return abs(value - mean) > rule.deviation.sigmas * sd
        assert rule.drop is not None
        return len(samples) >= 2 and statistics.fmean(samples) - value > rule.drop.by

    def _baseline(self, rule: AlertRule, key: Key, value: float, now: float) -> list[float]:
        """The series' samples over the rule's baseline, the current value included (as PromQL's would be)."""
        span = rule.baseline_s
        samples = self._baselines.setdefault((rule.name, key), deque())
        while samples and samples[0][0] <= now - span:
            samples.popleft()
        if not samples or samples[-1][0] <= now - span / BASELINE_SAMPLES:
            samples.append((now, value))
            return [v for _, v in samples]
        return [v for _, v in samples] + [value]

    def _advance(self, rule: AlertRule, signal: Signal, key: Key, value: float | None, holds: bool, now: float,
                 wall: float) -> list[AlertEvent]:  # fmt: skip
        sid = (rule.name, key)
        s = self._series.get(sid)
        if not holds:
            if s is None:
                return []
            del self._series[sid]
            return [AlertEvent("resolved", s.rule, _labels(signal, key), value, s.started_at, wall)] if s.firing else []
        if s is None:
            s = self._series[sid] = _Series(rule, now, wall)
        s.rule, s.value = rule, value
        if s.firing or now - s.since < rule.for_s:
            return []
        s.firing = True
        return [AlertEvent("firing", rule, _labels(signal, key), value, s.started_at)]

    def _gauges(self, rules: tuple[AlertRule, ...]) -> None:
        firing = {r.name: 0 for r in rules}
        for (name, _), s in self._series.items():
            if s.firing:
                firing[name] = firing.get(name, 0) + 1
        gauge = self.sources.metrics.alerts_firing
        current: set[tuple[str, str]] = {(r.name, r.severity) for r in rules}
        for gone in self._gauged - current:  # a removed rule, or a changed severity
            gauge.remove(*gone)
        self._gauged = current
        for r in rules:
            gauge.labels(r.name, r.severity).set(firing[r.name])

    def firing(self) -> list[tuple[str, dict[str, str]]]:
        """The series firing now: (alert name, labels)."""
        return [(name, _labels(SIGNALS[s.rule.signal], key)) for (name, key), s in self._series.items() if s.firing]


def _labels(signal: Signal, key: Key) -> dict[str, str]:
    return dict(zip(signal.by, key, strict=True))
