"""Async pool of analyzer worker processes, with a keyed LRU cache of findings in front.

Analysis is CPU-bound (spaCy NER costs ~30 ms per KB) and holds the GIL, so it runs in worker
processes, never on the event loop. Each worker is a child process (``gateway.pii._worker``)
driven over its stdin/stdout pipes with asyncio streams: waiting on a worker costs the loop
nothing, and a worker that times out, crashes or is abandoned by a cancelled request is killed
and replaced in the background, so it can never serve the next request with a stale or wedged
state. (``ProcessPoolExecutor`` cannot cancel a running task, and recreating it on every timeout
would also throw away the healthy workers.)

Chat clients resend the whole conversation on every turn, so each text's findings are cached
under an HMAC-SHA256 of (entities, threshold, allow-list, text) with a per-pool key: the cache
holds offsets and types only, never text, and its keys cannot be tested against guessed values
without the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import struct
import sys
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import orjson

from gateway.pii.engine import Finding, PIIUnavailable, Profile

log = logging.getLogger(__name__)

Fault = Literal["raise", "hang", "crash", "load"]
START_TIMEOUT_S = 120.0
_HEADER = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class PoolStats:
    """Counters since the pool started (a snapshot)."""

    cache_hits: int = 0
    cache_misses: int = 0
    worker_calls: int = 0
    failures: int = 0
    timeouts: int = 0
    restarts: int = 0


class _Worker:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def spawn(cls, profile: Profile, fault: Fault | None) -> tuple[_Worker, list[str]]:
        args = [profile] + ([fault] if fault else [])
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.pii._worker",
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        worker = cls(proc)
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                hello = await worker.receive()
        except BaseException as exc:
            await worker.kill()
            if isinstance(exc, Exception):
                raise PIIUnavailable(f"PII analyzer worker did not start ({type(exc).__name__})") from exc
            raise
        if "ready" not in hello:
            await worker.kill()
            raise PIIUnavailable(f"PII analyzer worker failed to load: {hello.get('error')}")
        return worker, hello["ready"]

    async def receive(self) -> Any:
        assert self.proc.stdout is not None
        (size,) = _HEADER.unpack(await self.proc.stdout.readexactly(_HEADER.size))
        return orjson.loads(await self.proc.stdout.readexactly(size))

    async def call(self, request: bytes) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(_HEADER.pack(len(request)) + request)
        await self.proc.stdin.drain()
        return await self.receive()

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()

    async def stop(self) -> None:
        """Close stdin (the worker exits on EOF); kill it if it does not within 5 s."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            async with asyncio.timeout(5):
                await self.proc.wait()
        except TimeoutError:
            await self.kill()


