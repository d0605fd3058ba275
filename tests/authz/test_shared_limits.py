"""Rate limits shared by replicas over the machine's real Redis: one limit for all, sliding, fail closed."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from gateway.authz.engine import Effective
from gateway.authz.files import RateLimit
from gateway.authz.shared_limits import RedisLimiter
from gateway.errors import RateLimited, RateLimiterUnavailable

REDIS = "redis://127.0.0.1:6379/0"
T0 = 1_000_000.0


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


def limits(rpm: int | None = None, tpm: int | None = None, model: str = "*") -> Effective:
    return Effective(None, True, (RateLimit(model=model, requests_per_minute=rpm, tokens_per_minute=tpm),))


@pytest.fixture
async def replicas() -> AsyncIterator[tuple[Callable[..., RedisLimiter], Clock, str]]:
    """Factory of limiters (replicas) sharing one unique key prefix and one hand-moved clock."""
    prefix, clock = f"test:{uuid.uuid4().hex}:", Clock()
    made: list[RedisLimiter] = []

    def make(**kwargs: object) -> RedisLimiter:
        made.append(RedisLimiter(Redis.from_url(REDIS), prefix, clock=clock, **kwargs))  # type: ignore[arg-type]
        return made[-1]

    yield make, clock, prefix
    for limiter in made:
        await limiter.aclose()
    async with Redis.from_url(REDIS) as r:
        keys = [k async for k in r.scan_iter(match=f"{prefix}*")]
        if keys:
            await r.delete(*keys)


async def _outcomes(calls: list) -> list[BaseException | list]:
    return await asyncio.gather(*calls, return_exceptions=True)


async def test_two_replicas_admit_exactly_the_limit_together(replicas) -> None:
    """Concurrent requests through two replicas: exactly the limit is admitted; the next is 429 with Retry-After."""
    make, clock, prefix = replicas
    a, b = make(), make()
    lim = limits(rpm=5)
    out = await _outcomes([(a if i % 2 else b).admit("user:x", "llama-3", lim) for i in range(20)])
    assert sum(isinstance(o, list) for o in out) == 5
    assert all(isinstance(o, RateLimited) for o in out if not isinstance(o, list))
    clock.t = T0 + 10
    with pytest.raises(RateLimited, match="5 requests per minute") as info:
        await a.admit("user:x", "llama-3", lim)
    assert info.value.status == 429 and info.value.headers["retry-after"] == "50"
    assert await b.admit("user:y", "llama-3", lim) == [("user:y", "*")]  # another caller has its own window
    async with Redis.from_url(REDIS) as r:
        keys = [k async for k in r.scan_iter(match=f"{prefix}*")]
        ttls = [await r.pttl(k) for k in keys]
    assert ttls and all(0 < t <= 60_000 for t in ttls)  # every key expires


async def test_tokens_per_minute_are_shared(replicas) -> None:
    """Tokens charged on one replica count on the other; Retry-After is when enough tokens leave the window."""
    make, clock, _ = replicas
    a, b = make(), make()
    lim = limits(tpm=100)
    await a.add_tokens(await a.admit("user:x", "m", lim), 60)
    clock.t = T0 + 5
    await b.add_tokens(await b.admit("user:x", "m", lim), 50)  # 60 < 100: admitted, now 110
    clock.t = T0 + 20
    with pytest.raises(RateLimited, match="100 tokens per minute") as info:
        await a.admit("user:x", "m", lim)
    assert info.value.headers["retry-after"] == "40"  # the first 60 leave at T0 + 60, leaving 50 < 100
    clock.t = T0 + 60
    assert await a.admit("user:x", "m", lim) == [("user:x", "*")]


async def test_window_slides(replicas) -> None:
    """A request leaves the window one window after it came: a sliding window, not a fixed bucket."""
    make, clock, _ = replicas
    a, b = make(), make()
    lim = limits(rpm=2, model="llama-*")
    assert await a.admit("user:x", "gpt", lim) == []  # no rate applies to this model: nothing counted
    await a.admit("user:x", "llama-3", lim)
    clock.t = T0 + 30
    await b.admit("user:x", "llama-3", lim)
    clock.t = T0 + 59.5
    with pytest.raises(RateLimited) as info:
        await b.admit("user:x", "llama-3", lim)
    assert info.value.headers["retry-after"] == "1"
    clock.t = T0 + 60
    await a.admit("user:x", "llama-3", lim)
    with pytest.raises(RateLimited) as info:
        await b.admit("user:x", "llama-3", lim)
    assert info.value.headers["retry-after"] == "30"  # the request at T0 + 30 leaves next


async def test_short_window(replicas) -> None:
    """The window length is configurable; a request admitted on one replica frees room on both when it leaves."""
    make, clock, _ = replicas
    a, b = make(window_s=2), make(window_s=2)
    lim = limits(rpm=1)
    await a.admit("user:x", "m", lim)
    with pytest.raises(RateLimited):
        await b.admit("user:x", "m", lim)
    clock.t = T0 + 2
    await b.admit("user:x", "m", lim)


async def test_redis_down_fails_closed(caplog) -> None:
    """With Redis unreachable, admitting is refused with 503 and the reason is logged; a charge is dropped."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the socket is
    limiter = RedisLimiter(Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=1), "test:")
    try:
        with pytest.raises(RateLimiterUnavailable) as info:
            await limiter.admit("user:x", "m", limits(rpm=5))
        assert info.value.status == 503 and info.value.body()["error"]["code"] == "rate_limiter_unavailable"
        assert "fail closed" in caplog.text
        await limiter.add_tokens([("user:x", "*")], 10)  # never raises: the response was already served
    finally:
        await limiter.aclose()
