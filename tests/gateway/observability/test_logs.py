"""Structured logs: JSON lines with the request id, and no personal data in any of them."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from backends.local.launcher import free_port
from gateway.observability.logs import REQUEST_ID, JSONFormatter, configure
from gateway.settings import LoggingSettings, Settings
from tests.conftest import POLICIES, new_key

NAME, EMAIL, PHONE = "John Smith", "john.smith@example.com", "212-555-0187"
SSN, CARD, IBAN = "536-22-8431", "4111 1111 1111 1111", "DE89 3704 0044 0532 0130 00"
PII = (NAME, EMAIL, PHONE, SSN, CARD, IBAN)
CHAT = "/v1/chat/completions"


def _forms(value: str) -> set[str]:
    """A value as it may appear: as written, lower-cased, its digits alone (a name: each part of it)."""
    digits = "".join(c for c in value if c.isdigit())
    parts = set(value.split()) if value == NAME else set()
    return {value, value.lower(), *parts} | ({digits} if len(digits) >= 9 else set())


def _chat(model: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


@pytest.fixture
def served(triton: Any, tmp_path: Path) -> Iterator[tuple[str, Path, Settings, Path]]:
    """``gateway serve`` in a child process in front of the session's Triton; its stderr goes to a file."""
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"),
        "server": {"host": "127.0.0.1", "port": port},
        "local_triton": {"enabled": False},
        "backends": {"triton": {"kind": "triton", "url": triton.grpc_url,
                                "metrics_url": f"http://127.0.0.1:{triton.metrics_port}/metrics"}},
        "models": [{"name": "echo", "backend": "triton"}, {"name": "counter", "backend": "triton"},
                   {"name": "broken", "backend": "triton", "fallback": "counter"},
                   {"name": "broken-alone", "backend": "triton", "model": "broken"},
                   {"name": "e5-small", "backend": "triton", "kind": "embedding"}],
        "policy": {"dir": str(POLICIES), "watch": False},
        "ledger": {"chain": {"enabled": False}},
        "pii": {"workers": 1},
        "alerts": {"interval_s": 0.5},
    }))  # fmt: skip
    settings = Settings.load(config)
    stderr = tmp_path / "stderr.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    with stderr.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(config)],
                                stdout=subprocess.DEVNULL, stderr=err, env=env)  # fmt: skip
    try:
        ca = tmp_path / "state" / "tls" / "ca.pem"
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, stderr.read_text()[-3000:]
            assert time.monotonic() < deadline, "gateway serve did not start in time"
            if ca.exists():
                try:
                    ready = httpx.get(f"https://127.0.0.1:{port}/readyz", verify=ssl.create_default_context(cafile=ca),
                                      timeout=5)  # fmt: skip
                    if ready.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
            time.sleep(0.25)
        yield f"https://127.0.0.1:{port}", ca, settings, stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()


