"""Contract: the official ``openai`` SDK, unchanged, against the gateway over real TLS and a real Triton."""

from __future__ import annotations

import httpx
import openai
import pytest

pytestmark = pytest.mark.triton


@pytest.fixture
async def sdk(live):
    server = live()
    client = openai.AsyncOpenAI(
        base_url=f"{server.url}/v1",
        api_key=server.api_key,
        max_retries=0,
        http_client=httpx.AsyncClient(verify=server.ssl_context()),
    )
    yield client
    await client.close()


async def test_chat(sdk: openai.AsyncOpenAI) -> None:
    """chat.completions.create parses into the SDK's types, usage included."""
    resp = await sdk.chat.completions.create(
        model="echo",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        max_completion_tokens=64,
        temperature=0.2,
        top_p=0.9,
        seed=7,
    )
    assert resp.choices[0].message.role == "assistant"
    assert "hi" in resp.choices[0].message.content
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None and resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


async def test_streaming_chat(sdk: openai.AsyncOpenAI) -> None:
    """Streaming chat yields typed chunks ending with a usage chunk when asked."""
    stream = await sdk.chat.completions.create(
        model="counter",
        messages=[{"role": "user", "content": "count"}],
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, finish = "", None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert text == "tok0 tok1 tok2 tok3 "
    assert finish == "length"
    assert usage is not None and usage.completion_tokens == 4


async def test_completions(sdk: openai.AsyncOpenAI) -> None:
    """The legacy completions endpoint, streamed and not."""
    resp = await sdk.completions.create(model="counter", prompt="go", max_tokens=2)
    assert resp.choices[0].text == "tok0 tok1 "
    stream = await sdk.completions.create(model="counter", prompt="go", max_tokens=2, stream=True)
    assert "".join([c.choices[0].text async for c in stream if c.choices]) == "tok0 tok1 "


async def test_embeddings(sdk: openai.AsyncOpenAI) -> None:
    """embeddings.create (which asks for base64 by default) returns float vectors."""
    resp = await sdk.embeddings.create(model="e5-small", input=["hello", "world"])
    assert [len(d.embedding) for d in resp.data] == [384, 384]
    assert resp.data[0].embedding != resp.data[1].embedding


async def test_models(sdk: openai.AsyncOpenAI) -> None:
    """models.list and models.retrieve."""
    ids = [m.id async for m in sdk.models.list()]
    assert "echo" in ids and "e5-small" in ids
    assert (await sdk.models.retrieve("echo")).id == "echo"


async def test_error_classes(sdk: openai.AsyncOpenAI) -> None:
    """The SDK raises its own classes from the gateway's statuses."""
    with pytest.raises(openai.NotFoundError) as nf:
        await sdk.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert nf.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        await sdk.chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}], temperature=5)
    assert bad.value.param == "temperature"
    with pytest.raises(openai.UnprocessableEntityError):
        await sdk.chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}], n=3)
    with pytest.raises(openai.InternalServerError) as upstream:
        await sdk.completions.create(model="broken-alone", prompt="x")
    assert upstream.value.status_code == 502
