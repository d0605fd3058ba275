"""The ``gateway`` command, including ``gateway serve`` end to end as the README runs it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from backends.local.launcher import free_port
from gateway.cli import main
from gateway.settings import Settings
from ledger.store import open_store

ROOT = Path(__file__).resolve().parent.parent


def test_certs_command(tmp_path: Path) -> None:
    """``gateway certs`` makes the dev CA and server certificate and says where they are."""
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state")}))
    result = CliRunner().invoke(main, ["certs", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "state" / "tls" / "ca.pem") in result.output
    assert (tmp_path / "state" / "tls" / "server.pem").exists()


def test_bad_config_exits_with_the_reason(tmp_path: Path) -> None:
    """A bad config file stops the command with file, key and reason, and no traceback."""
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text("server:\n  port: -1\n")
    result = CliRunner().invoke(main, ["models", "--config", str(cfg)])
    assert result.exit_code == 1
    assert f"{cfg}:2: server.port" in result.output and "Traceback" not in result.output


@pytest.mark.triton
def test_models_command(triton, tmp_path: Path) -> None:
    """``gateway models`` lists routes with their backend health."""
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(yaml.safe_dump({
        "local_triton": {"enabled": False},
        "backends": {"t": {"kind": "triton", "url": triton.grpc_url},
                     "off": {"kind": "triton", "url": "127.0.0.1:9", "connect_timeout_s": 1}},
        "models": [{"name": "echo", "backend": "t"}, {"name": "lost", "backend": "off", "fallback": "echo"}],
    }))  # fmt: skip
    result = CliRunner().invoke(main, ["models", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines()[1:]}
    assert lines["echo"].endswith("ready") and lines["lost"].endswith("NOT READY")


def _get(url: str, ctx: ssl.SSLContext, body: dict | None = None, key: str = "") -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json",
                                                          "authorization": f"Bearer {key}"})  # fmt: skip
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.triton
def test_serve_with_embedded_triton(tmp_path: Path) -> None:
    """``gateway serve`` starts its own Triton and chain, serves real SmolLM2 output over TLS, anchors its ledger,
    and stops both cleanly; afterwards ``gateway ledger verify`` checks the anchors on the saved chain."""
    port, triton_port, chain_port = free_port(), free_port(), free_port()
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"),
        "server": {"host": "127.0.0.1", "port": port},
        "local_triton": {"grpc_port": triton_port, "http_port": free_port(), "metrics_port": free_port()},
        "policy": {"dir": str(ROOT / "policies")},
        "ledger": {"checkpoint_interval_s": 0.5, "chain": {"embedded_port": chain_port, "interval_s": 0.5}},
    }))  # fmt: skip
    created = CliRunner().invoke(main, ["keys", "create", "--config", str(cfg), "--owner", "readme", "--role", "user"])
    assert created.exit_code == 0, created.output
    key = next(line for line in created.output.splitlines() if line.startswith("gk_"))
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(cfg)],
                                stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))  # fmt: skip
    try:
        ca = tmp_path / "state" / "tls" / "ca.pem"
        deadline = time.monotonic() + 240
        status = 0
        while status != 200:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "gateway not ready in time"
            if ca.exists():
                with contextlib.suppress(OSError):
                    status, _ = _get(f"https://localhost:{port}/readyz", ssl.create_default_context(cafile=ca))
            time.sleep(0.25)
        ctx = ssl.create_default_context(cafile=ca)
        status, body = _get(f"https://localhost:{port}/v1/chat/completions", ctx, {
            "model": "smollm2-135m-instruct", "max_tokens": 16, "temperature": 0,
            "messages": [{"role": "user", "content": "Name the capital of France."}]}, key)  # fmt: skip
        assert status == 200, body
        assert "Paris" in body["choices"][0]["message"]["content"]
        settings = Settings.load(cfg)
        while True:  # the embedded chain anchors the ledger's checkpoints
            assert time.monotonic() < deadline + 60, "nothing anchored in time"
            _, ready = _get(f"https://localhost:{port}/readyz", ctx)
            store = open_store(settings.ledger_store())
            try:
                anchors = store.anchors(settings.ledger.origin)
            finally:
                store.close()
            if ready["ledger"]["anchoring"]["ok"] and anchors:
                break
            time.sleep(0.25)
        if shutil.which("curl"):
            out = subprocess.run(["curl", "-sS", "--cacert", str(ca), "-H", f"Authorization: Bearer {key}",
                                  f"https://localhost:{port}/v1/models"],
                                 capture_output=True, text=True, timeout=30, check=True).stdout  # fmt: skip
            assert {m["id"] for m in json.loads(out)["data"]} == {"smollm2-135m-instruct", "e5-small"}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, log.read_text()[-3000:]
    for gone in (triton_port, chain_port):  # the embedded Triton and chain went down with the gateway
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", gone)) != 0
    verified = CliRunner().invoke(main, ["ledger", "verify", "--config", str(cfg)])
    assert verified.exit_code == 0, verified.output
    assert re.search(r" [1-9][0-9]* anchors checked on the chain", verified.output), verified.output


def test_serve_refuses_a_bad_policy(tmp_path: Path) -> None:
    """``gateway serve`` with a broken policy folder stops at once with the file, line and reason."""
    import shutil

    folder = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", folder)
    with (folder / "policy.csv").open("a") as f:
        f.write("p, role:user, model:x, infr, allow\n")
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(yaml.safe_dump({"state_dir": str(tmp_path), "policy": {"dir": str(folder)},
                                   "local_triton": {"enabled": False},
                                   "backends": {"t": {"kind": "triton", "url": "127.0.0.1:9"}},
                                   "models": [{"name": "m", "backend": "t"}]}))  # fmt: skip
    result = CliRunner().invoke(main, ["serve", "--config", str(cfg)])
    assert result.exit_code == 1
    assert "policy.csv:" in result.output and "unknown action 'infr'" in result.output
    assert "Traceback" not in result.output
