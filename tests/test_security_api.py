"""Authentication and authorization on the API, in-process in front of the real Triton."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import httpx
import pytest

from ledger.store import open_store
from tests.conftest import POLICIES, create_app, in_process, make_settings, new_key

CHAT = "/v1/chat/completions"


def _chat(model: str = "echo", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


@pytest.fixture
async def gw(triton, tmp_path: Path):
    """An app with its own copy of the policy folder (so tests can edit it) and a key factory."""
    folder = tmp_path / "policies"
    shutil.copytree(POLICIES, folder)
    with (folder / "policy.csv").open("a") as f:  # the test models, for users
        f.write(
            "p, role:user, model:echo*, infer, allow\np, role:user, model:counter, infer, allow\n"
            "p, role:user, model:gone-to-vllm, infer, allow\n"
        )
    settings = make_settings(triton, tmp_path, policy={"dir": folder, "watch": False})
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app, settings, folder


def _client(app, key: str | None) -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw", headers=headers)


@pytest.mark.parametrize(
    ("header", "challenge"),
    [
        (None, 'Bearer realm="llm-gateway"'),
        ("Basic dXNlcjpwYXNz", 'Bearer realm="llm-gateway", error="invalid_token"'),
        ("Bearer ", 'Bearer realm="llm-gateway", error="invalid_token"'),
        ("Bearer gk_000000000000_nope", 'Bearer realm="llm-gateway", error="invalid_token"'),
        ("Bearer eyJhbGciOiJub25lIn0.e30.", 'Bearer realm="llm-gateway", error="invalid_token"'),
    ],
)
async def test_401_without_a_valid_credential(gw, header, challenge) -> None:
    """Missing or bad credentials get 401 with WWW-Authenticate and OpenAI error JSON, before the body is read."""
    app, _, _ = gw
    async with _client(app, None) as c:
        r = await c.post(CHAT, json=_chat(), headers={"authorization": header} if header else {})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == challenge
    assert r.json()["error"]["code"] == "invalid_api_key"


async def test_403_names_the_missing_permission(gw) -> None:
    """A known caller without permission gets 403 naming the permission; a 403 is never a 5xx."""
    app, settings, _ = gw
    async with _client(app, new_key(settings, "user")) as c:
        r = await c.post(CHAT, json=_chat("smollm2-135m-instruct", max_tokens=1))
        assert r.status_code == 200, r.text
        r = await c.post(CHAT, json=_chat("broken"))
        assert r.status_code == 403 and r.json()["error"]["message"] == "permission denied: infer on model:broken"
        r = await c.post("/admin/policy/reload")
        assert r.status_code == 403 and "admin on route:/admin/policy/reload" in r.text
    async with _client(app, new_key(settings, "visitor")) as c:
        assert (await c.get("/v1/models")).status_code == 403


async def test_models_list_shows_only_permitted(gw) -> None:
    """/v1/models lists only the models the caller may use."""
    app, settings, _ = gw
    async with _client(app, new_key(settings, "user")) as c:
        ids = {m["id"] for m in (await c.get("/v1/models")).json()["data"]}
        assert {"echo", "counter", "smollm2-135m-instruct", "e5-small"} <= ids and "broken" not in ids
        assert (await c.get("/v1/models/broken")).status_code == 404


async def test_fallback_needs_permission_too(gw) -> None:
    """A fallback the caller may not use is skipped: the primary's failure is returned instead."""
    app, settings, _ = gw
    # gone-to-vllm's backend is unreachable; its fallback vllm-echo is for admins only
    async with _client(app, new_key(settings, "admin")) as c:
        r = await c.post(CHAT, json=_chat("gone-to-vllm"))
        assert r.status_code == 200 and r.json()["model"] == "vllm-echo"
    async with _client(app, new_key(settings, "user")) as c:
        r = await c.post(CHAT, json=_chat("gone-to-vllm"))
        assert r.status_code == 503, r.text


async def test_role_limits(gw) -> None:
    """max_tokens above the role's cap and streaming where not allowed are 403; the cap applies by default."""
    app, settings, folder = gw
    async with _client(app, new_key(settings, "user")) as c:
        r = await c.post(CHAT, json=_chat("counter", max_tokens=5000))
        assert r.status_code == 403 and r.json()["error"]["param"] == "max_tokens"
        r = await c.post("/v1/completions", json={"model": "counter", "prompt": "x"})
        assert r.json()["usage"]["completion_tokens"] == 256  # route default 256 < user cap 1024
    limits = (folder / "limits.yaml").read_text().replace("stream: true", "stream: false")
    (folder / "limits.yaml").write_text(limits)
    assert app.state.gateway.security.policy.reload()
    async with _client(app, new_key(settings, "user")) as c:
        r = await c.post(CHAT, json=_chat("echo", stream=True))
        assert r.status_code == 403 and r.json()["error"]["param"] == "stream"