class AnalyzerPool:
    """Worker processes running one PII profile; ``analyze`` never blocks the event loop."""

    def __init__(
        self,
        profile: Profile,
        workers: int | None = None,
        cache_size: int = 10_000,
        cache_key: bytes | None = None,
        *,
        fault: Fault | None = None,
    ) -> None:
        if profile not in get_args(Profile):
            raise ValueError(f"unknown PII profile {profile!r}")
        self.profile = profile
        # By default one core is left to the gateway's event loop: with a worker on every core the
        # scheduler can keep the loop waiting for several ms under load (benches/RESULTS.md, PII).
        self.size = workers or max(1, (os.cpu_count() or 2) - 1)
        self._fault = fault  # test hook only: see gateway.pii._worker
        self._cache: OrderedDict[bytes, tuple[Finding, ...]] = OrderedDict()
        self._cache_size = cache_size
        self._key = cache_key if cache_key is not None else secrets.token_bytes(32)
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._live: set[_Worker] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._counts = dict.fromkeys(PoolStats.__slots__, 0)
        self._started = self._closed = False
        self.supported_entities: frozenset[str] = frozenset()

    @property
    def ready(self) -> bool:
        """Started, not closed, and at least one worker alive (a request may still wait for a replacement)."""
        return self._started and not self._closed and bool(self._live)

    @property
    def stats(self) -> PoolStats:
        return PoolStats(**self._counts)

    async def start(self) -> None:
        """Start every worker; return once all are loaded and warm, or raise PIIUnavailable."""
        spawned = await asyncio.gather(
            *(_Worker.spawn(self.profile, self._fault) for _ in range(self.size)), return_exceptions=True
        )
        good = [s for s in spawned if isinstance(s, tuple)]
        errors = [s for s in spawned if isinstance(s, BaseException)]
        if errors:
            await asyncio.gather(*(w.kill() for w, _ in good))
            raise errors[0] if isinstance(errors[0], PIIUnavailable) else PIIUnavailable(repr(errors[0]))
        self.supported_entities = frozenset(good[0][1])
        for worker, _ in good:
            self._live.add(worker)
            self._idle.put_nowait(worker)
        self._started = True

    async def analyze(
        self,
        texts: Sequence[str],
        *,
        entities: Sequence[str],
        threshold: float,
        allow: Sequence[str] = (),
        timeout_s: float,
    ) -> list[list[Finding]]:
        """Findings for each text, from the cache or a worker; PIIUnavailable on any failure."""
        unknown = set(entities) - self.supported_entities
        if self._started and unknown:
            raise ValueError(f"profile {self.profile!r} cannot detect {sorted(unknown)}")
        params = orjson.dumps([sorted(set(entities)), float(threshold), sorted(set(allow))])
        mac = hmac.new(self._key, _HEADER.pack(len(params)) + params, hashlib.sha256)
        results: list[list[Finding] | None] = [None] * len(texts)
        misses: dict[str, tuple[bytes, list[int]]] = {}
        for i, text in enumerate(texts):
            if not text.strip():
                results[i] = []
                continue
            if text in misses:
                misses[text][1].append(i)
                continue
            h = mac.copy()
            h.update(text.encode("utf-8", "surrogatepass"))
            key = h.digest()
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                self._counts["cache_hits"] += 1
                results[i] = list(hit)
            else:
                self._counts["cache_misses"] += 1
                misses[text] = (key, [i])
        if misses:
            request = {"texts": list(misses), "entities": list(entities), "threshold": threshold, "allow": list(allow)}
            found = await self._run(request, timeout_s)
            for (key, indexes), fs in zip(misses.values(), found, strict=True):
                self._remember(key, fs)
                for i in indexes:
                    results[i] = list(fs)
        return [r if r is not None else [] for r in results]

    async def _run(self, request: dict[str, object], timeout_s: float) -> list[tuple[Finding, ...]]:
        if not self.ready and not (self._started and not self._closed and self._tasks):
            # No worker alive and none being replaced: waiting could not help.
            raise PIIUnavailable("PII analyzer is not ready")
        try:
            body = orjson.dumps(request)
        except orjson.JSONEncodeError as exc:  # lone surrogates: no analyzer can read them
            raise PIIUnavailable("text cannot be analyzed (invalid Unicode)") from exc
        worker: _Worker | None = None
        try:
            async with asyncio.timeout(timeout_s):
                worker = await self._idle.get()
                self._counts["worker_calls"] += 1
                reply = await worker.call(body)
        except TimeoutError:
            self._counts["timeouts"] += 1
            if worker is not None:
                self._discard(worker, "timed out")
            raise PIIUnavailable(f"PII analysis timed out after {timeout_s} s") from None
        except (OSError, EOFError, asyncio.IncompleteReadError) as exc:
            self._counts["failures"] += 1
            if worker is not None:
                self._discard(worker, f"died ({type(exc).__name__})")
            raise PIIUnavailable("PII analyzer worker died") from exc
        except BaseException:  # cancelled mid-call: its reply would answer the next request
            if worker is not None:
                self._discard(worker, "abandoned")
            raise
        self._idle.put_nowait(worker)
        if "ok" not in reply:
            self._counts["failures"] += 1
            raise PIIUnavailable(f"PII analyzer raised {reply.get('error')}")
        return [tuple(Finding(e, s, t, c) for e, s, t, c in fs) for fs in reply["ok"]]

    def _remember(self, key: bytes, findings: tuple[Finding, ...]) -> None:
        if self._cache_size <= 0:
            return
        self._cache[key] = findings
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _discard(self, worker: _Worker, why: str) -> None:
        log.warning("PII analyzer worker %s %s; replacing it", worker.proc.pid, why)
        self._live.discard(worker)
        self._background(self._replace(worker))

    def _background(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replace(self, old: _Worker) -> None:
        await old.kill()
        delay = 1.0
        while not self._closed:
            try:
                worker, _ = await _Worker.spawn(self.profile, self._fault)
            except PIIUnavailable as exc:
                log.error("%s; retrying in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            if self._closed:
                await worker.kill()
                return
            self._counts["restarts"] += 1
            self._live.add(worker)
            self._idle.put_nowait(worker)
            return

    async def aclose(self) -> None:
        """Stop the workers and drop the cache."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(w.stop() for w in self._live))
        self._live.clear()
        self._cache.clear()
