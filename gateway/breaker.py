"""A circuit breaker per model route: the first step of the incident runbook, degrade to the fallback.

closed
    Requests go to the route's model. ``consecutive_failures`` failures in a row, or an error rate of at
    least ``error_rate`` over the last ``window_s`` seconds (once ``min_requests`` were seen), open it.
open
    Requests skip the model: they go to the route's fallback, or fail at once (503 with ``Retry-After``)
    when there is none, so that a failing model is not hammered while it recovers.
half_open
    After ``cooldown_s``, one request at a time probes the model: a success closes the circuit, a failure
    opens it again for another cooldown.

Only failures before the first byte count (the ones fallback can hide): unreachable, unloaded, erroring or
timing out. Each transition is reported to ``on_change`` (the router writes a ledger entry).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Literal

from gateway.settings import BreakerSettings

State = Literal["closed", "open", "half_open"]


Listener = Callable[[str, State, State, str], None]
"""``(route, old state, new state, reason)``."""


class Breaker:
    def __init__(self, route: str, settings: BreakerSettings, on_change: Listener,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.route = route
        self.settings = settings
        self.state: State = "closed"
        self._on_change = on_change
        self._clock = clock
        self._streak = 0
        self._outcomes: deque[tuple[float, bool]] = deque()
        self._opened_at = 0.0
        self._probing = False

    def retry_after_s(self) -> float:
        """Seconds until the next probe may go through (0 when not open)."""
        if self.state != "open":
            return 0.0
        return max(0.0, self._opened_at + self.settings.cooldown_s - self._clock())

    def allow(self) -> bool:
        """Whether a request may go to the model now (in half-open, only one probe at a time)."""
        if not self.settings.enabled or self.state == "closed":
            return True
        if self.state == "open":
            if self.retry_after_s() > 0:
                return False
            self._move("half_open", f"cooldown of {self.settings.cooldown_s:g} s over: probing")
        if self._probing:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        self._record(True)
        self._streak = 0
        if self.state == "half_open":
            self._probing = False
            self._move("closed", "probe succeeded")

    def failure(self, reason: str) -> None:
        self._record(False)
        self._streak += 1
        if self.state == "half_open":
            self._probing = False
            self._open(f"probe failed: {reason}")
            return
        if self.state != "closed" or not self.settings.enabled:
            return
        s = self.settings
        if self._streak >= s.consecutive_failures:
            self._open(f"{self._streak} consecutive failures, the last: {reason}")
            return
        seen = len(self._outcomes)
        failed = sum(not ok for _, ok in self._outcomes)
        if seen >= s.min_requests and failed / seen >= s.error_rate:
            self._open(f"error rate {failed / seen:.0%} over the last {s.window_s:g} s ({seen} requests)")

    def release(self) -> None:
        """A probe ended without an outcome (the caller left, or a client error): let the next one probe."""
        self._probing = False

    def _record(self, ok: bool) -> None:
        now = self._clock()
        self._outcomes.append((now, ok))
        while self._outcomes and self._outcomes[0][0] < now - self.settings.window_s:
            self._outcomes.popleft()

    def _open(self, reason: str) -> None:
        self._opened_at = self._clock()
        self._streak = 0
        self._outcomes.clear()
        self._move("open", reason)

    def _move(self, new: State, reason: str) -> None:
        old, self.state = self.state, new
        if old != new:
            self._on_change(self.route, old, new, reason)
