"""Model version pins at run time (the rollback step of the incident runbook), against the real Triton.

The session's Triton serves version 1 of ``echo``; the ``echo-v7`` route is configured for a version 7 that does
not exist (a bad rollout). Pinning it to version 1 repairs it with no restart; a version Triton cannot load is
refused through its model-repository API and changes nothing.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from backends.base import Target
from backends.openai_http import OpenAIHTTPBackend
from gateway.cli import main
from gateway.errors import InvalidRequest
from ledger.store import open_store
from tests.conftest import create_app, in_process, make_settings, new_key

PROMPT = {"prompt": "a b", "max_tokens": 5}


def _backends(triton: Any) -> dict[str, Any]:
    """The test backends, with the token of the session Triton's model-repository API."""
    return {"triton": {"kind": "triton", "url": triton.grpc_url, "repository_token": triton.admin_token},
            "nowhere": {"kind": "triton", "url": "127.0.0.1:9", "timeout_s": 2}}  # fmt: skip


def _settings(triton: Any, tmp_path: Path, **extra: Any) -> Any:
    return make_settings(triton, tmp_path, backends=_backends(triton), **extra)


def _entries(settings: Any, kind: str) -> list[dict[str, Any]]:
    store = open_store(settings.ledger_store())
    try:
        return [e for log in store.logs() for e in (json.loads(b) for _, _, b in store.read(log)) if e["kind"] == kind]
    finally:
        store.close()


async def test_pin_repairs_a_bad_version_refuses_an_unloadable_one_and_survives_a_restart(
    triton: Any, tmp_path: Path
) -> None:
    settings = _settings(triton, tmp_path)
    admin = new_key(settings, "admin", owner="ops")
    async with in_process(create_app(settings), admin) as client:
        assert (await client.post("/v1/completions", json={"model": "echo-v7", **PROMPT})).status_code == 503
        r = await client.post("/admin/models/echo-v7/pin", json={"version": "1"})
        assert r.status_code == 200, r.text
        assert (r.json()["previous"], r.json()["version"], r.json()["how"]) == ("7", "1", "pin")
        r = await client.post("/v1/completions", json={"model": "echo-v7", **PROMPT})
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == "a b"
        r = await client.post("/admin/models/echo-v7/pin", json={"version": "9"})  # Triton cannot load it
        assert r.status_code == 409 and r.json()["error"]["code"] == "version_unavailable"
        assert "keeps version 1" in r.json()["error"]["message"]
        assert (await client.post("/v1/completions", json={"model": "echo-v7", **PROMPT})).status_code == 200
        for bad, status in (({"version": "latest"}, 400), ({"version": "1", "x": 1}, 400)):
            assert (await client.post("/admin/models/echo-v7/pin", json=bad)).status_code == status
        assert (await client.post("/admin/models/nope/pin", json={"version": "1"})).status_code == 404
        history = (await client.get("/admin/models/echo-v7/pins")).json()
        assert history["version"] == "1" and history["configured"] == "7" and len(history["history"]) == 1
    async with in_process(create_app(settings), admin) as client:  # a restart
        r = await client.post("/v1/completions", json={"model": "echo-v7", **PROMPT})
        assert r.status_code == 200  # the pin outlived the restart
    async with in_process(create_app(settings), new_key(settings, "user")) as client:
        assert (await client.post("/admin/models/echo-v7/pin", json={"version": "1"})).status_code == 403
    pinned = _entries(settings, "model.pinned")
    assert [(e["actor"].startswith("apikey:"), e["data"]["from"], e["data"]["to"]) for e in pinned] == [
        (True, "7", "1")]  # fmt: skip
    refused = _entries(settings, "model.pin_refused")
    assert len(refused) == 1 and refused[0]["data"]["version"] == "9"


async def test_rollback_returns_to_the_version_before_the_last_change(triton: Any, tmp_path: Path) -> None:
    settings = _settings(triton, tmp_path)
    async with in_process(create_app(settings), new_key(settings, "admin")) as client:
        r = await client.post("/admin/models/echo/rollback")
        assert r.status_code == 409 and r.json()["error"]["code"] == "nothing_to_roll_back"
        assert (await client.post("/admin/models/echo/pin", json={"version": "1"})).json()["previous"] == ""
        r = await client.post("/admin/models/echo/rollback")
        assert r.status_code == 200 and (r.json()["previous"], r.json()["version"]) == ("1", "")
        assert (await client.post("/v1/completions", json={"model": "echo", **PROMPT})).status_code == 200


async def test_a_pin_reaches_the_other_replica(triton: Any, tmp_path: Path) -> None:
    """Two apps on one store (replicas): a pin set through one is served by the other within refresh_s."""
    settings = _settings(triton, tmp_path, pins={"refresh_s": 0.1})
    a, b = create_app(settings), create_app(settings)
    admin = new_key(settings, "admin")
    async with in_process(a, admin) as ca, in_process(b, admin) as cb:
        assert (await cb.post("/v1/completions", json={"model": "echo-v7", **PROMPT})).status_code == 503
        assert (await ca.post("/admin/models/echo-v7/pin", json={"version": "1"})).status_code == 200
        for _ in range(100):
            if b.state.gateway.router.resolve("echo-v7", "llm").target.version == "1":
                break
            await asyncio.sleep(0.05)
        assert (await cb.post("/v1/completions", json={"model": "echo-v7", **PROMPT})).status_code == 200


def test_pin_and_rollback_commands(live: Any, triton: Any) -> None:
    server = live(backends=_backends(triton))
    common = ["--url", server.url, "--ca-file", str(server.ca_file), "--api-key", server.api_key]
    done = CliRunner().invoke(main, ["models", "pin", *common, "echo-v7", "1"])
    assert done.exit_code == 0, done.output
    assert "echo-v7: version 7 -> 1 (pin by apikey:" in done.output
    done = CliRunner().invoke(main, ["models", "pin", *common, "echo-v7", "9"])
    assert done.exit_code == 1 and "409: version 9 of model 'echo' cannot be loaded" in done.output
    done = CliRunner().invoke(main, ["models", "rollback", *common, "echo"])
    assert done.exit_code == 1 and "409: model 'echo' was never pinned" in done.output


async def test_openai_compatible_backends_have_no_versions() -> None:
    backend = OpenAIHTTPBackend("up", "http://127.0.0.1:9/v1", api_key=None, timeout_s=1, connect_timeout_s=1,
                                max_connections=1)  # fmt: skip
    try:
        with pytest.raises(InvalidRequest, match="no model versions to pin"):
            await backend.load_version(Target("m", version="2"))
    finally:
        await backend.aclose()
