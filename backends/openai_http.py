"""OpenAI-compatible upstream backend (vLLM, Triton's OpenAI frontend, any such server).

One shared ``aiohttp.ClientSession`` per upstream: HTTP/1.1 keep-alive, ``trust_env=False`` so
a stray ``HTTP_PROXY`` cannot reroute traffic. Every request carries the W3C trace context
(``traceparent``) of the request being served. Streams are read as bytes arrive and each SSE
event is handed on at once; nothing is buffered beyond one event.

Why aiohttp and not httpx: on this path the client is most of the gateway's cost. Measured on
the 2-core CI machine against the same upstream (benches/RESULTS.md): httpx 2.4-2.9 ms of CPU
per request (httpcore checks every pooled connection on each request), httpx over the aiohttp
transport 0.8 ms, aiohttp 0.23-0.29 ms. The gateway's whole budget is 1 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from backends.base import Delta, Embeddings, Generation, Target, Usage
from gateway.errors import InvalidRequest, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from gateway.observability.tracing import backend_headers

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
    """A keep-alive connection pool to one OpenAI-compatible server. Build it inside the event loop."""

    def __init__(self, name: str, base_url: str, *, api_key: str | None, timeout_s: float,
                 connect_timeout_s: float, max_connections: int) -> None:  # fmt: skip
        self.name = name
        self._base = base_url.rstrip("/")
        self._headers = {"content-type": "application/json"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=timeout_s, connect=connect_timeout_s),
            trust_env=False,
            auto_decompress=True,
        )
        self._ready_timeout = aiohttp.ClientTimeout(total=connect_timeout_s)

    def _headers_now(self) -> dict[str, str]:
        """The fixed headers plus the W3C trace context of the request being served."""
        return {**self._headers, **backend_headers()}

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
        url = self._base + ("/chat/completions" if gen.task == "chat" else "/completions")
        content = orjson.dumps(self._body(target, gen))
        try:
            async with self._session.post(url, data=content, headers=self._headers_now()) as resp:
                await _check(resp, target.model)
                if gen.stream:
                    async for delta in _read_stream(resp, gen.task, target.model):
                        yield delta
                    return
                obj = _json(await resp.read(), target.model)
            choice = (obj.get("choices") or [{}])[0]
            if gen.task == "chat":
                message = choice.get("message") or {}
                yield Delta(text=message.get("content") or "", extra=_extra(message))
            else:
                yield Delta(text=choice.get("text") or "")
            yield Delta(finish_reason=choice.get("finish_reason") or "stop", usage=_usage(obj.get("usage")))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _translate(exc, self.name, target.model) from None

    async def embed(self, target: Target, inputs: list[str]) -> Embeddings:
        url = self._base + "/embeddings"
        content = orjson.dumps({"model": target.model, "input": inputs, "encoding_format": "float"})
        try:
            async with self._session.post(url, data=content, headers=self._headers_now()) as resp:
                await _check(resp, target.model)
                obj = _json(await resp.read(), target.model)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _translate(exc, self.name, target.model) from None
        data = sorted(obj.get("data") or [], key=lambda d: d.get("index", 0))
        if len(data) != len(inputs):
            raise UpstreamError(f"model {target.model!r} returned {len(data)} embeddings for {len(inputs)} inputs")
        usage = obj.get("usage") or {}
        return Embeddings([d["embedding"] for d in data], int(usage.get("prompt_tokens") or 0))

    async def ready(self, target: Target) -> bool:
        try:
            async with self._session.get(self._base + "/models", headers=self._headers_now(),
                                         timeout=self._ready_timeout) as resp:  # fmt: skip
                if resp.status != 200:
                    return False
                ids = {m.get("id") for m in orjson.loads(await resp.read()).get("data", [])}
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError, AttributeError):
            return False
        return target.model in ids

    async def load_version(self, target: Target) -> None:
        raise InvalidRequest(f"backend {self.name!r} is OpenAI-compatible: it has no model versions to pin",
                             param="version")  # fmt: skip

    async def aclose(self) -> None:
        await self._session.close()


def _translate(exc: BaseException, backend: str, model: str) -> UpstreamError:
    log.warning("upstream %s failed for %r: %r", backend, model, exc)
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return UpstreamTimeout(f"model {model!r} did not answer in time")
    if isinstance(exc, aiohttp.ClientConnectionError) and not isinstance(exc, aiohttp.ServerDisconnectedError):
        return UpstreamUnavailable(f"model {model!r} is not available")
    return UpstreamError(f"model {model!r} failed upstream")


async def _lines(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """Lines of the body as they arrive, whatever their length."""
    buf = b""
    async for chunk in resp.content.iter_any():
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            yield line
    if buf:
        yield buf


async def _read_stream(resp: aiohttp.ClientResponse, task: str, model: str) -> AsyncIterator[Delta]:
    finish: str | None = None
    usage: Usage | None = None
    async for line in _lines(resp):
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            yield Delta(finish_reason=finish or "stop", usage=usage)
            return
        obj = _json(data, model)
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


async def _check(resp: aiohttp.ClientResponse, model: str) -> None:
    """Raise for a non-2xx upstream answer, keeping the caller's fault apart from the upstream's."""
    if resp.status < 300:
        return
    raw = await resp.read()
    message = ""
    with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError):
        message = str(orjson.loads(raw)["error"]["message"])
    log.warning("upstream answered %d for %r: %s", resp.status, model, message or raw[:200])
    if resp.status in (400, 422):
        raise InvalidRequest(f"model {model!r} rejected the request: {message or 'invalid request'}")
    if resp.status == 404:
        raise UpstreamUnavailable(f"model {model!r} is not available")
    if resp.status in (429, 503):
        raise UpstreamUnavailable(f"model {model!r} is overloaded")
    if resp.status == 504:
        raise UpstreamTimeout(f"model {model!r} did not answer in time")
    raise UpstreamError(f"model {model!r} failed upstream ({resp.status})")
