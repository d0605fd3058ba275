"""The OpenAI-compatible API in-process, in front of the real Triton server."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

CHAT = "/v1/chat/completions"


async def test_chat_completion_shape(client: httpx.AsyncClient) -> None:
    """A chat completion has the OpenAI shape, the rendered prompt reaches the model, usage is counted."""
    r = await client.post(
        CHAT, json={"model": "echo", "messages": [{"role": "user", "content": "hello world"}], "max_tokens": 50}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "echo"
    msg = body["choices"][0]["message"]
    assert msg["role"] == "assistant"
    # echo answers with the words of the ChatML prompt the gateway rendered
    assert msg["content"] == "<|im_start|>user hello world<|im_end|> <|im_start|>assistant"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8}
    assert r.headers["x-gateway-model"] == "echo" and r.headers["x-request-id"]


async def test_completion_respects_max_tokens(client: httpx.AsyncClient) -> None:
    """Legacy completions pass the prompt as-is and report finish_reason=length at the limit."""
    r = await client.post("/v1/completions", json={"model": "counter", "prompt": "go", "max_tokens": 3})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["text"] == "tok0 tok1 tok2 "
    assert choice["finish_reason"] == "length"
    assert r.json()["object"] == "text_completion"


async def test_streamed_chat_events(client: httpx.AsyncClient) -> None:
    """A streamed chat is SSE: role first, content deltas, finish, usage chunk, then [DONE]."""
    r = await client.post(
        CHAT,
        json={
            "model": "counter",
            "messages": [{"role": "user", "content": "x"}],
            "stream": True,
            "max_tokens": 3,
            "stream_options": {"include_usage": True},
        },
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    frames = [line.removeprefix("data: ") for line in r.text.split("\n\n") if line]
    assert frames[-1] == "[DONE]"
    chunks = [httpx.Response(200, content=f).json() for f in frames[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "tok0 tok1 tok2 "
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)


async def test_vllm_interface(client: httpx.AsyncClient) -> None:
    """A vLLM-backend model gets sampling_parameters as JSON and answers through the same API."""
    r = await client.post("/v1/completions", json={"model": "vllm-echo", "prompt": "a b c d", "max_tokens": 2})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == "a b"


async def test_embeddings_float_and_base64(client: httpx.AsyncClient) -> None:
    """Embeddings come back per input, as floats or as base64 little-endian float32, alike."""
    r = await client.post("/v1/embeddings", json={"model": "e5-small", "input": ["cat", "kitten", "stock market"]})
    assert r.status_code == 200, r.text
    vecs = np.array([d["embedding"] for d in r.json()["data"]])
    assert vecs.shape == (3, 384)
    assert r.json()["usage"]["prompt_tokens"] > 0
    cos = vecs @ vecs.T
    assert cos[0, 1] > cos[0, 2]  # a real model: cat is nearer kitten than stock market
    r64 = await client.post("/v1/embeddings", json={"model": "e5-small", "input": "cat", "encoding_format": "base64"})
    decoded = np.frombuffer(base64.b64decode(r64.json()["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, vecs[0], atol=1e-6)


async def test_models_lists_only_ready(client: httpx.AsyncClient) -> None:
    """/v1/models offers ready models (or ones whose fallback is ready), never unreachable ones."""
    r = await client.get("/v1/models")
    ids = {m["id"] for m in r.json()["data"]}
    assert {"echo", "counter", "e5-small", "smollm2-135m-instruct", "gone"} <= ids
    assert "gone-alone" not in ids and "echo-v7" not in ids
    one = await client.get("/v1/models/echo")
    assert one.json() == {"id": "echo", "object": "model", "created": one.json()["created"], "owned_by": "organization"}
    missing = await client.get("/v1/models/gone-alone")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("request_kwargs", "status", "param"),
    [
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, None),
        ({"content": b"[]", "headers": {"content-type": "application/json"}}, 400, None),
        ({"content": b"", "headers": {"content-type": "application/json"}}, 400, None),
        ({"content": b'{"model": "echo"}', "headers": {"content-type": "text/plain"}}, 415, "Content-Type"),
        ({"content": b'{"model": "echo"}'}, 415, "Content-Type"),
        ({"json": {"model": "echo"}}, 400, "messages"),
        ({"json": {"model": "echo", "messages": []}}, 400, "messages"),
        ({"json": {"model": "echo", "messages": [{"role": "wizard", "content": "x"}]}}, 400, "messages.0.role"),
        (
            {"json": {"model": "echo", "messages": [{"role": "user", "content": "x"}], "temperature": 9}},
            400,
            "temperature",
        ),
        (
            {"json": {"model": "echo", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}},
            400,
            "max_tokens",
        ),
        ({"json": {"model": "echo", "messages": [{"role": "user", "content": "x"}], "n": 2}}, 422, "n"),
        ({"json": {"model": "nope", "messages": [{"role": "user", "content": "x"}]}}, 404, "model"),
        ({"json": {"model": "e5-small", "messages": [{"role": "user", "content": "x"}]}}, 400, "model"),
        (
            {"json": {"model": "echo", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}},
            422,
            "messages",
        ),
    ],
)
async def test_bad_requests_get_openai_errors(
    client: httpx.AsyncClient, request_kwargs: dict, status: int, param: str | None
) -> None:
    """Each kind of bad request gets the OpenAI error JSON with its status and param, never a 500."""
    r = await client.post(CHAT, **request_kwargs)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param
    assert err["message"]


async def test_oversized_body_is_413(triton, tmp_path) -> None:
    """A body over server.max_body_bytes is refused with 413, whether or not it declares its length."""
    from tests.conftest import create_app, in_process, make_settings, new_key

    settings = make_settings(triton, tmp_path, server={"max_body_bytes": 1000, "port": 0})
    async with in_process(create_app(settings), new_key(settings)) as c:
        big = {"model": "echo", "messages": [{"role": "user", "content": "x" * 2000}]}
        r = await c.post(CHAT, json=big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

        async def chunks():
            yield b'{"model": "echo", "messages": [{"role": "user", "content": "'
            yield b"x" * 2000
            yield b'"}]}'

        r = await c.post(CHAT, content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413


async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    """Unknown paths are 404 and wrong methods 405, both as OpenAI error JSON."""
    r = await client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await client.get(CHAT)
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"


async def test_unknown_fields_are_accepted(client: httpx.AsyncClient) -> None:
    """Fields the gateway does not know (as new OpenAI ones) are accepted, not refused."""
    r = await client.post(
        CHAT,
        json={
            "model": "echo",
            "messages": [{"role": "user", "content": "hi"}],
            "frequency_penalty": 0.5,
            "user": "u1",
            "some_future_field": {"a": 1},
        },
    )
    assert r.status_code == 200, r.text


async def test_upstream_failures_map_to_5xx(client: httpx.AsyncClient) -> None:
    """A failing model is 502 and an unreachable server 503, without upstream details leaking."""
    r = await client.post("/v1/completions", json={"model": "broken-alone", "prompt": "x"})
    assert r.status_code == 502
    assert "Traceback" not in r.text and r.json()["error"]["type"] == "upstream_error"
    r = await client.post("/v1/completions", json={"model": "gone-alone", "prompt": "x"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "backend_unavailable"


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    """/healthz is always live; /readyz is 503 while a route cannot be served, naming it."""
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    r = await client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["models"]["gone-alone"] is False and r.json()["models"]["echo"] is True


async def test_version_pin_reaches_triton(client: httpx.AsyncClient) -> None:
    """A route's version pin selects that Triton model version; a version Triton lacks is not served."""
    ok = await client.post("/v1/completions", json={"model": "echo-v1", "prompt": "a b", "max_tokens": 5})
    assert ok.status_code == 200 and ok.json()["choices"][0]["text"] == "a b"
    missing = await client.post("/v1/completions", json={"model": "echo-v7", "prompt": "a b"})
    assert missing.status_code == 503, missing.text
    assert "echo-v7" not in {m["id"] for m in (await client.get("/v1/models")).json()["data"]}
