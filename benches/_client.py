"""A minimal HTTP/1.1 load generator on raw asyncio protocols, for the overhead bench.

Why not httpx: on a 2-core box the load generator shares the CPUs with the servers it measures,
and httpx spends tens of microseconds of Python per request (request and response models,
header normalisation, the httpcore state machine). This client sends one precomputed request
and parses only the status line, ``Content-Length`` or chunked framing: its cost per request is a
few microseconds, so more of the CPU goes to the server under test and less noise to the timing.

Timestamps are taken in ``data_received``, when the event loop hands the bytes over, not when the
awaiting task next runs, so a busy client adds less scheduling delay to the figures.

One request at a time per connection (no pipelining); concurrency is the number of connections.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from time import perf_counter


@dataclass(slots=True)
class Timing:
    """One response: status, seconds to the first body chunk and to the end, and the body."""

    status: int
    first: float
    """For chunked bodies the first non-empty chunk (the first SSE event); else the first body byte."""
    total: float
    body: bytes


class ProtocolError(Exception):
    """The server's answer could not be framed (or arrived unasked)."""


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[Timing] | None = None
        self._buf = bytearray()
        self._reset(0.0)

    def _reset(self, t0: float) -> None:
        self._t0 = t0
        self._t_first = 0.0
        self._head_end = -1
        self._status = 0
        self._length = -1
        self._chunked = False
        self._pos = 0
        self._body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError(f"server closed the connection: {exc!r}"))

    def data_received(self, data: bytes) -> None:
        now = perf_counter()
        if self._waiter is None or self._waiter.done():
            self._fail(ProtocolError(f"unasked-for bytes: {data[:80]!r}"))
            return
        self._buf += data
        try:
            done = self._parse(now)
        except (ValueError, ProtocolError) as exc:
            self._fail(exc if isinstance(exc, ProtocolError) else ProtocolError(str(exc)))
            return
        if done:
            timing = Timing(self._status, self._t_first - self._t0, now - self._t0, bytes(self._body))
            self._buf.clear()
            self._waiter.set_result(timing)

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def _parse(self, now: float) -> bool:
        buf = self._buf
        if self._head_end < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return False
            lines = bytes(buf[:end]).split(b"\r\n")
            self._status = int(lines[0][9:12])
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    self._length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    self._chunked = True
            if not self._chunked and self._length < 0:
                raise ProtocolError("response has neither Content-Length nor chunked framing")
            self._head_end = self._pos = end + 4
        if not self._chunked:
            have = len(buf) - self._head_end
            if have > 0 and not self._t_first:
                self._t_first = now
            if have > self._length:
                raise ProtocolError("more bytes than Content-Length")
            if have < self._length:
                return False
            self._body = buf[self._head_end :]
            if not self._t_first:
                self._t_first = now
            return True
        # Chunked: each pass consumes one whole chunk, so the loop is bounded by the buffer.
        while True:
            eol = buf.find(b"\r\n", self._pos)
            if eol < 0:
                return False
            size = int(bytes(buf[self._pos : eol]).split(b";", 1)[0], 16)
            start = eol + 2
            if size == 0:
                trailer_end = buf.find(b"\r\n\r\n", eol)  # the empty trailer section ends the body
                if trailer_end < 0:
                    return False
                if trailer_end + 4 != len(buf):
                    raise ProtocolError("bytes after the last chunk")
                if not self._t_first:
                    self._t_first = now
                return True
            if len(buf) < start + size + 2:
                return False
            self._body += buf[start : start + size]
            if not self._t_first:
                self._t_first = now
            self._pos = start + size + 2

    async def request(self, raw: bytes) -> Timing:
        if self.transport is None:
            raise ConnectionError("connection is closed")
        self._reset(perf_counter())
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        try:
            return await self._waiter
        finally:
            self._waiter = None


@dataclass(frozen=True)
class Endpoint:
    """Where to send requests: loopback port, and a TLS context when the server speaks TLS."""

    port: int
    ssl: ssl.SSLContext | None = None
    api_key: str | None = None
    """Sent as a bearer token (the gateway authenticates every request)."""

    async def connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        hostname = "127.0.0.1" if self.ssl is not None else None
        _, conn = await loop.create_connection(_Conn, "127.0.0.1", self.port, ssl=self.ssl, server_hostname=hostname)
        return conn

    def request_bytes(self, method: str, path: str, body: bytes = b"", ctype: str = "application/json") -> bytes:
        head = f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{self.port}\r\naccept: */*\r\n"
        if self.api_key:
            head += f"authorization: Bearer {self.api_key}\r\n"
        if body or method == "POST":
            head += f"content-type: {ctype}\r\ncontent-length: {len(body)}\r\n"
        return head.encode() + b"\r\n" + body


@dataclass
class Batch:
    """The outcome of one batch: timings of 200 answers, wall time, and errors."""

    timings: list[Timing] = field(default_factory=list)
    elapsed: float = 0.0
    errors: int = 0
    first_error: str = ""

    def error(self, what: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or what


class Pool:
    """``concurrency`` open keep-alive connections; connect before timing, so handshakes are excluded."""

    def __init__(self, conns: list[_Conn]) -> None:
        self._conns = conns

    @classmethod
    async def open(cls, endpoint: Endpoint, concurrency: int, timeout_s: float = 10.0) -> Pool:
        conns = await asyncio.wait_for(asyncio.gather(*(endpoint.connect() for _ in range(concurrency))), timeout_s)
        return cls(list(conns))

    def close(self) -> None:
        for c in self._conns:
            if c.transport is not None:
                c.transport.close()

    async def run(self, raw: bytes, n: int, timeout_s: float) -> Batch:
        """Send ``raw`` ``n`` times over all connections at once; stop early at ``timeout_s``."""
        batch = Batch()
        left = n
        start = perf_counter()
        deadline = start + timeout_s

        async def worker(conn: _Conn) -> None:
            nonlocal left
            while left > 0 and perf_counter() < deadline:
                left -= 1
                try:
                    t = await conn.request(raw)
                except (ConnectionError, ProtocolError) as exc:
                    batch.error(repr(exc))
                    return  # this connection is gone; the others go on
                if t.status == 200:
                    batch.timings.append(t)
                else:
                    batch.error(f"HTTP {t.status}: {t.body[:200]!r}")

        tasks = [asyncio.ensure_future(worker(c)) for c in self._conns]
        try:
            # A request that never answers would hold its worker past the deadline: bound it here.
            _, pending = await asyncio.wait(tasks, timeout=timeout_s + 5.0)
            for task in pending:
                task.cancel()
                batch.error("timed out waiting for an answer")
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            batch.elapsed = perf_counter() - start
        if left > 0 and not batch.errors:
            batch.error(f"batch deadline ({timeout_s:.0f} s) reached with {left} requests unsent")
        return batch


async def get(endpoint: Endpoint, path: str, timeout_s: float = 5.0) -> Timing:
    """One GET on a fresh connection (for readiness checks)."""
    conn = await asyncio.wait_for(endpoint.connect(), timeout_s)
    try:
        return await asyncio.wait_for(conn.request(endpoint.request_bytes("GET", path)), timeout_s)
    finally:
        if conn.transport is not None:
            conn.transport.close()
