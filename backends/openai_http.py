"""OpenAI-compatible upstream backend (vLLM, Triton's OpenAI frontend, any such server).

One shared ``httpx.AsyncClient`` per upstream: HTTP/1.1 keep-alive, ``trust_env=False`` so a
stray ``HTTP_PROXY`` cannot reroute traffic. Streams are read event by event and handed on as
they arrive; nothing is buffered beyond one SSE line.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from backends.base import Delta, Embeddings, Generation, Target, Usage
from gateway.errors import InvalidRequest, UpstreamError, UpstreamTimeout, UpstreamUnavailable

log = logging.getLogger(__name__)
_MESSAGE_KEYS = ("role", "content")


def _usage(obj: dict[str, Any] | None) -> Usage | None:
    if not obj:
        return None
    return Usage(int(obj.get("prompt_tokens") or 0), int(obj.get("completion_tokens") or 0))


def _extra(d: dict[str, Any]) -> dict[str, Any] | None:
    extra = {k: v for k, v in d.items() if k not in _MESSAGE_KEYS and v is not None}
    return extra or None


class OpenAIHTTPBackend:
    def __init__(self, name: str, base_url: str, *, api_key: str | None, timeout_s: float,
                 connect_timeout_s: float, max_connections: int,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:  # fmt: skip
        self.name = name
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            trust_env=False,
            transport=transport,
        )
        self._connect_timeout = connect_timeout_s

    def _body(self, target: Target, gen: Generation) -> dict[str, Any]:
        body: dict[str, Any] = dict(gen.passthrough)
        body["model"] = target.model
        body["stream"] = gen.stream
        if gen.task == "chat":
            body["messages"] = list(gen.messages)
        else:
            body["prompt"] = gen.prompt
        for key, value in (("max_tokens", gen.max_tokens), ("temperature", gen.temperature),
                           ("top_p", gen.top_p), ("seed", gen.seed)):  # fmt: skip
            if value is not None:
                body[key] = value
        if gen.stop:
            body["stop"] = list(gen.stop)
        if gen.stream:
            body["stream_options"] = {"include_usage": True}
        return body

    async def generate(self, target: Target, gen: Generation) -> AsyncIterator[Delta]:
        path = "/chat/completions" if gen.task == "chat" else "/completions"
        content = orjson.dumps(self._body(target, gen))
        headers = {"content-type": "application/json"}
        try:
            if not gen.stream:
                resp = await self._client.post(path, content=content, headers=headers)
                await _check(resp, target.model)
                obj = _json(resp.content, target.model)
                choice = (obj.get("choices") or [{}])[0]
                if gen.task == "chat":
                    message = choice.get("message") or {}
                    yield Delta(text=message.get("content") or "", extra=_extra(message))
                else:
                    yield Delta(text=choice.get("text") or "")
                yield Delta(finish_reason=choice.get("finish_reason") or "stop", usage=_usage(obj.get("usage")))
                return
            async with self._client.stream("POST", path, content=content, headers=headers) as resp:
                await _check(resp, target.model)
                async for delta in _read_stream(resp, gen.task, target.model):
                    yield delta
        except httpx.TimeoutException:
            raise UpstreamTimeout(f"model {target.model!r} did not answer in time") from None
        except httpx.TransportError as exc:
            log.warning("upstream %s unreachable: %r", self.name, exc)
            raise UpstreamUnavailable(f"model {target.model!r} is not available") from None

    async def embed(self, target: Target, inputs: list[str]) -> Embeddings:
        content = orjson.dumps({"model": target.model, "input": inputs, "encoding_format": "float"})
        try:
            resp = await self._client.post("/embeddings", content=content, headers={"content-type": "application/json"})
        except httpx.TimeoutException:
            raise UpstreamTimeout(f"model {target.model!r} did not answer in time") from None
        except httpx.TransportError:
            raise UpstreamUnavailable(f"model {target.model!r} is not available") from None
        await _check(resp, target.model)
        obj = _json(resp.content, target.model)
        data = sorted(obj.get("data") or [], key=lambda d: d.get("index", 0))
        if len(data) != len(inputs):
            raise UpstreamError(f"model {target.model!r} returned {len(data)} embeddings for {len(inputs)} inputs")
        usage = obj.get("usage") or {}
        return Embeddings([d["embedding"] for d in data], int(usage.get("prompt_tokens") or 0))

    async def ready(self, target: Target) -> bool:
        try:
            resp = await self._client.get("/models", timeout=self._connect_timeout)
        except httpx.HTTPError:
            return False
        if resp.status_code != 200:
            return False
        try:
            ids = {m.get("id") for m in orjson.loads(resp.content).get("data", [])}
        except (orjson.JSONDecodeError, AttributeError):
            return False
        return target.model in ids

    async def aclose(self) -> None:
        await self._client.aclose()


async def _read_stream(resp: httpx.Response, task: str, model: str) -> AsyncIterator[Delta]:
    finish: str | None = None
    usage: Usage | None = None
    async for line in resp.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            yield Delta(finish_reason=finish or "stop", usage=usage)
            return
        obj = _json(data.encode(), model)
        if "error" in obj:
            log.warning("upstream stream error for %r: %s", model, obj["error"])
            raise UpstreamError(f"model {model!r} failed upstream")
        usage = _usage(obj.get("usage")) or usage
        for choice in obj.get("choices") or []:
            finish = choice.get("finish_reason") or finish
            if task == "chat":
                d = choice.get("delta") or {}
                text, extra = d.get("content") or "", _extra(d)
            else:
                text, extra = choice.get("text") or "", None
            if text or extra:
                yield Delta(text=text, extra=extra)
    raise UpstreamError(f"model {model!r} ended its stream without [DONE]")


def _json(raw: bytes, model: str) -> dict[str, Any]:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamError(f"model {model!r} answered with invalid JSON") from None
    if not isinstance(obj, dict):
        raise UpstreamError(f"model {model!r} answered with unexpected JSON")
    return obj


async def _check(resp: httpx.Response, model: str) -> None:
    """Raise for a non-2xx upstream answer, keeping the caller's fault apart from the upstream's."""
    if resp.status_code < 300:
        return
    raw = await resp.aread()
    message = ""
    try:
        message = str(orjson.loads(raw)["error"]["message"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        pass
    log.warning("upstream answered %d for %r: %s", resp.status_code, model, message or raw[:200])
    if resp.status_code in (400, 422):
        raise InvalidRequest(f"model {model!r} rejected the request: {message or 'invalid request'}")
    if resp.status_code == 404:
        raise UpstreamUnavailable(f"model {model!r} is not available")
    if resp.status_code in (429, 503):
        raise UpstreamUnavailable(f"model {model!r} is overloaded")
    if resp.status_code == 504:
        raise UpstreamTimeout(f"model {model!r} did not answer in time")
    raise UpstreamError(f"model {model!r} failed upstream ({resp.status_code})")
