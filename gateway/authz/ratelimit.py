"""Per-caller, per-model rate limits from ``limits.yaml``: requests and tokens per minute.

A sliding window of one minute per (caller, model pattern). A request is admitted when the
window's requests and tokens are under the caller's limits; its tokens are counted when the
response reports usage. ``Limiter`` is the interface ``Security`` sees. ``LocalLimiter`` keeps
the windows in this process, so several replicas each enforce the limit on their own share of
traffic; ``gateway.authz.shared_limits.RedisLimiter`` keeps them in Redis, shared by all replicas.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import casbin.util

from gateway.authz.engine import Effective
from gateway.errors import RateLimited

WINDOW_S = 60.0

Windows = list[tuple[str, str]]
"""The (caller, model pattern) windows a request was counted in, to charge its tokens to."""


class Limiter(Protocol):
    async def admit(self, subject: str, model: str, limits: Effective) -> Windows:
        """Count one request in each of the caller's windows for ``model``, or raise RateLimited (or a 503)."""
        ...

    async def add_tokens(self, windows: Windows, tokens: int) -> None:
        """Charge a response's tokens to the windows its request was admitted to. Never raises."""
        ...

    async def aclose(self) -> None:
        """Release what the limiter holds (connections)."""
        ...


@dataclass
class _Window:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    token_sum: int = 0

    def expire(self, now: float) -> None:
        while self.requests and self.requests[0] <= now - WINDOW_S:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= now - WINDOW_S:
            self.token_sum -= self.tokens.popleft()[1]


class RateLimiter:
    def __init__(self) -> None:
        self._windows: dict[tuple[str, str], _Window] = {}

    def admit(self, subject: str, model: str, limits: Effective, now: float | None = None) -> list[tuple[str, str]]:
        """Admit one request or raise RateLimited with Retry-After; returns the windows it counts in."""
        now = time.monotonic() if now is None else now
        keys = []
        for rate in limits.rates:
            if not casbin.util.key_match(model, rate.model):
                continue
            w = self._windows.setdefault((subject, rate.model), _Window())
            w.expire(now)
            rpm, tpm = rate.requests_per_minute, rate.tokens_per_minute
            if rpm is not None and len(w.requests) >= rpm:
                raise RateLimited(f"rate limit of {rpm} requests per minute for {model!r} reached",
                                  retry_after_s=w.requests[0] + WINDOW_S - now)  # fmt: skip
            if tpm is not None and w.token_sum >= tpm:
                raise RateLimited(f"rate limit of {tpm} tokens per minute for {model!r} reached",
                                  retry_after_s=w.tokens[0][0] + WINDOW_S - now)  # fmt: skip
            keys.append((subject, rate.model))
        for key in keys:
            self._windows[key].requests.append(now)
        return keys

    def add_tokens(self, keys: list[tuple[str, str]], tokens: int, now: float | None = None) -> None:
        """Count a response's tokens in the windows its request was admitted to."""
        now = time.monotonic() if now is None else now
        for key in keys:
            w = self._windows.get(key)
            if w is not None and tokens > 0:
                w.tokens.append((now, tokens))
                w.token_sum += tokens


class LocalLimiter:
    """``Limiter`` over this process's own windows: one replica, or a limit per replica."""

    def __init__(self) -> None:
        self.windows = RateLimiter()

    async def admit(self, subject: str, model: str, limits: Effective) -> Windows:
        return self.windows.admit(subject, model, limits)

    async def add_tokens(self, windows: Windows, tokens: int) -> None:
        self.windows.add_tokens(windows, tokens)

    async def aclose(self) -> None:
        pass
