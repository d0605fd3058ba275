"""The test provider: a full authorization code flow with PKCE over plain HTTP, as a browser would drive it."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

from tests.idp import IdP, IdPError, start_idp

CLIENT_ID = "gateway-ui"
REDIRECT_URI = "http://127.0.0.1:9/admin/ui/callback"  # never contacted: the code is read from Location
AUDIENCE = "https://gateway.test/api"
ACCOUNTS = {"alice": ["admin", "analyst"], "bob": []}


@dataclass
class _Form:
    action: str
    fields: dict[str, str] = field(default_factory=dict)
    buttons: list[str] = field(default_factory=list)


class _Forms(HTMLParser):
    """The forms of a page: action, named inputs and their values, and button labels."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[_Form] = []
        self._in_button = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(_Form(a.get("action", "")))
        elif tag == "input" and self.forms and "name" in a:
            self.forms[-1].fields[a["name"]] = a.get("value", "")
        elif tag == "button":
            self._in_button = True
            self.forms[-1].buttons.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "button":
            self._in_button = False

    def handle_data(self, data: str) -> None:
        if self._in_button:
            self.forms[-1].buttons[-1] += data.strip()


def _pkce() -> tuple[str, str]:
    """A code verifier and its S256 challenge (RFC 7636 section 4.2)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def _sign_in(
    client: httpx.Client, idp: IdP, login: str, challenge: str, nonce: str, state: str
) -> tuple[dict[str, str], list[list[str]]]:
    """Drive the authorization endpoint and the sign-in pages (whose button labels are returned too), up to the
    redirect to the client: the query the provider sends to the redirect URI."""
    meta = client.get(idp.discovery_url).raise_for_status().json()
    params = {"client_id": CLIENT_ID, "redirect_uri": REDIRECT_URI, "response_type": "code", "scope": "openid profile",
              "state": state, "nonce": nonce, "code_challenge": challenge, "code_challenge_method": "S256"}  # fmt: skip
    resp = client.get(meta["authorization_endpoint"], params=params)
    pages = []
    for _ in range(10):
        if resp.is_redirect:
            location = urljoin(str(resp.url), resp.headers["location"])
            if location.startswith(REDIRECT_URI):
                return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}, pages
            resp = client.get(location)
            continue
        assert resp.status_code == 200, resp.text
        parser = _Forms()
        parser.feed(resp.text)
        (form,) = parser.forms
        pages.append(form.buttons)
        data = dict(form.fields)
        if "login" in data:
            data.update(login=login, password="any password")
        resp = client.post(urljoin(str(resp.url), form.action), data=data)
    raise AssertionError(f"no redirect to the client after the pages {pages}")


def _exchange(client: httpx.Client, idp: IdP, code: str, verifier: str, secret: str | None) -> httpx.Response:
    meta = client.get(idp.discovery_url).raise_for_status().json()
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI, "code_verifier": verifier}
    if secret is None:
        return client.post(meta["token_endpoint"], data={**data, "client_id": CLIENT_ID})
    return client.post(meta["token_endpoint"], data=data, auth=(CLIENT_ID, secret))


def _verify(token: str, keys: KeySet, **claims: Any) -> jwt.Token:
    """The token, its RS256 signature checked against the provider's keys, with exp and these claims required."""
    decoded = jwt.decode(token, keys, algorithms=["RS256"])
    expected = {name: {"essential": True, "value": value} for name, value in claims.items()}
    JWTClaimsRegistry(exp={"essential": True}, **expected).validate(decoded.claims)
    return decoded


@pytest.fixture(params=[("auto", None), ("prompt", "s3cret")], ids=["public-auto-consent", "confidential-consent"])
def idp(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[IdP, str | None]]:
    consent, secret = request.param
    with start_idp(tmp_path, client_id=CLIENT_ID, redirect_uris=[REDIRECT_URI], audience=AUDIENCE, accounts=ACCOUNTS,
                   client_secret=secret, consent=consent) as running:  # fmt: skip
        yield running, secret


