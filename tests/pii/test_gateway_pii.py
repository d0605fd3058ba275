"""PII through the gateway: what reaches the upstream, what comes back, blocks, fail closed, the ledger."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.errors import ConfigError
from gateway.settings import Settings
from ledger.store import open_store
from tests.conftest import POLICIES, create_app, in_process, new_key
from tests.serving import serve

EMAIL, PHONE, IBAN = "jane.doe@corp-mail.com", "212-555-0187", "DE89 3704 0044 0532 0130 00"
CARD, SSN = "4111 1111 1111 1111", "536-22-8431"


@dataclass
class Upstream:
    """A real OpenAI-compatible HTTP server that records every body it gets and answers ``answer``."""

    port: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    answer: str = "ok"
    chunk_sizes: tuple[int, int] = (1, 6)
    reasoning: str = ""
    """Also answered as ``reasoning_content`` (and streamed in pieces), as reasoning models do."""

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        key = "chat" if request.path.endswith("chat/completions") else "text"
        if not body.get("stream"):
            message = {"role": "assistant", "content": self.answer}
            if self.reasoning:
                message |= {"reasoning_content": self.reasoning, "refusal": self.reasoning}
            choice = ({"index": 0, "message": message, "finish_reason": "stop"}
                      if key == "chat" else {"index": 0, "text": self.answer, "finish_reason": "stop"})  # fmt: skip
            return web.json_response(
                {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 1,
                    "model": body["model"],
                    "choices": [choice],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 7},
                }
            )
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        rnd, text, i = random.Random(len(self.bodies)), self.answer, 0
        j = 0
        while key == "chat" and j < len(self.reasoning):  # reasoning first, split, then a function call's arguments
            n = rnd.randint(*self.chunk_sizes)
            piece = {"reasoning_content": self.reasoning[j : j + n],
                     "function_call": {"name": "lookup", "arguments": self.reasoning[j : j + n]}}  # fmt: skip
            await resp.write(b"data: " + json.dumps({"choices": [{"index": 0, "delta": piece}]}).encode() + b"\n\n")
            j += n
        while i < len(text):
            n = rnd.randint(*self.chunk_sizes)
            delta = {"content": text[i : i + n]} if key == "chat" else None
            choice = {"index": 0, "delta": delta} if key == "chat" else {"index": 0, "text": text[i : i + n]}
            await resp.write(b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n")
            i += n
        end = (
            {"index": 0, "delta": {}, "finish_reason": "stop"}
            if key == "chat"
            else {"index": 0, "text": "", "finish_reason": "stop"}
        )
        await resp.write(b"data: " + json.dumps({"choices": [end]}).encode() + b"\n\ndata: [DONE]\n\n")
        return resp

    async def embed(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.bodies.append(body)
        n = len(body["input"]) if isinstance(body["input"], list) else 1
        return web.json_response(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": i, "embedding": [0.1]} for i in range(n)],
                "usage": {"prompt_tokens": 3},
            }
        )


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", up.chat)
    app.router.add_post("/v1/completions", up.chat)
    app.router.add_post("/v1/embeddings", up.embed)
    async with serve(app) as up.port:
        yield up


def settings_for(tmp_path: Path, up: Upstream, policies: Path = POLICIES, **extra: Any) -> Settings:
    return Settings.load(None, state_dir=tmp_path, local_triton={"enabled": False},
                         backends={"up": {"kind": "openai", "base_url": f"http://127.0.0.1:{up.port}/v1"}},
                         models=[{"name": "llama-3-test", "backend": "up"},
                                 {"name": "e5-test", "backend": "up", "kind": "embedding"}],
                         policy={"dir": policies, "watch": False}, ledger={"chain": {"enabled": False}},
                         **extra)  # fmt: skip


def entries(settings: Settings) -> list[dict[str, Any]]:
    store = open_store(settings.ledger_store())
    try:
        return [json.loads(body) for _, _, body in store.read(settings.ledger.origin)]
    finally:
        store.close()


def chat(content: Any, **extra: Any) -> dict[str, Any]:
    return {"model": "llama-3-test", "messages": [{"role": "user", "content": content}], **extra}


async def test_prompt_reaches_the_model_redacted(tmp_path: Path, upstream: Upstream) -> None:
    """Emails, phones and names become numbered placeholders, IBANs masked, IPs hashed; the allow-list passes."""
    s = settings_for(tmp_path, upstream)
    prompt = (f"My name is John Smith, mail {EMAIL} or call {PHONE}. Pay to {IBAN}. John Smith again, from "
              f"10.1.2.3. Questions: support@example.com")  # fmt: skip
    async with in_process(create_app(s), new_key(s, "user")) as c:
        r = await c.post("/v1/chat/completions", json=chat(prompt))
    assert r.status_code == 200, r.text
    sent = upstream.bodies[0]["messages"][0]["content"]
    for value in (EMAIL, PHONE, "John Smith", IBAN, "10.1.2.3"):
        assert value not in sent
    assert sent.count("<PERSON_1>") == 2 and "<EMAIL_ADDRESS_1>" in sent and "<PHONE_NUMBER_1>" in sent
    assert "**** **** **** **** **30 00" in sent  # masked but for the last 4 characters
    assert "<IP_ADDRESS:" in sent and "support@example.com" in sent
    admitted = next(e for e in entries(s) if e["kind"] == "request.admitted")
    assert admitted["data"]["pii"]["PERSON:replace"] == 2 and admitted["data"]["pii"]["IBAN_CODE:mask"] == 1
    assert all(v not in json.dumps(entries(s)) for v in (EMAIL, PHONE, IBAN, "John Smith"))


async def test_every_text_field_is_redacted(tmp_path: Path, upstream: Upstream) -> None:
    """Multi-part content, tool-call arguments, legacy prompts and embedding inputs are redacted too."""
    s = settings_for(tmp_path, upstream)
    messages = [
        {"role": "user", "content": [{"type": "text", "text": f"write to {EMAIL}"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "send", "arguments": json.dumps({"to": EMAIL, "phone": PHONE})}}]},
        {"role": "tool", "tool_call_id": "c1", "content": f"sent to {EMAIL}"},
    ]  # fmt: skip
    async with in_process(create_app(s), new_key(s, "user")) as c:
        assert (await c.post("/v1/chat/completions", json={"model": "llama-3-test", "messages": messages})).is_success
        assert (await c.post("/v1/completions", json={"model": "llama-3-test", "prompt": f"mail {EMAIL}"})).is_success
        r = await c.post("/v1/embeddings", json={"model": "e5-test", "input": [f"call {PHONE}", "nothing here"]})
        assert r.is_success, r.text
    everything = json.dumps(upstream.bodies)
    assert EMAIL not in everything and PHONE not in everything
    assert "<EMAIL_ADDRESS_1>" in upstream.bodies[0]["messages"][0]["content"][0]["text"]
    assert upstream.bodies[1]["prompt"] == "mail <EMAIL_ADDRESS_1>"
    assert upstream.bodies[2]["input"] == ["call <PHONE_NUMBER>", "nothing here"]


@pytest.mark.parametrize("value, entity", [(CARD, "CREDIT_CARD"), (SSN, "US_SSN")])
async def test_blocked_kinds_are_refused(tmp_path: Path, upstream: Upstream, value: str, entity: str) -> None:
    """A blocked kind of data gets 403 naming the kind, never the value; nothing reaches the model."""
    s = settings_for(tmp_path, upstream)
    async with in_process(create_app(s), new_key(s, "user")) as c:
        r = await c.post("/v1/chat/completions", json=chat(f"my number is {value}, ssn or card"))
    assert r.status_code == 403
    err = r.json()["error"]
    assert err["code"] == "pii_blocked" and entity in err["message"] and value not in r.text
    assert upstream.bodies == []
    blocked = [e for e in entries(s) if e["kind"] == "pii.blocked"]
    assert blocked and blocked[0]["data"] == {"entity": entity}


async def test_answers_are_redacted_and_pseudonyms_restored_for_some(tmp_path: Path, upstream: Upstream) -> None:
    """A user gets the answer's PII redacted; an admin (see_unredacted) gets the request's pseudonyms back."""
    s = settings_for(tmp_path, upstream)
    upstream.answer = f"Write to <EMAIL_ADDRESS_1> or to the boss at boss.man@corp-mail.com, phone {PHONE}."
    async with in_process(create_app(s), new_key(s, "user")) as c:
        user = (await c.post("/v1/chat/completions", json=chat(f"mail {EMAIL}"))).json()
    text = user["choices"][0]["message"]["content"]
    assert "boss.man@corp-mail.com" not in text and PHONE not in text and "<EMAIL_ADDRESS_1>" in text
    async with in_process(create_app(s), new_key(s, "admin")) as c:
        admin = (await c.post("/v1/chat/completions", json=chat(f"mail {EMAIL}"))).json()
    assert admin["choices"][0]["message"]["content"] == upstream.answer.replace("<EMAIL_ADDRESS_1>", EMAIL)


async def test_streamed_answer_never_leaks(tmp_path: Path, upstream: Upstream) -> None:
    """Streamed in 1-6 character pieces, the answer's PII never appears, and the text equals the unstreamed one."""
    s = settings_for(tmp_path, upstream)
    upstream.answer = (f"Sure. The customer {EMAIL} paid with IBAN {IBAN} and can be reached at {PHONE}; "
                       f"the backup contact is mary.major@example.org. " * 3)  # fmt: skip
    async with in_process(create_app(s), new_key(s, "user")) as c:
        whole = (await c.post("/v1/chat/completions", json=chat("hi"))).json()["choices"][0]["message"]["content"]
        for _ in range(3):
            r = await c.post("/v1/chat/completions", json=chat("hi", stream=True))
            pieces = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
            streamed = "".join(p["choices"][0]["delta"].get("content") or "" for p in pieces if p.get("choices"))
            for value in (EMAIL, IBAN, PHONE, "mary.major@example.org", "3704 0044", "jane.doe"):
                assert value not in r.text
            assert streamed == whole
    completed = [e for e in entries(s) if e["kind"] == "request.completed"]
    assert completed[-1]["data"]["pii"]["EMAIL_ADDRESS:replace"] == 6


