"""Decision records on the request path, through the real Triton server: what is recorded, where the attribute
comes from, and what a failing store does under each ``on_record_error`` (the store is really broken: its
table is dropped under the running gateway)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from aiohttp import web

from backends.local.launcher import LocalTriton
from gateway.fairness.store import FairnessStore, fairness_url
from gateway.settings import Settings
from ledger.store import open_store
from tests.conftest import POLICIES, create_app, in_process, make_settings, new_key, wait_for

pytestmark = pytest.mark.triton

CHAT = "/v1/chat/completions"
COMPLETE = "/v1/completions"
STRICT: dict[str, Any] = {  # the counter model streams "tok0 tok1 ...": an unreadable decision, still recorded
    "kind": "outcome", "name": "counter-decisions", "description": "fails closed", "models": ["counter"],
    "prediction": {"kind": "yes_no"}, "attribute": {"header": "X-Audit-Group", "groups": ["a", "b"]},
}  # fmt: skip
LENIENT: dict[str, Any] = {  # echo answers with the prompt's words: "yes ..." reads as 1
    "kind": "outcome", "name": "echo-decisions", "description": "logs", "models": ["echo"],
    "prediction": {"kind": "yes_no"}, "on_record_error": "log", "retention_days": 30, "window": "7d",
    "attribute": {"name": "segment", "field": "metadata.segment", "groups": ["x", "y"], "required": False},
}  # fmt: skip


@pytest.fixture
def settings(triton: LocalTriton, tmp_path: Path) -> Settings:
    folder = tmp_path / "policies"
    shutil.copytree(POLICIES, folder)
    for name, audit in (("strict", STRICT), ("lenient", LENIENT)):
        (folder / "fairness" / f"{name}.yaml").write_text(yaml.safe_dump(audit))
    return make_settings(triton, tmp_path, policy={"dir": folder, "watch": False}, fairness={"scheduler": False})


def rows(settings: Settings) -> dict[str, tuple[Any, ...]]:
    store = FairnessStore(fairness_url(settings.ledger_store()))
    try:
        with store.db.reading():
            found = store.db.execute("SELECT request_id, audit, model, version, prediction, grp,"
                                     " expires_at - decided_at FROM fairness_decisions").fetchall()  # fmt: skip
    finally:
        store.close()
    return {str(r[0]): tuple(r[1:]) for r in found}


def break_store(settings: Settings) -> None:
    """Drop the decisions table under the running gateway: every later write fails for real."""
    store = FairnessStore(fairness_url(settings.ledger_store()))
    try:
        with store.db.transaction():
            store.db.execute("DROP TABLE fairness_decisions")
    finally:
        store.close()


def entries(settings: Settings, kind: str) -> list[dict[str, Any]]:
    store = open_store(settings.ledger_store())
    try:
        return [e for _, _, b in store.read(settings.ledger.origin) if (e := orjson.loads(b))["kind"] == kind]
    finally:
        store.close()


def chat(model: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 4, **extra}


def complete(text: str, **extra: Any) -> dict[str, Any]:
    """A completion of echo, which answers with the prompt's first words."""
    return {"model": "echo", "prompt": text, "max_tokens": 4, **extra}


async def test_decisions_are_recorded_with_their_attribute(settings: Settings) -> None:
    """A header attribute and a body field attribute are recorded with the served model, its version, the decision
    read from the answer and the retention; an optional attribute that is missing or unknown leaves the answer
    served and unrecorded (counted). Other models are not recorded."""
    app = create_app(settings)
    async with in_process(app, new_key(settings, "admin")) as c:
        counted = await c.post(CHAT, json=chat("counter", "x"), headers={"X-Audit-Group": "b"})
        yes = await c.post(COMPLETE, json=complete("yes I agree", metadata={"segment": "y", "tag": "t"}))
        no = await c.post(COMPLETE, json=complete("no thanks", metadata={"segment": "x"}))
        unknown = await c.post(COMPLETE, json=complete("yes", metadata={"segment": "z"}))
        bare = await c.post(COMPLETE, json=complete("yes"))
        other = await c.post(CHAT, json=chat("counter-spare", "x"))
        assert [r.status_code for r in (counted, yes, no, unknown, bare, other)] == [200] * 6
        metrics = (await c.get("/metrics")).text
    got = rows(settings)
    rid = {name: r.headers["x-request-id"] for name, r in (("counted", counted), ("yes", yes), ("no", no))}
    assert got == {
        rid["counted"]: ("counter-decisions", "counter", "", None, "b", 180 * 86400.0),
        rid["yes"]: ("echo-decisions", "echo", "", 1, "y", 30 * 86400.0),
        rid["no"]: ("echo-decisions", "echo", "", 0, "x", 30 * 86400.0),
    }
    assert 'gateway_fairness_decisions_total{model="echo",result="no_attribute",version=""} 2.0' in metrics
    assert 'gateway_fairness_decisions_total{model="echo",result="recorded",version=""} 2.0' in metrics


