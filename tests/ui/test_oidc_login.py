"""Sign-in to /admin/ui with a real OpenID Connect provider (tests/idp), over HTTP: the code flow with PKCE end
to end, and each way it can fail (state, missing transaction, refused account, replayed code, a token the
gateway does not accept, a role without the page, a provider that does not answer)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlsplit

import httpx
import pytest

from gateway.errors import ConfigError
from gateway.settings import Settings
from ledger.store import open_store
from tests.conftest import create_app, make_settings
from tests.idp.provider import IdP, start_idp

AUDIENCE = "llm-gateway"
CALLBACK = "http://gw/admin/ui/callback"
ACCOUNTS = {"olivia": ["compliance-officer"], "uma": ["user"]}


@pytest.fixture
def idp(tmp_path: Path) -> Any:
    with start_idp(tmp_path, client_id="gateway-ui", redirect_uris=[CALLBACK], audience=AUDIENCE,
                   accounts=ACCOUNTS) as running:  # fmt: skip
        yield running


async def _gateway(triton: Any, tmp_path: Path, idp: IdP, audience: str = AUDIENCE) -> AsyncIterator[Any]:
    settings = make_settings(
        triton,
        tmp_path,
        auth={"jwt": {"issuer": idp.issuer, "audience": audience, "jwks_url": idp.jwks_url}},
        ui={"oidc": {"issuer": idp.issuer, "client_id": "gateway-ui", "redirect_uri": CALLBACK}},
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app, settings


@pytest.fixture
async def gw(triton: Any, tmp_path: Path, idp: IdP) -> AsyncIterator[Any]:
    async for pair in _gateway(triton, tmp_path, idp):
        yield pair


def _browser(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://gw")


async def _at_provider(authorize_url: str, login: str) -> dict[str, str]:
    """Sign in at the provider as ``login`` (its sign-in form, any password): the query it sends to our callback."""
    async with httpx.AsyncClient(trust_env=False) as idp_browser:
        resp = await idp_browser.get(authorize_url)
        for _ in range(10):
            if resp.is_redirect:
                location = urljoin(str(resp.url), resp.headers["location"])
                if location.startswith(CALLBACK):
                    return dict(parse_qsl(urlsplit(location).query))
                resp = await idp_browser.get(location)
                continue
            assert resp.status_code == 200, resp.text
            action = re.search(r'<form[^>]*action="([^"]+)"', resp.text)
            assert action, resp.text
            fields = dict(re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', resp.text))
            if 'name="login"' in resp.text:
                fields |= {"login": login, "password": "any"}
            resp = await idp_browser.post(urljoin(str(resp.url), action.group(1)), data=fields)
    raise AssertionError("the provider never sent the browser back")


async def _begin(b: httpx.AsyncClient) -> str:
    r = await b.get("/admin/ui/login/oidc")
    assert r.status_code == 303, r.text
    assert "code_challenge_method=S256" in r.headers["location"] and "nonce=" in r.headers["location"]
    return str(r.headers["location"])


def _failures(settings: Settings) -> list[str]:
    store = open_store(settings.ledger_store())
    try:
        found = (json.loads(b) for _, _, b in store.read(settings.ledger.origin))
        return [e["data"]["reason"] for e in found if e["kind"] == "authn.failed"]
    finally:
        store.close()


async def test_code_flow_signs_in_with_the_providers_identity_and_roles(gw: Any) -> None:
    app, _ = gw
    async with _browser(app) as b:
        page = await b.get("/admin/ui/login")
        assert 'id="sso"' in page.text
        answer = await _at_provider(await _begin(b), "olivia")
        r = await b.get("/admin/ui/callback", params=answer)
        assert r.status_code == 200 and 'url=/admin/ui"' in r.text, r.text
        assert "gateway-ui-login=" in r.headers.get("set-cookie", "")  # the transaction is forgotten
        page = await b.get("/admin/ui")
        assert page.status_code == 200 and "user:olivia" in page.text and "compliance-officer" in page.text
        again = await b.get("/admin/ui/callback", params=answer)  # the same answer twice: its transaction is gone
        assert again.status_code == 401 and "did not start a sign-in" in again.text


async def test_a_forged_state_or_a_foreign_browser_is_refused(gw: Any) -> None:
    app, settings = gw
    async with _browser(app) as b:
        answer = await _at_provider(await _begin(b), "olivia")
        r = await b.get("/admin/ui/callback", params={**answer, "state": "forged"})
        assert r.status_code == 401 and "(state)" in r.text and (await b.get("/admin/ui")).status_code == 303
        answer = await _at_provider(await _begin(b), "olivia")
        assert answer["iss"]  # the provider names itself (RFC 9207): an answer naming another is a mix-up
        r = await b.get("/admin/ui/callback", params={**answer, "iss": "https://evil.example"})
        assert r.status_code == 401 and "another identity provider (iss)" in r.text
    async with _browser(app) as other:  # the answer arrives at a browser that started no sign-in
        r = await other.get("/admin/ui/callback", params=answer)
        assert r.status_code == 401 and "did not start a sign-in" in r.text
    assert any("ui sign-in" in f and "(state)" in f for f in _failures(settings))


async def test_a_replayed_code_is_refused_by_the_provider(gw: Any) -> None:
    app, _ = gw
    async with _browser(app) as b:
        answer = await _at_provider(await _begin(b), "olivia")
        assert (await b.get("/admin/ui/callback", params=answer)).status_code == 200
    async with _browser(app) as thief:  # a second browser with its own transaction, replaying the code
        url = await _begin(thief)
        state = dict(parse_qsl(urlsplit(url).query))["state"]
        r = await thief.get("/admin/ui/callback", params={**answer, "state": state})
        assert r.status_code == 401 and "refused the code" in r.text, r.text


async def test_unknown_accounts_and_roles_without_the_page_are_refused(gw: Any) -> None:
    app, _ = gw
    async with _browser(app) as b:
        answer = await _at_provider(await _begin(b), "mallory")  # not an account of the provider
        assert answer.get("error") == "access_denied"
        r = await b.get("/admin/ui/callback", params=answer)
        assert r.status_code == 401 and "refused the sign-in" in r.text
        answer = await _at_provider(await _begin(b), "uma")  # signed in, but a plain user
        r = await b.get("/admin/ui/callback", params=answer)
        assert r.status_code == 403 and "permission denied: report on route:/admin/ui" in r.text
        assert (await b.get("/admin/ui")).status_code == 303


async def test_a_token_for_another_audience_is_not_a_session(triton: Any, tmp_path: Path, idp: IdP) -> None:
    async for app, settings in _gateway(triton, tmp_path, idp, audience="another-api"):
        async with _browser(app) as b:
            answer = await _at_provider(await _begin(b), "olivia")
            r = await b.get("/admin/ui/callback", params=answer)
            assert r.status_code == 401 and "invalid credential" in r.text
            assert (await b.get("/admin/ui")).status_code == 303
        assert any("audience" in f or "aud" in f for f in _failures(settings))


async def test_a_provider_that_does_not_answer_and_a_page_without_one(triton: Any, tmp_path: Path) -> None:
    down = "http://127.0.0.1:9"
    settings = make_settings(triton, tmp_path, auth={"jwt": {"issuer": down, "audience": AUDIENCE,
                                                             "jwks_url": f"{down}/jwks"}},
                             ui={"oidc": {"issuer": down, "client_id": "gateway-ui", "timeout_s": 2}})  # fmt: skip
    app = create_app(settings)
    async with app.router.lifespan_context(app), _browser(app) as b:
        r = await b.get("/admin/ui/login/oidc")
        assert r.status_code == 502 and "discovery document cannot be read" in r.text
    plain = create_app(make_settings(triton, tmp_path / "plain"))
    async with plain.router.lifespan_context(plain), _browser(plain) as b:
        r = await b.get("/admin/ui/login/oidc")
        assert r.status_code == 400 and "not configured (ui.oidc)" in r.text
        assert (await b.get("/admin/ui/callback?code=x&state=y")).status_code == 400


def test_settings_need_jwt_and_the_openid_scope(tmp_path: Path) -> None:
    oidc = {"issuer": "https://idp.example", "client_id": "gateway-ui"}
    with pytest.raises(ConfigError, match=r"ui\.oidc: browser sign-in needs auth\.jwt"):
        Settings.load(None, state_dir=tmp_path, ui={"oidc": oidc})
    jwt = {"issuer": "https://idp.example", "audience": AUDIENCE, "jwks_url": "https://idp.example/jwks"}
    with pytest.raises(ConfigError, match="scopes must include openid"):
        Settings.load(None, state_dir=tmp_path, auth={"jwt": jwt}, ui={"oidc": {**oidc, "scopes": ["profile"]}})
    with pytest.raises(ConfigError, match=r"issuer must be an https://"):
        Settings.load(None, state_dir=tmp_path, auth={"jwt": jwt}, ui={"oidc": {**oidc, "issuer": "idp.example"}})
    assert Settings.load(None, state_dir=tmp_path, auth={"jwt": jwt}, ui={"oidc": oidc}).ui.oidc is not None
