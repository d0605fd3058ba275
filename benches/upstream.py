"""A fixed-answer OpenAI-compatible upstream, fast enough never to be the bottleneck.

It serves ``POST /v1/chat/completions`` (a whole ``chat.completion``, or with ``"stream": true``
an SSE stream in chunked transfer encoding: a role chunk, ``chunks`` content chunks, a finish
chunk, a usage chunk, then ``data: [DONE]``) and ``GET /v1/models`` (one model, ``bench``).

Every response is precomputed at start; a request costs one header scan, one ``Content-Length``
body read and, for chat, one byte search for the stream flag. HTTP/1.1 keep-alive and pipelining
are supported; request bodies in chunked transfer encoding are not (answered 411, then closed).

Import it (``await start(port=0)`` returns the server and its port) or run it::

    python -m benches.upstream --port 8000 [--chunks 16]

Run as a program it prints ``PORT <n>`` on stdout once listening, for a parent process to read.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
from dataclasses import dataclass

MODEL = "bench"
PROMPT_TOKENS = 256
"""The prompt_tokens every answer reports; the upstream does not tokenize."""
TOKEN = "tok "
"""The text of one streamed content chunk; the whole answer is ``TOKEN * chunks``."""
MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024
_STREAM_FLAG = re.compile(rb'"stream"\s*:\s*true')


def _json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _response(status: str, ctype: bytes, body: bytes, *, close: bool = False) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: ".encode() + ctype + b"\r\ncontent-length: "
        + str(len(body)).encode() + (b"\r\nconnection: close" if close else b"") + b"\r\n\r\n"
    )  # fmt: skip
    return head + body


def _error(status: str, message: str, *, close: bool = False) -> bytes:
    """An OpenAI error body; ``close`` for framing errors, after which the connection is closed."""
    body = _json({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}})
    return _response(status, b"application/json", body, close=close)


def _chunked(events: list[bytes]) -> bytes:
    """Each SSE event as one chunk of chunked transfer encoding, then the last (empty) chunk."""
    out = [b"%x\r\n%s\r\n" % (len(e), e) for e in events]
    return b"".join(out) + b"0\r\n\r\n"


@dataclass(frozen=True)
class Answers:
    """The precomputed response bytes for one configuration."""

    chat: bytes
    stream: bytes
    models: bytes
    text: str
    completion_tokens: int

    @classmethod
    def build(cls, chunks: int = 16) -> Answers:
        text = TOKEN * chunks
        usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": chunks, "total_tokens": PROMPT_TOKENS + chunks}
        message = {"role": "assistant", "content": text}
        chat = {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": MODEL,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
            "usage": usage,
        }
        head = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": MODEL}

        def chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return b"data: " + _json({**head, "choices": [choice]}) + b"\n\n"

        events = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": TOKEN}) for _ in range(chunks)]
        events.append(chunk({}, "stop"))
        events.append(b"data: " + _json({**head, "choices": [], "usage": usage}) + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        stream_head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        models = {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 1_700_000_000,
                                              "owned_by": "bench"}]}  # fmt: skip
        return cls(
            chat=_response("200 OK", b"application/json", _json(chat)),
            stream=stream_head + _chunked(events),
            models=_response("200 OK", b"application/json", _json(models)),
            text=text,
            completion_tokens=chunks,
        )


class _Upstream(asyncio.Protocol):
    """One client connection: parse requests from the buffer, answer each with precomputed bytes."""

    def __init__(self, answers: Answers) -> None:
        self._answers = answers
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, so no isinstance check.
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buf += data
        # Bounded: each pass consumes one whole request or returns for more bytes.
        while self._transport is not None and self._buf:
            if not self._one():
                return

    def _one(self) -> bool:
        """Answer the first complete request in the buffer; False when more bytes are needed."""
        buf, transport = self._buf, self._transport
        assert transport is not None
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEADER_BYTES:
                self._finish(_error("431 Request Header Fields Too Large", "headers too large", close=True))
            return False
        head = bytes(buf[:end]).split(b"\r\n")
        parts = head[0].split(b" ")
        if len(parts) != 3:
            self._finish(_error("400 Bad Request", "malformed request line", close=True))
            return False
        method, target, version = parts
        length, close = 0, version == b"HTTP/1.0"
        for line in head[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = -1
            elif name == b"transfer-encoding":
                self._finish(_error("411 Length Required", "chunked request bodies are not supported", close=True))
                return False
            elif name == b"connection":
                value = value.strip().lower()
                close = value == b"close" or (close and value != b"keep-alive")
        if not 0 <= length <= MAX_BODY_BYTES:
            self._finish(_error("413 Content Too Large", "bad or too large Content-Length", close=True))
            return False
        start = end + 4
        if len(buf) < start + length:
            return False
        body = bytes(buf[start : start + length])
        del buf[: start + length]
        answer = self._route(method, target.split(b"?", 1)[0], body)
        if close:
            self._finish(answer)
            return False
        transport.write(answer)
        return True

    def _route(self, method: bytes, path: bytes, body: bytes) -> bytes:
        if path == b"/v1/chat/completions":
            if method != b"POST":
                return _error("405 Method Not Allowed", "use POST")
            return self._answers.stream if _STREAM_FLAG.search(body) else self._answers.chat
        if path == b"/v1/models":
            if method != b"GET":
                return _error("405 Method Not Allowed", "use GET")
            return self._answers.models
        return _error("404 Not Found", f"no route {path.decode(errors='replace')}")

    def _finish(self, answer: bytes) -> None:
        assert self._transport is not None
        self._transport.write(answer)
        self._transport.close()
        self._transport = None
        self._buf.clear()


async def start(port: int = 0, host: str = "127.0.0.1", *, chunks: int = 16) -> tuple[asyncio.Server, int]:
    """Listen on ``host:port`` (0: any free port); returns the server and the bound port.

    Close it with ``server.close(); await server.wait_closed()``.
    """
    answers = Answers.build(chunks)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Upstream(answers), host, port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    return server, int(bound)


async def _serve(host: str, port: int, chunks: int) -> None:
    server, bound = await start(port, host, chunks=chunks)
    print(f"PORT {bound}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benches.upstream", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed as 'PORT <n>')")
    parser.add_argument("--chunks", type=int, default=16, help="content chunks per streamed answer")
    parser.add_argument("--no-uvloop", action="store_true", help="use the stdlib event loop")
    args = parser.parse_args(argv)
    runner = asyncio.run
    if not args.no_uvloop:
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            pass
    with contextlib.suppress(KeyboardInterrupt):
        runner(_serve(args.host, args.port, args.chunks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
