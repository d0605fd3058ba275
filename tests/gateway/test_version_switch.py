"""A live switch between two versions of one model (issue 9), against a real ``tritonserver``.

PyTriton cannot serve two versions of one model name, so this module runs the server bundled in its wheel
over a file model repository (``tests.tritonserver``): ``versioned`` has versions 1 and 2, each answering
with its own version, and only version 1 is loaded at start. Pinning the route to version 2 makes the
gateway load it through Triton's model-repository API and switch, with no restart and while requests keep
being answered; a rollback returns to version 1.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger.store import open_store
from tests.conftest import create_app, in_process, make_settings, new_key
from tests.tritonserver import MISSING, RepositoryTriton, write_versioned_model

pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"no bundled tritonserver: {MISSING}")

MODEL = "versioned"
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RepositoryTriton]:
    """The bundled tritonserver with ``versioned`` at version 1 loaded (2 on disk), once for the module."""
    work = tmp_path_factory.mktemp("tritonserver")
    write_versioned_model(work / "repository", MODEL, versions=(1, 2), loaded=(1,))
    triton = RepositoryTriton.start(work / "repository", work, (MODEL,), log_file=work / "triton.log")
    try:
        triton.wait_ready((MODEL,), timeout_s=120)
        yield triton
    finally:
        triton.stop()


def _settings(server: RepositoryTriton, tmp_path: Path) -> Any:
    return make_settings(server, tmp_path,  # make_settings reads only its grpc_url
                         backends={"repo": {"kind": "triton", "url": server.grpc_url, "timeout_s": 60}},
                         models=[{"name": MODEL, "backend": "repo", "version": "1"}])  # fmt: skip


async def _answer(client: httpx.AsyncClient, content: str = "hello there") -> tuple[int, str]:
    r = await client.post(CHAT, json={"model": MODEL, "messages": [{"role": "user", "content": content}],
                                      "max_tokens": 16})  # fmt: skip
    return r.status_code, r.json()["choices"][0]["message"]["content"] if r.status_code == 200 else r.text


def _pinned(settings: Any) -> list[tuple[str, str, str]]:
    store = open_store(settings.ledger_store())
    try:
        entries = [json.loads(b) for log in store.logs() for _, _, b in store.read(log)]
    finally:
        store.close()
    return [(e["data"]["from"], e["data"]["to"], e["data"]["how"]) for e in entries if e["kind"] == "model.pinned"]


async def _switch_under_load(client: httpx.AsyncClient, path: str, body: dict[str, str] | None) -> tuple[
        httpx.Response, list[tuple[int, str]]]:  # fmt: skip
    """Call the admin ``path`` while three clients keep asking the model; their answers until it returned."""
    flowing, done = asyncio.Event(), asyncio.Event()
    answers: list[tuple[int, str]] = []

    async def ask() -> None:
        while not done.is_set():
            answers.append(await _answer(client))
            if len(answers) >= 3:
                flowing.set()

    askers = [asyncio.create_task(ask()) for _ in range(3)]
    try:
        await asyncio.wait_for(flowing.wait(), 60)  # traffic flows before the switch starts
        r = await client.post(path, json=body) if body is not None else await client.post(path)
    finally:
        done.set()
        await asyncio.gather(*askers)
    return r, answers


async def test_pin_switches_versions_live_and_rollback_returns(server: RepositoryTriton, tmp_path: Path) -> None:
    """Pin 1 -> 2 and rollback 2 -> 1 change the answering version live; no request fails meanwhile."""
    settings = _settings(server, tmp_path)
    pid = server.process.pid
    async with in_process(create_app(settings), new_key(settings, "admin", owner="ops")) as client:
        status, text = await _answer(client)
        assert status == 200 and text.startswith("v1: ") and "hello there" in text

        r, during = await _switch_under_load(client, f"/admin/models/{MODEL}/pin", {"version": "2"})
        assert r.status_code == 200, r.text
        assert (r.json()["previous"], r.json()["version"], r.json()["how"]) == ("1", "2", "pin")
        assert len(during) >= 3 and all(s == 200 for s, _ in during), during
        assert {t[:4] for _, t in during} <= {"v1: ", "v2: "}
        for _ in range(3):
            status, text = await _answer(client)
            assert status == 200 and text.startswith("v2: ")

        r, during = await _switch_under_load(client, f"/admin/models/{MODEL}/rollback", None)
        assert r.status_code == 200, r.text
        assert (r.json()["previous"], r.json()["version"], r.json()["how"]) == ("2", "1", "rollback")
        assert all(s == 200 for s, _ in during) and {t[:4] for _, t in during} <= {"v1: ", "v2: "}, during
        status, text = await _answer(client)
        assert status == 200 and text.startswith("v1: ")

        history = (await client.get(f"/admin/models/{MODEL}/pins")).json()
        assert (history["version"], history["configured"], len(history["history"])) == ("1", "1", 2)
    assert server.process.poll() is None and server.process.pid == pid  # the same server throughout
    assert _pinned(settings) == [("1", "2", "pin"), ("2", "1", "rollback")]


async def test_a_version_missing_from_the_repository_is_refused(server: RepositoryTriton, tmp_path: Path) -> None:
    """Version 3 is not on disk: Triton's load fails, the pin is refused with 409 and version 1 keeps serving."""
    settings = _settings(server, tmp_path)
    async with in_process(create_app(settings), new_key(settings, "admin")) as client:
        r = await client.post(f"/admin/models/{MODEL}/pin", json={"version": "3"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "version_unavailable", r.text
        status, text = await _answer(client)
        assert status == 200 and text.startswith("v1: ")