async def test_serve_logs_json_lines_with_request_ids_and_no_pii(served: tuple[str, Path, Settings, Path]) -> None:
    """Requests full of personal data, through success and every error path, leave none of it in the logs of
    ``gateway serve``; every line is a JSON object, and request-path lines name their request."""
    url, ca, settings, stderr = served
    admin, user = new_key(settings, "admin"), new_key(settings, "user")
    text = f"I am {NAME}, mail me at {EMAIL} or call {PHONE}."
    rids: set[str] = set()
    async with httpx.AsyncClient(base_url=url, verify=ssl.create_default_context(cafile=ca), timeout=60,
                                 headers={"authorization": f"Bearer {admin}"}) as c:  # fmt: skip

        async def call(method: str, path: str, status: int, **kwargs: Any) -> httpx.Response:
            r = await c.request(method, path, **kwargs)
            assert r.status_code == status, r.text
            if "x-request-id" in r.headers:
                rids.add(r.headers["x-request-id"])
            return r

        await call("POST", CHAT, 200, json=_chat("echo", text))
        await call("POST", CHAT, 200, json=_chat("echo", text, stream=True))
        fell_back = await call("POST", CHAT, 200, json=_chat("broken", text))  # a fallback: logged
        assert fell_back.headers["x-gateway-fallback"] == "true"
        await call("POST", CHAT, 502, json=_chat("broken-alone", text))  # an upstream error: logged
        await call("POST", CHAT, 403, json=_chat("echo", f"{text} My SSN is {SSN}."))
        await call("POST", CHAT, 403, json=_chat("echo", f"{NAME}'s card: {CARD}"))
        await call(
            "POST",
            CHAT,
            400,
            content=f'{{"model": "echo", "messages": [{{"content": "{EMAIL} {IBAN}"',
            headers={"content-type": "application/json"},
        )
        await call("POST", CHAT, 400, json={"model": "echo", "messages": f"{NAME} {EMAIL}"})
        await call("POST", "/v1/embeddings", 200, json={"model": "e5-small", "input": [text, IBAN]})
        await call("POST", CHAT, 403, json=_chat("echo", text), headers={"authorization": f"Bearer {user}"})
        await call("POST", CHAT, 401, json=_chat("echo", text), headers={"authorization": f"Bearer {EMAIL}"})
        await call("GET", f"/v1/{EMAIL}", 404)
        await call("GET", f"/v1/models/{NAME}", 404)
    assert len(rids) == 13
    lines = stderr.read_text().splitlines()
    assert lines, "gateway serve logged nothing"
    records = []
    for line in lines:
        record = json.loads(line)  # every line is one JSON object
        assert {"ts", "level", "logger", "message"} <= set(record), line
        records.append(record)
    for value in PII:
        for form in _forms(value):
            assert not [line for line in lines if form in line], f"{form!r} is in the logs"
    in_request = [r for r in records if r["logger"] in ("gateway.routing", "backends.triton")]
    assert len(in_request) >= 2, "the fallback and the upstream error are logged"
    assert all(r.get("request_id") in rids for r in in_request), in_request
    assert {r["request_id"] for r in records if "request_id" in r} <= rids


def test_json_formatter_fields() -> None:
    """A record becomes one JSON line: time, level, logger, message, the request id in context, extras, exc."""
    formatter = JSONFormatter()
    record = logging.LogRecord("gateway.x", logging.WARNING, __file__, 1, "model %r failed", ("m",), None)
    record.event = "alert.fired"
    token = REQUEST_ID.set("abc123")
    try:
        out = json.loads(formatter.format(record))
    finally:
        REQUEST_ID.reset(token)
    assert out["level"] == "WARNING" and out["logger"] == "gateway.x" and out["message"] == "model 'm' failed"
    assert out["request_id"] == "abc123" and out["event"] == "alert.fired" and out["ts"].endswith("+00:00")
    try:
        raise ValueError("boom")
    except ValueError:
        err = logging.LogRecord("g", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    line = formatter.format(err)
    assert "\n" not in line and "request_id" not in json.loads(line) and "ValueError: boom" in json.loads(line)["exc"]


def test_configure_sends_every_logger_to_stderr_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """configure() leaves one JSON handler on the root logger, and uvicorn's loggers propagate to it."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    uvicorn = logging.getLogger("uvicorn.error")
    saved_uvicorn = (list(uvicorn.handlers), uvicorn.propagate)
    uvicorn.addHandler(logging.StreamHandler(io.StringIO()))
    uvicorn.propagate = False
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    try:
        configure(LoggingSettings(level="INFO"))
        uvicorn.info("Started server process")
        logging.getLogger("httpx").info("HTTP Request: GET ...")  # below httpx's WARNING: dropped
        logging.getLogger("gateway.test").debug("not at INFO")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        uvicorn.handlers[:], uvicorn.propagate = saved_uvicorn
    lines = buffer.getvalue().splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["Started server process"]
