"""The OpenAI-compatible upstream backend against real servers.

The upstream is a second gateway in front of the real Triton (a real OpenAI-compatible server),
and, for the failure statuses, a small real HTTP server that answers as told.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from backends.base import Generation, Target
from backends.openai_http import OpenAIHTTPBackend
from gateway.errors import InvalidRequest, UpstreamError, UpstreamTimeout, UpstreamUnavailable

pytestmark = pytest.mark.triton


@pytest.fixture
async def upstream(live) -> AsyncIterator[OpenAIHTTPBackend]:
    server = live(tls={"enabled": False})
    backend = OpenAIHTTPBackend("up", f"{server.url}/v1", api_key=server.api_key, timeout_s=30, connect_timeout_s=2,
                                max_connections=8)  # fmt: skip
    yield backend
    await backend.aclose()


async def _collect(backend: OpenAIHTTPBackend, target: Target, gen: Generation) -> list:
    return [d async for d in backend.generate(target, gen)]


@pytest.mark.parametrize("stream", [False, True])
async def test_chat_through_upstream(upstream: OpenAIHTTPBackend, stream: bool) -> None:
    """Chat deltas, finish reason and usage come through, streamed or not."""
    gen = Generation(task="chat", messages=[{"role": "user", "content": "x"}], stream=stream, max_tokens=3)
    deltas = await _collect(upstream, Target("counter"), gen)
    assert "".join(d.text for d in deltas) == "tok0 tok1 tok2 "
    assert deltas[-1].finish_reason == "length"
    assert deltas[-1].usage is not None and deltas[-1].usage.completion_tokens == 3


async def test_completion_and_embeddings(upstream: OpenAIHTTPBackend) -> None:
    """Legacy completions and embeddings through the upstream."""
    gen = Generation(task="completion", prompt="a b c", max_tokens=2)
    assert "".join(d.text for d in await _collect(upstream, Target("echo"), gen)) == "a b"
    result = await upstream.embed(Target("e5-small"), ["one", "two"])
    assert len(result.vectors) == 2 and len(result.vectors[0]) == 384 and result.prompt_tokens > 0


async def test_ready_and_unknown_model(upstream: OpenAIHTTPBackend) -> None:
    """Readiness follows the upstream's model list; an unknown model maps to 503, not 404."""
    assert await upstream.ready(Target("echo"))
    assert not await upstream.ready(Target("nope"))
    with pytest.raises(UpstreamUnavailable):
        await _collect(upstream, Target("nope"), Generation(task="completion", prompt="x"))


async def test_caller_errors_stay_4xx(upstream: OpenAIHTTPBackend) -> None:
    """An upstream 400 for the caller's input stays a 400 for the caller."""
    gen = Generation(task="chat", messages=[{"role": "user", "content": "x"}], passthrough={"n": 5})
    with pytest.raises(InvalidRequest):
        await _collect(upstream, Target("echo"), gen)


async def _answering(status: int, body: bytes, delay: float = 0.0) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")), 0
        )
        await reader.readexactly(length)
        await asyncio.sleep(delay)
        writer.write(b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                     % (status, len(body), body))  # fmt: skip
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (500, b'{"error": {"message": "boom"}}', UpstreamError),
        (502, b"<html>bad gateway</html>", UpstreamError),
        (503, b"{}", UpstreamUnavailable),
        (429, b"{}", UpstreamUnavailable),
        (504, b"{}", UpstreamTimeout),
        (401, b"{}", UpstreamError),
        (200, b"not json", UpstreamError),
    ],
)
async def test_upstream_statuses(status: int, body: bytes, error: type[Exception]) -> None:
    """Each upstream failure maps to the gateway error a caller can act on."""
    server, port = await _answering(status, body)
    backend = OpenAIHTTPBackend("x", f"http://127.0.0.1:{port}/v1", api_key=None, timeout_s=5, connect_timeout_s=1,
                                max_connections=2)  # fmt: skip
    try:
        with pytest.raises(error) as info:
            await _collect(backend, Target("m"), Generation(task="completion", prompt="x"))
        assert type(info.value) is error
    finally:
        await backend.aclose()
        server.close()


async def test_timeout_and_refused_connection() -> None:
    """A slow upstream is a 504 at the deadline; a closed port is a 503."""
    server, port = await _answering(200, b"{}", delay=3)
    slow = OpenAIHTTPBackend("x", f"http://127.0.0.1:{port}/v1", api_key=None, timeout_s=0.3, connect_timeout_s=1,
                             max_connections=2)  # fmt: skip
    gone = OpenAIHTTPBackend("y", "http://127.0.0.1:9/v1", api_key=None, timeout_s=1, connect_timeout_s=1,
                             max_connections=2)  # fmt: skip
    try:
        with pytest.raises(UpstreamTimeout):
            await _collect(slow, Target("m"), Generation(task="completion", prompt="x"))
        with pytest.raises(UpstreamUnavailable):
            await _collect(gone, Target("m"), Generation(task="completion", prompt="x"))
    finally:
        await slow.aclose()
        await gone.aclose()
        server.close()