async def test_fail_closed_withholds_the_answer_and_log_serves_it(settings: Settings) -> None:
    """With the store broken: a fail_closed decision is a 503 (non-streamed) or a final error event (streamed),
    and its request.completed says so; a log decision is served. Every lost record is a fairness.unrecorded
    ledger entry naming the request, and counted."""
    app = create_app(settings)
    async with in_process(app, new_key(settings, "admin")) as c:
        before = await c.post(CHAT, json=chat("counter", "x"), headers={"X-Audit-Group": "a"})
        assert before.status_code == 200
        break_store(settings)
        closed = await c.post(CHAT, json=chat("counter", "x"), headers={"X-Audit-Group": "a"})
        streamed = await c.post(CHAT, json=chat("counter", "x", stream=True), headers={"X-Audit-Group": "a"})
        logged = await c.post(COMPLETE, json=complete("yes", metadata={"segment": "x"}))
        plain = await c.post(CHAT, json=chat("counter-spare", "x"))
        await wait_for(lambda: len(entries(settings, "fairness.unrecorded")) >= 3, 30, "the unrecorded entries")
        metrics = (await c.get("/metrics")).text

    assert (closed.status_code, closed.json()["error"]["code"]) == (503, "audit_unavailable")
    assert "counter-decisions" in closed.json()["error"]["message"]
    frames = [f.removeprefix("data: ") for f in streamed.text.split("\n\n") if f]
    assert streamed.status_code == 200 and frames[-1] == "[DONE]"
    assert httpx.Response(200, content=frames[-2]).json()["error"]["code"] == "audit_unavailable"
    assert "tok0" in streamed.text  # the text had been sent: the final event tells the caller to discard it
    assert logged.status_code == 200 and logged.json()["choices"][0]["text"] == "yes"
    assert plain.status_code == 200

    completed = {e["data"]["request_id"]: e["data"] for e in entries(settings, "request.completed")}
    assert completed[closed.headers["x-request-id"]]["status"] == 503
    assert completed[streamed.headers["x-request-id"]]["outcome"] == "error"
    assert completed[logged.headers["x-request-id"]]["status"] == 200
    lost = {rid: e["data"] for e in entries(settings, "fairness.unrecorded") for rid in e["data"]["request_ids"]}
    assert set(lost) == {r.headers["x-request-id"] for r in (closed, streamed, logged)}
    assert lost[logged.headers["x-request-id"]]["audit"] == "echo-decisions"
    assert "no such table" not in str(lost) and all(d["reason"].startswith("the store failed") for d in lost.values())
    assert 'gateway_fairness_decisions_total{model="counter",result="failed",version=""} 2.0' in metrics
    assert 'gateway_fairness_decisions_total{model="echo",result="failed",version=""} 1.0' in metrics


async def test_a_required_attribute_is_checked_before_anything_runs(settings: Settings) -> None:
    """Missing or unknown: 400 naming the header and the allowed groups, never the value; no request entry,
    no backend call, no record."""
    app = create_app(settings)
    async with in_process(app, new_key(settings, "admin")) as c:
        missing = await c.post(CHAT, json=chat("counter", "x"))
        secret = await c.post(CHAT, json=chat("counter", "x"), headers={"X-Audit-Group": "Klingon"})
    for r, code in ((missing, "audit_attribute_missing"), (secret, "audit_attribute_invalid")):
        assert (
            r.status_code == 400 and r.json()["error"]["code"] == code and r.json()["error"]["param"] == "X-Audit-Group"
        )
        assert "one of a, b" in r.json()["error"]["message"] and "Klingon" not in r.text
    assert entries(settings, "request.admitted") == [] and rows(settings) == {}


async def test_a_body_field_attribute_never_reaches_the_upstream(triton: LocalTriton, tmp_path: Path) -> None:
    """An OpenAI-compatible upstream (a real HTTP server that keeps what it receives) gets the request without the
    attribute's field, the rest of ``metadata`` intact; the decision is recorded with the group."""
    received: list[dict[str, Any]] = []

    async def chat_completions(request: web.Request) -> web.Response:
        received.append(await request.json())
        choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "yes"}}
        usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
        return web.json_response({"id": "c1", "object": "chat.completion", "created": 0, "model": "decider",
                                  "choices": [choice], "usage": usage})  # fmt: skip

    upstream = web.Application()
    upstream.router.add_post("/v1/chat/completions", chat_completions)
    runner = web.AppRunner(upstream)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    folder = tmp_path / "policies"
    shutil.copytree(POLICIES, folder)
    audit = {**LENIENT, "models": ["decider"], "attribute": {**LENIENT["attribute"], "required": True}}
    (folder / "fairness" / "decider.yaml").write_text(yaml.safe_dump(audit))
    settings = make_settings(triton, tmp_path, policy={"dir": folder, "watch": False}, fairness={"scheduler": False},
                             backends={"up": {"kind": "openai", "base_url": f"http://127.0.0.1:{port}/v1"}},
                             models=[{"name": "decider", "backend": "up"}])  # fmt: skip
    try:
        async with in_process(create_app(settings), new_key(settings, "admin")) as c:
            r = await c.post(CHAT, json=chat("decider", "hello", metadata={"segment": "y", "ticket": "T-1"}))
    finally:
        await runner.cleanup()
    assert r.status_code == 200, r.text
    (sent,) = received
    assert sent["metadata"] == {"ticket": "T-1"} and "segment" not in orjson.dumps(sent).decode()
    assert rows(settings) == {r.headers["x-request-id"]: ("echo-decisions", "decider", "", 1, "y", 30 * 86400.0)}