@pytest.mark.parametrize("fault", ["raise", "hang"])
async def test_analyzer_failure_fails_closed(tmp_path: Path, upstream: Upstream, fault: Any) -> None:
    """An analyzer that raises, or hangs past the policy's budget, refuses the request with 503; nothing reaches
    the model; the ledger says why; the next request is served."""
    from gateway.pii._worker import FAULT_TRIGGER
    from gateway.pii.pool import AnalyzerPool

    folder = tmp_path / "policies"
    shutil.copytree(POLICIES, folder)
    (folder / "pii.yaml").write_text((folder / "pii.yaml").read_text().replace("timeout_ms: 3000", "timeout_ms: 500"))
    s = settings_for(tmp_path, upstream, policies=folder)
    broken = AnalyzerPool("full", workers=1, fault=fault)
    await broken.start()
    try:
        async with in_process(create_app(s, analyzer=broken), new_key(s, "user")) as c:
            r = await c.post("/v1/chat/completions", json=chat(f"mail {EMAIL} {FAULT_TRIGGER}"))
            assert r.status_code == 503 and r.json()["error"]["code"] == "pii_unavailable"
            assert upstream.bodies == []
            deadline = asyncio.get_running_loop().time() + 60
            while (again := await c.post("/v1/chat/completions", json=chat(f"mail {EMAIL}"))).status_code == 503:
                assert asyncio.get_running_loop().time() < deadline, "the pool did not replace its worker"
                await asyncio.sleep(0.2)  # a hung worker is being replaced: until then the pool fails closed
            assert again.status_code == 200 and EMAIL not in json.dumps(upstream.bodies)
    finally:
        await broken.aclose()
    assert any(e["kind"] == "pii.unavailable" for e in entries(s))