async def test_rate_limit_429(gw) -> None:
    """Past the requests-per-minute limit the caller gets 429 with Retry-After; others are unaffected."""
    app, settings, folder = gw
    text = (folder / "limits.yaml").read_text().replace("requests_per_minute: 60\n", "requests_per_minute: 3\n", 1)
    (folder / "limits.yaml").write_text(text)
    assert app.state.gateway.security.policy.reload()
    async with _client(app, new_key(settings, "user")) as c, _client(app, new_key(settings, "user")) as other:
        for _ in range(3):
            assert (await c.post(CHAT, json=_chat())).status_code == 200
        r = await c.post(CHAT, json=_chat())
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60
        assert r.json()["error"]["type"] == "rate_limit_error"
        assert (await other.post(CHAT, json=_chat())).status_code == 200


async def test_rate_limit_shared_by_replicas(triton, tmp_path: Path) -> None:
    """Two gateway replicas on one Redis prefix share a caller's limit: together they admit it once."""
    import uuid

    folder = tmp_path / "policies"
    shutil.copytree(POLICIES, folder)
    with (folder / "policy.csv").open("a") as f:
        f.write("p, role:user, model:echo*, infer, allow\n")
    text = (folder / "limits.yaml").read_text().replace("requests_per_minute: 60\n", "requests_per_minute: 3\n", 1)
    (folder / "limits.yaml").write_text(text)
    shared = {"policy": {"dir": folder, "watch": False}, "auth": {"api_keys_db": tmp_path / "keys.sqlite3"},
              "redis": {"url": "redis://127.0.0.1:6379/0", "prefix": f"test:{uuid.uuid4().hex}:"}}  # fmt: skip
    a, b = (create_app(make_settings(triton, tmp_path / n, **shared)) for n in ("a", "b"))
    key = new_key(make_settings(triton, tmp_path / "a", **shared), "user")
    async with in_process(a, key) as ca, in_process(b, key) as cb:
        statuses = [(await c.post(CHAT, json=_chat())).status_code for c in (ca, cb, ca)]
        assert statuses == [200, 200, 200]
        r = await cb.post(CHAT, json=_chat())
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60


async def test_rate_limiter_down_fails_closed(triton, tmp_path: Path) -> None:
    """With the shared Redis unreachable the gateway still starts, and refuses requests with 503."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = make_settings(triton, tmp_path, redis={"url": f"redis://127.0.0.1:{port}/0"})
    async with in_process(create_app(settings), new_key(settings, "admin")) as c:
        r = await c.post(CHAT, json=_chat())
        assert r.status_code == 503 and r.json()["error"]["code"] == "rate_limiter_unavailable"
        assert (await c.get("/v1/models")).status_code == 200  # what no rate limit guards is served


@pytest.mark.parametrize(
    "path",
    [
        "/v1//chat/completions",
        "/v1/./chat/completions",
        "/v1/../v1/chat/completions",
        "/V1/chat/completions",
        "/v1/chat%2Fcompletions",
        "/v1/chat/completions/",
        "/v1/chat/completions%00",
        "/%76%31/chat/completions",
        "/v1/models/../chat/completions",
    ],
)
async def test_route_spelling_cannot_bypass_policy(gw, path: str) -> None:
    """However the path is spelled, it reaches the chat handler only through the chat route's own check."""
    app, settings, _ = gw
    async with _client(app, new_key(settings, "readonly")) as c:
        folder = settings.policy.dir
        assert folder is not None
        r = await c.post(path, json=_chat())
    assert r.status_code in (401, 403, 404, 405, 307), (path, r.status_code)
    assert r.status_code != 200


async def test_admin_status_and_reload(gw) -> None:
    """Admins see the policy status and reload it; a bad edit is refused (409) and the old policy serves."""
    app, settings, folder = gw
    async with _client(app, new_key(settings, "admin")) as c:
        status = (await c.get("/admin/policy/status")).json()
        assert status["version"] == 1 and status["last_rejection"] is None and "policy.csv" in status["files"]
        with (folder / "policy.csv").open("a") as f:
            f.write("p, role:user, model:x, infr, allow\n")
        r = await c.post("/admin/policy/reload")
        assert r.status_code == 409 and "unknown action 'infr'" in r.json()["last_rejection"]["reason"]
        assert r.json()["version"] == 1
        good = (POLICIES / "policy.csv").read_text() + "p, role:user, model:echo*, infer, allow\n"
        (folder / "policy.csv").write_text(good)
        r = await c.post("/admin/policy/reload")
        assert r.status_code == 200 and r.json()["reloaded"] and r.json()["version"] == 2