def test_code_flow_with_pkce(idp: tuple[IdP, str | None]) -> None:
    """Sign-in, code, token exchange: the ID token echoes the nonce, the access token carries aud and roles."""
    provider, secret = idp
    verifier, challenge = _pkce()
    nonce, state = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    with httpx.Client(trust_env=False, timeout=10) as client:
        reply, pages = _sign_in(client, provider, "alice", challenge, nonce, state)
        assert pages == ([["Sign-in"]] if secret is None else [["Sign-in"], ["Continue"]])
        assert reply["state"] == state and reply["iss"] == provider.issuer
        resp = _exchange(client, provider, reply["code"], verifier, secret)
        assert resp.status_code == 200, resp.text
        tokens = resp.json()
        keys = KeySet.import_key_set(client.get(provider.jwks_url).raise_for_status().json())

    id_token = _verify(tokens["id_token"], keys, iss=provider.issuer, aud=CLIENT_ID, sub="alice", nonce=nonce)
    assert id_token.claims["preferred_username"] == "alice"
    access = _verify(tokens["access_token"], keys, iss=provider.issuer, aud=AUDIENCE, sub="alice")
    assert access.header["typ"] == "at+jwt"
    assert access.claims["roles"] == ["admin", "analyst"]
    assert access.claims["client_id"] == CLIENT_ID


def test_wrong_code_verifier_is_refused(idp: tuple[IdP, str | None]) -> None:
    """A code exchanged with another verifier than the one its challenge was made from gets invalid_grant."""
    provider, secret = idp
    _, challenge = _pkce()
    other_verifier, _ = _pkce()
    with httpx.Client(trust_env=False, timeout=10) as client:
        reply, _ = _sign_in(client, provider, "bob", challenge, "n", "s")
        resp = _exchange(client, provider, reply["code"], other_verifier, secret)
    assert resp.status_code == 400
    assert resp.json()["error"] == "invalid_grant"


def test_account_without_roles_gets_an_empty_list(tmp_path: Path) -> None:
    """An account listed with no roles signs in and its access token says roles: []."""
    verifier, challenge = _pkce()
    with start_idp(tmp_path, client_id=CLIENT_ID, redirect_uris=[REDIRECT_URI], audience="llm-gateway",
                   accounts=ACCOUNTS) as provider, httpx.Client(trust_env=False, timeout=10) as client:  # fmt: skip
        reply, _ = _sign_in(client, provider, "bob", challenge, "n", "s")
        tokens = _exchange(client, provider, reply["code"], verifier, None).raise_for_status().json()
        keys = KeySet.import_key_set(client.get(provider.jwks_url).raise_for_status().json())
    access = _verify(tokens["access_token"], keys, aud="llm-gateway", sub="bob")
    assert access.claims["roles"] == []


def test_unknown_account_is_refused(tmp_path: Path) -> None:
    """A login not in accounts goes back to the client as access_denied, with no code."""
    _, challenge = _pkce()
    with start_idp(tmp_path, client_id=CLIENT_ID, redirect_uris=[REDIRECT_URI], audience=AUDIENCE,
                   accounts=ACCOUNTS) as provider, httpx.Client(trust_env=False, timeout=10) as client:  # fmt: skip
        reply, _ = _sign_in(client, provider, "mallory", challenge, "n", "s")
    assert reply["error"] == "access_denied" and "code" not in reply


def test_missing_node_modules_says_run_bootstrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without tests/idp/node_modules the helper says to run scripts/bootstrap."""
    import tests.idp.provider as provider_module

    monkeypatch.setattr(provider_module, "HERE", tmp_path)
    with (
        pytest.raises(IdPError, match="scripts/bootstrap"),
        start_idp(tmp_path, client_id=CLIENT_ID, redirect_uris=[REDIRECT_URI], audience=AUDIENCE, accounts={}),
    ):
        pass


def test_start_failure_carries_stderr(tmp_path: Path) -> None:
    """A provider that cannot start is reported with its own message, not a bare timeout."""
    with (
        pytest.raises(IdPError, match="audience is required"),
        start_idp(tmp_path, client_id=CLIENT_ID, redirect_uris=[REDIRECT_URI], audience="", accounts=ACCOUNTS),
    ):
        pass
