"""Timeouts, retries before the first byte, and the bulkhead, against a real OpenAI-compatible HTTP upstream
that answers as each test tells it (slowly, unavailable once, or holding its stream open)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import create_app, in_process, make_settings, new_key


class Upstream:
    """An OpenAI-compatible server: model ``ok`` answers at once, ``slow`` after 3 s, ``flaky`` is unavailable
    on its first call, ``hold`` streams one chunk and then waits for ``release``."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.release = asyncio.Event()
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": m, "object": "model"}
                                                             for m in ("ok", "slow", "flaky", "hold")]})  # fmt: skip

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = body["model"]
        self.calls[model] = self.calls.get(model, 0) + 1
        if model == "slow":
            await asyncio.sleep(3)
        if model == "flaky" and self.calls[model] == 1:
            return web.json_response({"error": {"message": "loading"}}, status=503)
        if model == "hold":
            resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(_chunk(model, "first ", None))
            await self.release.wait()
            await resp.write(_chunk(model, "last", "stop") + b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        return web.json_response({
            "id": "x", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": f"hello from {model}"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
        })  # fmt: skip


def _chunk(model: str, text: str, finish: str | None) -> bytes:
    event = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": model,
             "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}  # fmt: skip
    return b"data: " + json.dumps(event).encode() + b"\n\n"


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    await up.start()
    yield up
    await up.stop()


def _settings(triton: Any, tmp_path: Path, up: Upstream, **limits: Any) -> Any:
    backend = {"kind": "openai", "base_url": f"http://127.0.0.1:{up.port}/v1", "first_byte_timeout_s": 1.0,
               "retries": 0, **limits}  # fmt: skip
    models = [{"name": "ok", "backend": "up"}, {"name": "flaky", "backend": "up"},
              {"name": "slow", "backend": "up", "fallback": "ok"}, {"name": "slow-alone", "backend": "up",
              "model": "slow"}, {"name": "hold", "backend": "up"}]  # fmt: skip
    return make_settings(triton, tmp_path, backends={"up": backend}, models=models)


CHAT = {"messages": [{"role": "user", "content": "hi"}]}


async def test_first_byte_timeout_falls_back_or_is_504(triton: Any, tmp_path: Path, upstream: Upstream) -> None:
    settings = _settings(triton, tmp_path, upstream)
    async with in_process(create_app(settings), new_key(settings, "admin")) as client:
        r = await client.post("/v1/chat/completions", json={"model": "slow", **CHAT})
        assert r.status_code == 200 and r.json()["model"] == "ok" and r.headers["x-gateway-fallback"] == "true"
        r = await client.post("/v1/chat/completions", json={"model": "slow-alone", **CHAT})
        assert r.status_code == 504 and "sent nothing within 1 s" in r.json()["error"]["message"]


@pytest.mark.parametrize(("retries", "status", "calls"), [(0, 503, 1), (1, 200, 2)])
async def test_an_unavailable_backend_is_retried_before_the_first_byte(
    triton: Any, tmp_path: Path, upstream: Upstream, retries: int, status: int, calls: int
) -> None:
    settings = _settings(triton, tmp_path, upstream, retries=retries)
    async with in_process(create_app(settings), new_key(settings, "admin")) as client:
        r = await client.post("/v1/chat/completions", json={"model": "flaky", **CHAT})
    assert r.status_code == status and upstream.calls["flaky"] == calls


async def test_the_bulkhead_queues_then_refuses_with_429(triton: Any, tmp_path: Path, upstream: Upstream) -> None:
    """One slot and one queue place: a held stream takes the slot, the next request waits in the queue, the
    third is refused at once; when the queued one times out it is refused too; after the stream ends, the
    slot is free again."""
    settings = _settings(triton, tmp_path, upstream, max_concurrency=1, max_queue=1, queue_timeout_s=1.0)
    app = create_app(settings)
    async with in_process(app, new_key(settings, "admin")) as client:
        held = asyncio.create_task(client.post("/v1/chat/completions", json={"model": "hold", "stream": True, **CHAT}))
        bulkhead = app.state.gateway.router.bulkheads["up"]
        for _ in range(500):
            if bulkhead.running == 1:
                break
            await asyncio.sleep(0.01)
        queued = asyncio.create_task(client.post("/v1/chat/completions", json={"model": "ok", **CHAT}))
        for _ in range(500):
            if bulkhead.waiting == 1:
                break
            await asyncio.sleep(0.01)
        r = await client.post("/v1/chat/completions", json={"model": "ok", **CHAT})
        assert r.status_code == 429 and r.json()["error"]["code"] == "backend_busy" and r.headers["retry-after"]
        assert "1 requests running and 1 queued" in r.json()["error"]["message"]
        r = await queued
        assert r.status_code == 429 and "no slot came free within 1 s" in r.json()["error"]["message"]
        upstream.release.set()
        r = await held
        assert r.status_code == 200 and "first last" in "".join(
            json.loads(line[6:])["choices"][0]["delta"].get("content", "")
            for line in r.text.splitlines() if line.startswith("data: {"))  # fmt: skip
        assert bulkhead.running == 0
        r = await client.post("/v1/chat/completions", json={"model": "ok", **CHAT})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "hello from ok"