async def test_hot_reload_under_load_fails_no_request(triton, tmp_path: Path) -> None:
    """The watcher swaps in a good edit while requests flow: no request fails, and the change takes effect."""
    folder = tmp_path / "policies"
    shutil.copytree(POLICIES, folder)
    with (folder / "policy.csv").open("a") as f:
        f.write("p, role:user, model:echo, infer, allow\n")
    limits = (
        (folder / "limits.yaml").read_text().replace("requests_per_minute: 60\n", "requests_per_minute: 1000000\n", 1)
    )
    (folder / "limits.yaml").write_text(limits)  # this test is about reloads, not rate limits
    settings = make_settings(triton, tmp_path, policy={"dir": folder, "watch": True})
    app = create_app(settings)
    async with in_process(app, new_key(settings, "user")) as c:
        store = app.state.gateway.security.policy
        statuses: list[int] = []
        stop = asyncio.Event()

        async def load() -> None:
            while not stop.is_set():
                statuses.append((await c.post(CHAT, json=_chat())).status_code)

        workers = [asyncio.create_task(load()) for _ in range(4)]
        try:
            await asyncio.sleep(0.3)  # traffic flowing before the edit
            text = (folder / "policy.csv").read_text() + "p, role:user, model:counter, infer, allow\n"
            tmp = folder / "policy.csv.tmp"
            tmp.write_text(text)
            tmp.replace(folder / "policy.csv")  # the recommended atomic edit
            deadline = asyncio.get_running_loop().time() + 10
            while store.engine.version < 2:
                assert asyncio.get_running_loop().time() < deadline, "the watcher did not reload"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # traffic after the swap
        finally:
            stop.set()
            await asyncio.gather(*workers)
        assert len(statuses) > 20 and set(statuses) == {200}
        r = await c.post(CHAT, json=_chat("counter", max_tokens=1))
        assert r.status_code == 200
        # a broken edit is rejected by the watcher, and the version in force keeps serving
        (folder / "policy.csv").write_text(text + "p, role:user\n")
        deadline = asyncio.get_running_loop().time() + 10
        while store.last_rejection is None:
            assert asyncio.get_running_loop().time() < deadline, "the watcher did not see the bad edit"
            await asyncio.sleep(0.05)
        assert store.engine.version == 2
        assert (await c.post(CHAT, json=_chat("counter", max_tokens=1))).status_code == 200


async def test_decisions_reach_the_audit_path(gw) -> None:
    """Every decision, allow or deny, and every failed authentication is a ledger entry, without secrets."""
    app, settings, _ = gw
    key = new_key(settings, "user")
    async with _client(app, key) as c:
        await c.post(CHAT, json=_chat())
        await c.post(CHAT, json=_chat("broken"))
    async with _client(app, key[:-2] + "xx") as c:
        await c.post(CHAT, json=_chat())
    store = open_store(settings.ledger_store())
    bodies = [body for _, _, body in store.read(settings.ledger.origin)]
    store.close()
    entries = [json.loads(b) for b in bodies]
    events = [{"kind": e["kind"], "actor": e["actor"], **e["data"]} for e in entries]
    kinds = [(e["kind"], e.get("object"), e.get("allowed")) for e in events]
    assert ("authz.decision", "route:/v1/chat/completions", True) in kinds
    assert ("authz.decision", "model:echo", True) in kinds
    assert ("authz.decision", "model:broken", False) in kinds
    assert any(e["kind"] == "authn.failed" and "wrong secret" in e["reason"] for e in events)
    allowed = next(e for e in events if e.get("object") == "model:echo")
    assert allowed["rule"] == ["role:user", "model:echo*", "infer", "allow"] and allowed["policy_version"] == 1
    admitted = next(e for e in events if e["kind"] == "request.admitted")
    completed = next(e for e in events if e["kind"] == "request.completed")
    assert admitted["model"] == "echo" and admitted["request_digest"].startswith("hmac-sha256:")
    assert completed["admitted_seq"] < len(entries) and completed["outcome"] == "ok"
    secret = key.split("_", 2)[2]
    assert all(secret.encode() not in b for b in bodies)
    assert all(b'"hi"' not in b for b in bodies), "prompts must never be stored"


async def test_jwt_caller_through_the_api(triton, tmp_path: Path) -> None:
    """An OIDC token's roles claim authorizes it like an API key's roles; a wrong audience is 401."""
    import time as _time

    from joserfc import jwt as _jwt
    from joserfc.jwk import RSAKey

    key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
    jwt_cfg = {"issuer": "https://idp.test", "audience": "gw", "jwks_file": str(jwks), "roles_claim": "groups"}
    settings = make_settings(triton, tmp_path, auth={"jwt": jwt_cfg})
    now = int(_time.time())

    def token(aud: str) -> str:
        claims = {"iss": "https://idp.test", "aud": aud, "sub": "alice", "exp": now + 60, "groups": ["user"]}
        return _jwt.encode({"alg": "RS256", "kid": "k1"}, claims, key)

    app = create_app(settings)
    async with in_process(app, token("gw")) as c:
        r = await c.post(CHAT, json=_chat("smollm2-135m-instruct", max_tokens=1))
        assert r.status_code == 200, r.text
        assert (await c.post(CHAT, json=_chat("broken"))).status_code == 403
        r = await c.post(CHAT, json=_chat("smollm2-135m-instruct"), headers={"authorization": f"Bearer {token('x')}"})
        assert r.status_code == 401 and "invalid_token" in r.headers["www-authenticate"]