async def test_fail_open_only_when_the_policy_says_so(tmp_path: Path, upstream: Upstream) -> None:
    """With on_error: fail_open the text passes unredacted, and the ledger records that it did."""
    from gateway.pii._worker import FAULT_TRIGGER
    from gateway.pii.pool import AnalyzerPool

    folder = tmp_path / "policies"
    shutil.copytree(POLICIES, folder)
    pii = (folder / "pii.yaml").read_text().replace("on_error: fail_closed", "on_error: fail_open")
    (folder / "pii.yaml").write_text(pii)
    s = settings_for(tmp_path, upstream, policies=folder)
    broken = AnalyzerPool("full", workers=1, fault="raise")
    await broken.start()
    try:
        async with in_process(create_app(s, analyzer=broken), new_key(s, "user")) as c:
            r = await c.post("/v1/chat/completions", json=chat(f"mail {EMAIL} {FAULT_TRIGGER}"))
    finally:
        await broken.aclose()
    assert r.status_code == 200
    assert EMAIL in upstream.bodies[0]["messages"][0]["content"]
    assert any(e["kind"] == "pii.fail_open" for e in entries(s))


async def test_overrides_by_role_and_model(tmp_path: Path, upstream: Upstream) -> None:
    """The analyst override lets names reach llama-* models; emails are still replaced."""
    s = settings_for(tmp_path, upstream)
    async with in_process(create_app(s), new_key(s, "analyst")) as c:
        assert (await c.post("/v1/chat/completions", json=chat(f"John Smith wrote from {EMAIL}"))).is_success
    sent = upstream.bodies[0]["messages"][0]["content"]
    assert "John Smith" in sent and EMAIL not in sent


