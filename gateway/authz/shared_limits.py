"""Rate limits shared by every replica: the same sliding windows as ``LocalLimiter``, kept in Redis.

Each (caller, model pattern) window is two sorted sets scored by time in milliseconds: one
member per admitted request, and one per charged response whose member carries its token count.
One Lua script trims, checks and counts all of a request's windows, so the check and the
increment are one atomic step for every replica (Redis runs a script alone). Time comes from the
Redis server's clock, so replicas whose clocks drift still share one window; tests inject a
clock. Keys start with the configured prefix, keep the caller in a hash tag (all keys a script
touches land on one cluster slot) and expire one window after their last write.

Fail closed: if Redis cannot be reached when admitting, the request is refused with 503
(``RateLimiterUnavailable``). A charge that cannot be written is logged and dropped: its
response has already been served.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from urllib.parse import quote

import casbin.util
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.authz.engine import Effective
from gateway.authz.ratelimit import WINDOW_S, Windows
from gateway.errors import RateLimited, RateLimiterUnavailable

log = logging.getLogger(__name__)

# Both scripts start here: ARGV[1] is now in ms, or "" for the server's clock (replicas need not agree).
_CLOCK = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# KEYS: per window i, KEYS[2i-1] its requests and KEYS[2i] its tokens.
# ARGV: now in ms ("" = the server's clock), window in ms, the request's member, then per window
# its requests and tokens per minute (-1 = no limit).
# Returns {0} when admitted, or {i, kind, ms until the window has room} (kind 1 requests, 2 tokens).
_ADMIT = (
    _CLOCK
    + """
local window = tonumber(ARGV[2])
local n = #KEYS / 2
for i = 1, n do
  local req, tok = KEYS[2 * i - 1], KEYS[2 * i]
  local rpm, tpm = tonumber(ARGV[2 + 2 * i]), tonumber(ARGV[3 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', req, '-inf', now - window)
  redis.call('ZREMRANGEBYSCORE', tok, '-inf', now - window)
  if rpm >= 0 then
    local count = redis.call('ZCARD', req)
    if count >= rpm then
      -- room once all but rpm - 1 of the requests have left the window
      local at = redis.call('ZRANGE', req, count - rpm, count - rpm, 'WITHSCORES')
      if at[2] == nil then return {i, 1, window} end
      return {i, 1, tonumber(at[2]) + window - now}
    end
  end
  if tpm >= 0 then
    local entries = redis.call('ZRANGE', tok, 0, -1, 'WITHSCORES')
    local sum = 0
    for j = 1, #entries, 2 do
      sum = sum + tonumber(string.match(entries[j], ':(%d+)$'))
    end
    if sum >= tpm then
      -- room once enough of the oldest charges have left the window
      for j = 1, #entries, 2 do
        sum = sum - tonumber(string.match(entries[j], ':(%d+)$'))
        if sum < tpm then return {i, 2, tonumber(entries[j + 1]) + window - now} end
      end
      return {i, 2, window}
    end
  end
end
for i = 1, n do
  redis.call('ZADD', KEYS[2 * i - 1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[2 * i - 1], window)
end
return {0}
"""
)

# KEYS: the token sets to charge. ARGV: now in ms ("" = the server's clock), window in ms, member.
_CHARGE = (
    _CLOCK
    + """
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[i], ARGV[2])
end
return 0
"""
)


class RedisLimiter:
    """``Limiter`` over windows in Redis, shared by every replica that uses the same ``prefix``.

    It owns ``client`` and closes it. ``clock`` (seconds) replaces the Redis server's clock, for
    tests; ``window_s`` is the length of a window.
    """

    def __init__(self, client: Redis, prefix: str, *, window_s: float = WINDOW_S,
                 clock: Callable[[], float] | None = None) -> None:  # fmt: skip
        self._client = client
        self._prefix = prefix
        self._window_ms = int(window_s * 1000)
        self._clock = clock
        self._admit = client.register_script(_ADMIT)
        self._charge = client.register_script(_CHARGE)

    def _key(self, window: tuple[str, str], kind: str) -> str:
        # the caller is the hash tag; quoting keeps "}" and ":" in names from making two windows one
        subject, pattern = window
        return f"{self._prefix}rate:{{{quote(subject, safe='')}}}:{quote(pattern, safe='*')}:{kind}"

    def _now(self) -> str:
        return "" if self._clock is None else str(int(self._clock() * 1000))

    async def admit(self, subject: str, model: str, limits: Effective) -> Windows:
        rates = [r for r in limits.rates if casbin.util.key_match(model, r.model)]
        if not rates:
            return []
        windows = [(subject, r.model) for r in rates]
        keys = [self._key(w, kind) for w in windows for kind in ("req", "tok")]
        args: list[str | int] = [self._now(), self._window_ms, secrets.token_hex(8)]
        for r in rates:
            args += [-1 if r.requests_per_minute is None else r.requests_per_minute,
                     -1 if r.tokens_per_minute is None else r.tokens_per_minute]  # fmt: skip
        try:
            result = await self._admit(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            log.error("rate limiter unavailable, refusing %s on %r (fail closed): %s", subject, model, exc)
            raise RateLimiterUnavailable("rate limiter unavailable; retry later") from None
        if int(result[0]) == 0:
            return windows
        rate, retry_s = rates[int(result[0]) - 1], int(result[2]) / 1000
        if int(result[1]) == 1:
            raise RateLimited(f"rate limit of {rate.requests_per_minute} requests per minute for {model!r} reached",
                              retry_after_s=retry_s)  # fmt: skip
        raise RateLimited(f"rate limit of {rate.tokens_per_minute} tokens per minute for {model!r} reached",
                          retry_after_s=retry_s)  # fmt: skip

    async def add_tokens(self, windows: Windows, tokens: int) -> None:
        if not windows or tokens <= 0:
            return
        keys = [self._key(w, "tok") for w in windows]
        try:
            await self._charge(keys=keys, args=[self._now(), self._window_ms, f"{secrets.token_hex(8)}:{tokens}"])
        except (RedisError, OSError) as exc:
            log.warning("%d tokens not charged to %s: rate limiter unavailable: %s", tokens, windows[0][0], exc)

    async def aclose(self) -> None:
        await self._client.aclose()
