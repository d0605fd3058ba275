"""A bulkhead per backend: at most ``max_concurrency`` generations at once, ``max_queue`` waiting, else 429.

One slow or overloaded model server must not take every connection, task and byte of memory of the
gateway with it: requests beyond its concurrency wait in a bounded queue for at most ``queue_timeout_s``,
and beyond the queue they are refused at once with 429 ``backend_busy`` (and ``Retry-After``), which the
OpenAI SDKs retry. A slot is held until the answer's stream ends, not only until its first byte.
"""

from __future__ import annotations

import asyncio

from gateway.errors import RateLimited


class Bulkhead:
    def __init__(self, name: str, max_concurrency: int, max_queue: int, queue_timeout_s: float) -> None:
        self.name = name
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self._slots = asyncio.Semaphore(max_concurrency)
        self.running = 0
        self.waiting = 0

    def _busy(self, why: str) -> RateLimited:
        return RateLimited(f"backend {self.name!r} is busy: {why}; retry shortly", retry_after_s=1,
                           code="backend_busy")  # fmt: skip

    async def acquire(self) -> None:
        """Take a slot, waiting in the queue if there is room; raise ``RateLimited`` otherwise."""
        if self._slots.locked() and self.waiting >= self.max_queue:
            raise self._busy(f"{self.running} requests running and {self.waiting} queued, the most it takes")
        self.waiting += 1
        try:
            async with asyncio.timeout(self.queue_timeout_s):
                await self._slots.acquire()
        except TimeoutError:
            raise self._busy(f"no slot came free within {self.queue_timeout_s:g} s") from None
        finally:
            self.waiting -= 1
        self.running += 1

    def release(self) -> None:
        self.running -= 1
        self._slots.release()