@pytest.mark.parametrize("edit, reason", [
    (lambda t: t.replace("EMAIL_ADDRESS: replace", "EMAIL: replace"), "unknown entity 'EMAIL'"),
    (lambda t: t.replace("PHONE_NUMBER: replace", "PHONE_NUMBER: scramble"), "entities.PHONE_NUMBER"),
    (lambda t: t.replace("threshold: 0.4", "threshold: 5"), "threshold"),
    (lambda t: t + "surprise: 1\n", "surprise"),
])  # fmt: skip
def test_bad_pii_policy_is_refused(tmp_path: Path, edit: Any, reason: str) -> None:
    """A broken pii.yaml is refused with the file and the key, as the other policy files are."""
    from gateway.authz import files
    from gateway.errors import PolicyError

    folder = tmp_path / "p"
    shutil.copytree(POLICIES, folder)
    (folder / "pii.yaml").write_text(edit((folder / "pii.yaml").read_text()))
    with pytest.raises(PolicyError, match=reason) as info:
        files.load(folder)
    assert "pii.yaml" in str(info.value)


async def test_names_need_the_full_profile(tmp_path: Path, upstream: Upstream) -> None:
    """A policy that asks for PERSON cannot run on the patterns profile: the start is refused, with the reason."""
    s = settings_for(tmp_path, upstream, pii={"profile": "patterns"})
    app = create_app(s)
    with pytest.raises(ConfigError, match=r"PERSON.*'full' engine profile"):
        async with in_process(app):
            pass


async def test_readyz_reports_the_analyzer(tmp_path: Path, upstream: Upstream) -> None:
    """/readyz says whether the PII analyzer answers; a closed analyzer makes the gateway not ready."""
    from gateway.pii.pool import AnalyzerPool

    s = settings_for(tmp_path, upstream)
    pool = AnalyzerPool("full", workers=1)
    await pool.start()
    async with in_process(create_app(s, analyzer=pool)) as c:
        assert (await c.get("/readyz")).json()["pii"] == {"ready": True}
        await pool.aclose()
        r = await c.get("/readyz")
        assert r.status_code == 503 and r.json()["pii"] == {"ready": False}
        refused = await c.post("/v1/chat/completions", json=chat("hello"), headers={
            "authorization": f"Bearer {new_key(s, 'user')}"})  # fmt: skip
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "pii_unavailable"


