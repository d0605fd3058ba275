"""Real sockets and real TLS: streaming, client disconnects and fallback, against the real Triton."""

from __future__ import annotations

import itertools
import json
import time

import pytest

from backends.triton import TritonBackend
from ledger.store import open_store
from tests.conftest import wait_for

pytestmark = pytest.mark.triton


def _triton_backend(server) -> TritonBackend:
    backend = server.app.state.gateway.router.resolve("counter", "llm").backend
    assert isinstance(backend, TritonBackend)
    return backend


async def test_stream_arrives_incrementally(live) -> None:
    """Chunks reach the client as the model produces them, not all at the end."""
    server = live()
    body = {
        "model": "counter",
        "stream": True,
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "delay_ms=300"}],
    }
    arrivals: list[float] = []
    async with server.client(timeout=30) as c:
        start = time.monotonic()
        async with c.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: ") and '"content":"tok' in line:
                    arrivals.append(time.monotonic() - start)
    assert len(arrivals) == 5
    # the model waits 300 ms before each token: each must arrive on its own, ~300 ms after the last
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert min(gaps) > 0.15, arrivals
    assert arrivals[0] < arrivals[-1] - 0.9, arrivals


async def test_client_disconnect_cancels_upstream(live) -> None:
    """A client that goes away mid-stream makes the gateway cancel its gRPC stream to Triton at once."""
    server = live()
    backend = _triton_backend(server)
    cancelled_before = backend.streams_cancelled
    # 30 tokens x 200 ms = 6 s if not cancelled. (PyTriton itself cannot stop a running Python
    # model, so the model runs on inside Triton: keep it short so the session's shutdown is quick.)
    body = {
        "model": "counter",
        "stream": True,
        "max_tokens": 30,
        "messages": [{"role": "user", "content": "delay_ms=200"}],
    }
    async with server.client(timeout=30) as c, c.stream("POST", "/v1/chat/completions", json=body) as r:
        seen = 0
        async for line in r.aiter_lines():
            if '"content":"tok' in line:
                seen += 1
            if seen == 2:
                break
        assert backend.streams_open == 1
    # leaving the block closes the connection
    await wait_for(lambda: backend.streams_open == 0, 2, "the upstream stream to close")
    assert backend.streams_cancelled == cancelled_before + 1

    def completed() -> list[dict]:
        store = open_store(server.settings.ledger_store())
        try:
            entries = [json.loads(body) for _, _, body in store.read(server.settings.ledger.origin)]
        finally:
            store.close()
        return [e["data"] for e in entries if e["kind"] == "request.completed"]

    await wait_for(lambda: bool(completed()), 5, "the request.completed entry of the cancelled stream")
    assert completed()[-1]["outcome"] == "cancelled" and completed()[-1]["status"] == 499


async def test_fallback_when_primary_fails(live) -> None:
    """A failing primary model falls back before the first byte, and the answer names the fallback."""
    server = live()
    async with server.client(timeout=30) as c:
        r = await c.post(
            "/v1/chat/completions",
            json={"model": "broken", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]},
        )
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "counter"
        assert r.headers["x-gateway-model"] == "counter" and r.headers["x-gateway-fallback"] == "true"
        r = await c.post("/v1/completions", json={"model": "gone", "prompt": "a b", "stream": True, "max_tokens": 2})
        assert r.status_code == 200 and '"model":"echo"' in r.text and r.text.endswith("data: [DONE]\n\n")


async def test_fallback_when_primary_unloaded(live, triton) -> None:
    """When Triton unloads the primary model, requests go to its fallback.

    PyTriton cannot load a model again once unloaded, so this model stays unloaded for the session.
    """
    server = live()
    req = {"model": "counter-spare", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]}
    async with server.client(timeout=30) as c:
        r = await c.post("/v1/chat/completions", json=req)
        assert r.json()["model"] == "counter-spare"
        await triton.set_loaded("counter-spare", False)
        r = await c.post("/v1/chat/completions", json=req)
        assert r.status_code == 200 and r.json()["model"] == "counter", r.text
        r = await c.post("/v1/chat/completions", json={**req, "stream": True})
        assert r.status_code == 200 and '"model":"counter"' in r.text


async def test_smollm2_answers_for_real(live) -> None:
    """The demo model (SmolLM2 via llama.cpp behind the TensorRT-LLM ensemble interface) generates text."""
    server = live()
    async with server.client(timeout=60) as c:
        r = await c.post(
            "/v1/chat/completions",
            json={
                "model": "smollm2-135m-instruct",
                "temperature": 0,
                "max_tokens": 12,
                "messages": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
            },
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert "Paris" in body["choices"][0]["message"]["content"]
    assert body["usage"]["prompt_tokens"] > 10 and 0 < body["usage"]["completion_tokens"] <= 12
