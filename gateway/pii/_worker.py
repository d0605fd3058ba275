"""One analyzer worker process: ``python -m gateway.pii._worker PROFILE [FAULT]``.

It loads the profile's analyzer once, warms it with a dummy call, and then answers requests
on stdin/stdout, one at a time. Each message is a 4-byte big-endian length and a JSON body:

    -> worker  {"texts": [...], "entities": [...], "threshold": 0.5, "allow": [...]}
    <- worker  {"ok": [[[entity, start, end, score], ...], ...]}  or  {"error": "ExceptionType"}

The first message the worker sends is ``{"ready": [supported entities]}`` or ``{"error": ...}``.
Errors carry the exception type only: a message could quote the analyzed text.

FAULT is a test hook: with ``raise``, ``hang`` or ``crash`` the worker raises, sleeps forever,
or exits abruptly on any text containing ``FAULT_TRIGGER``; with ``load`` it fails at start.
"""

from __future__ import annotations

import os
import struct
import sys
import time
from typing import Any, BinaryIO

import orjson

FAULT_TRIGGER = "\x00pii-fault\x00"
_WARM_TEXT = "Call John Smith at 212-736-5000 or john@example.com, card 4111 1111 1111 1111, SSN 536-22-8431."
_HEADER = struct.Struct(">I")


def _read(stream: BinaryIO) -> Any:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError
    (size,) = _HEADER.unpack(header)
    return orjson.loads(stream.read(size))


def _write(stream: BinaryIO, message: object) -> None:
    body = orjson.dumps(message)
    stream.write(_HEADER.pack(len(body)) + body)
    stream.flush()


def main(argv: list[str]) -> int:
    profile, fault = argv[0], (argv[1] if len(argv) > 1 else None)
    # The protocol owns the original stdout; anything a library prints goes to stderr instead.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = sys.stdin.buffer
    # Analysis is bulk CPU work: when cores are short, the gateway's event loop (which waits on
    # this worker) must win the CPU, or every request on it stalls for a scheduler time slice.
    os.nice(10)

    from gateway.pii.engine import analyze_texts, build_analyzer, offline_environment

    offline_environment()
    try:
        if fault == "load":
            raise RuntimeError("fault injected at load")
        analyzer = build_analyzer(profile)  # type: ignore[arg-type]  # validated by the pool
        analyze_texts(analyzer, [_WARM_TEXT], analyzer.get_supported_entities(), 0.0, ())
    except Exception as exc:
        _write(out, {"error": f"{type(exc).__name__}: {exc}"})
        return 1
    _write(out, {"ready": sorted(set(analyzer.get_supported_entities()))})

    while True:
        try:
            req = _read(inp)
        except EOFError:
            return 0
        try:
            if fault and any(FAULT_TRIGGER in t for t in req["texts"]):
                if fault == "hang":
                    time.sleep(3600)
                elif fault == "crash":
                    os._exit(70)
                raise RuntimeError("fault injected")
            found = analyze_texts(analyzer, req["texts"], req["entities"], req["threshold"], req["allow"])
            reply: dict[str, object] = {"ok": [[[f.entity, f.start, f.end, f.score] for f in fs] for fs in found]}
        except Exception as exc:
            reply = {"error": type(exc).__name__}
        _write(out, reply)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