async def test_pseudonyms_per_conversation_are_kept_encrypted(tmp_path: Path, upstream: Upstream) -> None:
    """With pseudonym_scope: conversation, requests with one X-Conversation-Id share placeholders; the store
    holds them only encrypted; another caller's same id, or a bad id, gets nothing of it."""
    folder = tmp_path / "policies"
    shutil.copytree(POLICIES, folder)
    pii = (folder / "pii.yaml").read_text().replace("pseudonym_scope: request", "pseudonym_scope: conversation")
    (folder / "pii.yaml").write_text(pii)
    s = settings_for(tmp_path, upstream, policies=folder)
    conv = {"x-conversation-id": "conv-42"}
    key = new_key(s, "user")
    async with in_process(create_app(s), key) as c:
        await c.post("/v1/chat/completions", json=chat(f"Mail {EMAIL} and boss.man@corp-mail.com"), headers=conv)
        await c.post("/v1/chat/completions", json=chat("Now write to boss.man@corp-mail.com"), headers=conv)
        await c.post("/v1/chat/completions", json=chat("Now write to boss.man@corp-mail.com"))
        bad = await c.post("/v1/chat/completions", json=chat("hi"), headers={"x-conversation-id": "a b"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "X-Conversation-Id"
    sent = [b["messages"][0]["content"] for b in upstream.bodies]
    assert sent[1] == "Now write to <EMAIL_ADDRESS_2>"  # the conversation remembered it as the second address
    assert sent[2] == "Now write to <EMAIL_ADDRESS_1>"  # without the header: a fresh vault
    raw = (tmp_path / "pii" / "vaults.sqlite3").read_bytes()
    assert b"boss.man" not in raw and EMAIL.encode() not in raw and b"conv-42" not in raw
    async with in_process(create_app(s), new_key(s, "user")) as c:  # another key: another caller
        await c.post("/v1/chat/completions", json=chat("Now write to boss.man@corp-mail.com"), headers=conv)
    assert upstream.bodies[-1]["messages"][0]["content"] == "Now write to <EMAIL_ADDRESS_1>"
    import sqlite3

    db = sqlite3.connect(tmp_path / "pii" / "vaults.sqlite3")
    db.execute("UPDATE vaults SET blob = substr(blob, 1, length(blob) - 1) || x'00'")  # an edited store
    db.commit()
    db.close()
    async with in_process(create_app(s), key) as c:
        r = await c.post("/v1/chat/completions", json=chat("hi"), headers=conv)
    assert r.status_code == 503 and r.json()["error"]["code"] == "pii_unavailable"
    assert any(e["kind"] == "pii.vault_unreadable" for e in entries(s))


async def test_forwarded_fields_are_redacted_too(tmp_path: Path, upstream: Upstream) -> None:
    """Fields the gateway only forwards (user, tools, prediction, stop, a participant's name, object arguments)
    are redacted like message contents; a malformed tool_calls is not a 500."""
    s = settings_for(tmp_path, upstream)
    body = chat(f"hi {EMAIL}", user=EMAIL, stop=[EMAIL], prediction={"type": "content", "content": f"to {EMAIL}"},
                tools=[{"type": "function", "function": {"name": "send_mail", "description": f"mails {EMAIL}",
                                                         "parameters": {"type": "object"}}}])  # fmt: skip
    body["messages"].append(
        {
            "role": "assistant",
            "name": "helper",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "send_mail", "arguments": {"to": EMAIL}}}
            ],
        }
    )
    async with in_process(create_app(s), new_key(s, "user")) as c:
        assert (await c.post("/v1/chat/completions", json=body)).status_code == 200
        odd = chat("hi")
        odd["messages"].append({"role": "assistant", "content": "x", "tool_calls": 5})
        assert (await c.post("/v1/chat/completions", json=odd)).status_code != 500
    sent = upstream.bodies[0]
    assert EMAIL not in json.dumps(sent)
    assert sent["user"] == "<EMAIL_ADDRESS_1>" and sent["tools"][0]["function"]["name"] == "send_mail"
    assert sent["messages"][1]["tool_calls"][0]["function"]["arguments"] == {"to": "<EMAIL_ADDRESS_1>"}


async def test_every_answer_field_is_redacted(tmp_path: Path, upstream: Upstream) -> None:
    """reasoning_content, refusal and function-call arguments come back redacted, whole and streamed."""
    s = settings_for(tmp_path, upstream)
    upstream.reasoning = f"the user is {EMAIL}, phone {PHONE}, so I will write to {EMAIL} now. " * 2
    async with in_process(create_app(s), new_key(s, "user")) as c:
        whole = await c.post("/v1/chat/completions", json=chat("hi"))
        streamed = await c.post("/v1/chat/completions", json=chat("hi", stream=True))
    message = whole.json()["choices"][0]["message"]
    assert EMAIL not in whole.text and PHONE not in whole.text
    assert "<EMAIL_ADDRESS_1>" in message["reasoning_content"] and "<EMAIL_ADDRESS_1>" in message["refusal"]
    for value in (EMAIL, PHONE, "jane.doe", "corp-mail"):
        assert value not in streamed.text
    deltas = [json.loads(line[6:])["choices"][0]["delta"] for line in streamed.text.splitlines()
              if line.startswith("data: {")]  # fmt: skip
    reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
    arguments = "".join(d.get("function_call", {}).get("arguments", "") for d in deltas)
    assert reasoning == arguments == message["reasoning_content"]


async def test_no_fallback_under_other_pii_rules(tmp_path: Path, upstream: Upstream) -> None:
    """A fallback whose PII rules differ from the requested model's is not used: names allowed to the primary
    never reach a model that must not see them."""
    s = Settings.load(None, state_dir=tmp_path, local_triton={"enabled": False},
                      backends={"up": {"kind": "openai", "base_url": f"http://127.0.0.1:{upstream.port}/v1"},
                                "down": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1",
                                         "connect_timeout_s": 1, "timeout_s": 2}},
                      models=[{"name": "llama-3-down", "backend": "down", "fallback": "smollm2-spare"},
                              {"name": "smollm2-spare", "backend": "up"}],
                      policy={"dir": POLICIES, "watch": False}, ledger={"chain": {"enabled": False}})  # fmt: skip
    async with in_process(create_app(s), new_key(s, "analyst")) as c:
        r = await c.post("/v1/chat/completions", json={**chat("John Smith asks"), "model": "llama-3-down"})
    assert r.status_code in (502, 503)
    assert upstream.bodies == []


async def test_concurrent_requests_share_one_conversation_safely(tmp_path: Path, upstream: Upstream) -> None:
    """Concurrent requests of one conversation never give one placeholder to two values."""
    folder = tmp_path / "policies"
    shutil.copytree(POLICIES, folder)
    (folder / "pii.yaml").write_text((folder / "pii.yaml").read_text().replace(
        "pseudonym_scope: request", "pseudonym_scope: conversation"))  # fmt: skip
    s = settings_for(tmp_path, upstream, policies=folder)
    conv = {"x-conversation-id": "busy"}
    people = [f"user{i}@corp-mail.com" for i in range(8)]
    async with in_process(create_app(s), new_key(s, "user")) as c:
        await asyncio.gather(*(c.post("/v1/chat/completions", json=chat(f"mail {p}"), headers=conv) for p in people))
    placeholders = [b["messages"][0]["content"].removeprefix("mail ") for b in upstream.bodies]
    assert sorted(placeholders) == sorted(f"<EMAIL_ADDRESS_{i}>" for i in range(1, 9))
