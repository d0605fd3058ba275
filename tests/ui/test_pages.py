"""The compliance page over HTTP (no browser): sign-in with an API key, the CSRF and origin checks, report
creation and download through the page, ledger verification, and what each role sees. The browser test with a
real Chromium and an OpenID Connect provider is tests/ui/test_browser.py."""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.identity.apikeys import APIKeyStore
from ledger.store import open_store
from tests.conftest import create_app, make_settings, new_key

TODAY = datetime.now(UTC).date()


@pytest.fixture
async def gw(triton, tmp_path: Path):
    settings = make_settings(triton, tmp_path)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app, settings


def _browser(app: Any) -> httpx.AsyncClient:
    """A cookie-keeping client, like a browser (no Authorization header)."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://gw")


async def _sign_in(client: httpx.AsyncClient, key: str) -> httpx.Response:
    return await client.post("/admin/ui/login", data={"api_key": key})


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert match, "the page has no CSRF token"
    return match.group(1)


def _entries(settings: Any, kind: str) -> list[dict[str, Any]]:
    store = open_store(settings.ledger_store())
    try:
        found = (json.loads(b) for _, _, b in store.read(settings.ledger.origin))
        return [e["data"] | {"actor": e["actor"]} for e in found if e["kind"] == kind]
    finally:
        store.close()


async def test_unsigned_browser_is_sent_to_the_login_page(gw) -> None:
    app, _ = gw
    async with _browser(app) as b:
        r = await b.get("/admin/ui")
        assert r.status_code == 303 and r.headers["location"] == "/admin/ui/login"
        page = await b.get("/admin/ui/login")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert 'name="api_key"' in page.text and "/admin/ui/login/oidc" not in page.text  # no provider configured
        assert "script" not in page.text.lower()  # no JavaScript at all
        assert "default-src 'none'" in page.headers["content-security-policy"]


async def test_sign_in_with_a_key_then_the_page_shows_each_part(gw) -> None:
    app, settings = gw
    key = new_key(settings, "compliance-officer", owner="olivia")
    async with _browser(app) as b:
        r = await _sign_in(b, key)
        assert r.status_code == 303 and r.headers["location"] == "/admin/ui"
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie and "path=/" in cookie
        assert "max-age" not in cookie and "expires" not in cookie  # a browser-session cookie: gone on close
        page = await b.get("/admin/ui")
        assert page.status_code == 200, page.text
        for part in ('id="ledger"', 'id="policy"', 'id="fairness"', 'id="reports"', 'id="create-report"'):
            assert part in page.text
        assert settings.ledger.origin in page.text and "compliance-officer" in page.text
        assert "No fairness audit has finished yet." in page.text
    decisions = [d for d in _entries(settings, "authz.decision") if d["object"] == "route:/admin/ui"]
    assert decisions and all(d["allowed"] for d in decisions)  # every page view is decided and recorded


async def test_a_bad_key_or_a_role_without_the_page_is_refused_and_recorded(gw) -> None:
    app, settings = gw
    async with _browser(app) as b:
        r = await _sign_in(b, "gk_000000000000_notasecret")
        assert r.status_code == 401 and "invalid credential" in r.text and "set-cookie" not in r.headers
        r = await _sign_in(b, new_key(settings, "user"))
        assert r.status_code == 403 and "permission denied: report on route:/admin/ui" in r.text
        assert "set-cookie" not in r.headers
        r = await _sign_in(b, "")
        assert r.status_code == 400 and "Enter an API key." in r.text
        assert (await b.get("/admin/ui")).status_code == 303  # still signed out
    assert any("invalid credential" in e["reason"] for e in _entries(settings, "authn.failed"))
    assert any(not d["allowed"] and d["object"] == "route:/admin/ui" for d in _entries(settings, "authz.decision"))


async def _wait_done(b: httpx.AsyncClient, rid: str) -> str:
    deadline = time.monotonic() + 120
    while True:
        page = (await b.get("/admin/ui")).text
        row = re.search(rf'<tr data-report="{rid}">(.*?)</tr>', page, re.S)
        assert row, page
        if "/admin/ui/reports/" in row.group(1):
            assert '<meta http-equiv="refresh"' not in page  # nothing pending: the page stops refreshing
            return page
        assert 'http-equiv="refresh"' in page  # pending or running: the page refreshes itself
        assert time.monotonic() < deadline, row.group(1)
        await asyncio.sleep(0.1)


async def test_create_and_download_a_report_through_the_page(gw) -> None:
    app, settings = gw
    key = new_key(settings, "compliance-officer", owner="olivia")
    async with _browser(app) as b:
        await _sign_in(b, key)
        csrf = _csrf((await b.get("/admin/ui")).text)
        form = {"csrf": csrf, "from": TODAY.isoformat(), "to": TODAY.isoformat(),
                "sections": ["inventory", "integrity"]}  # fmt: skip
        r = await b.post("/admin/ui/reports", data=form)
        assert r.status_code == 303, r.text
        rid = re.search(r"created=([0-9a-f]{32})", r.headers["location"]).group(1)  # type: ignore[union-attr]
        await _wait_done(b, rid)
        pdf = await b.get(f"/admin/ui/reports/{rid}.pdf")
        assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
        assert pdf.content.startswith(b"%PDF-") and f'filename="report-{rid}.pdf"' in pdf.headers["content-disposition"]
        again = await b.get(f"/admin/ui/reports/{rid}.pdf", headers={"if-none-match": pdf.headers["etag"]})
        assert again.status_code == 304
        js = await b.get(f"/admin/ui/reports/{rid}.json")
        assert js.status_code == 200 and js.json()["report"]["sections"].keys() == {"inventory", "integrity"}
        assert (await b.get(f"/admin/ui/reports/{rid}")).status_code == 400  # files only, not the status
        assert (await b.get(f"/admin/ui/reports/{'0' * 32}.pdf")).status_code == 404
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw",
                                 headers={"authorization": f"Bearer {key}"}) as api:  # fmt: skip
        assert (await api.get(f"/admin/reports/{rid}.pdf")).content == pdf.content  # the very file the API serves
    created = _entries(settings, "report.created")
    assert [e["id"] for e in created] == [rid] and created[0]["actor"].startswith("apikey:")


async def test_forms_need_the_csrf_token_and_this_origin(gw) -> None:
    app, settings = gw
    async with _browser(app) as b:
        await _sign_in(b, new_key(settings, "compliance-officer"))
        csrf = _csrf((await b.get("/admin/ui")).text)
        form = {"from": TODAY.isoformat(), "to": TODAY.isoformat(), "sections": "inventory"}
        r = await b.post("/admin/ui/reports", data=form)
        assert r.status_code == 403 and "CSRF" in r.text
        r = await b.post("/admin/ui/reports", data={**form, "csrf": "0" * 64})
        assert r.status_code == 403
        r = await b.post("/admin/ui/reports", data={**form, "csrf": csrf}, headers={"origin": "https://evil.example"})
        assert r.status_code == 403 and "another site" in r.text
        r = await b.post("/admin/ui/logout", data={"csrf": "nope"})
        assert r.status_code == 403
        r = await b.post("/admin/ui/reports", content=b'{"period": {}}', headers={"content-type": "application/json"})
        assert r.status_code == 415
        assert "No report yet." in (await b.get("/admin/ui")).text  # nothing was created
    assert _entries(settings, "report.created") == []
    refused = _entries(settings, "ui.refused")  # each refused form is on the record, durable before the 403
    assert [e["reason"] for e in refused] == ["csrf", "csrf", "origin", "csrf"]
    assert refused[0]["actor"].startswith("apikey:") and refused[0]["path"] == "/admin/ui/reports"


async def test_bad_form_input_is_shown_on_the_page_and_nothing_is_created(gw) -> None:
    app, settings = gw
    async with _browser(app) as b:
        await _sign_in(b, new_key(settings, "compliance-officer"))
        csrf = _csrf((await b.get("/admin/ui")).text)
        later = (TODAY + timedelta(days=3)).isoformat()
        cases = [
            ({"from": TODAY.isoformat(), "to": (TODAY - timedelta(days=1)).isoformat(), "sections": "inventory"},
             "is before period.from"),
            ({"from": TODAY.isoformat(), "to": later, "sections": "inventory"}, "is in the future"),
            ({"from": "yesterday", "to": TODAY.isoformat(), "sections": "inventory"}, "must be a UTC date"),
            ({"from": TODAY.isoformat(), "to": TODAY.isoformat()}, "sections must be a non-empty list"),
            ({"from": TODAY.isoformat(), "to": TODAY.isoformat(), "sections": "gossip"}, "sections must be"),
        ]  # fmt: skip
        for form, message in cases:
            r = await b.post("/admin/ui/reports", data={**form, "csrf": csrf})
            assert r.status_code == 400 and message in r.text, (form, r.text)
            assert 'id="form-error"' in r.text and 'id="create-report"' in r.text  # the form, with the error
        assert "No report yet." in (await b.get("/admin/ui")).text
    assert _entries(settings, "report.created") == []


async def test_verify_the_ledger_from_the_page(gw) -> None:
    app, settings = gw
    async with _browser(app) as b:
        await _sign_in(b, new_key(settings, "auditor"))
        page = (await b.get("/admin/ui")).text
        assert "not run since the gateway started" in page
        assert "Your roles do not include the compliance reports." in page  # auditors: no reports
        r = await b.post("/admin/ui/ledger/verify", data={"csrf": _csrf(page)})
        assert r.status_code == 303 and r.headers["location"] == "/admin/ui?notice=verified"
        page = (await b.get(r.headers["location"])).text
        assert re.search(r'<span class="ok">verified</span>: \d+ entries', page), page
        assert "The ledger verifies." in page
        first = app.state.gateway.ui.verification
        await b.post("/admin/ui/ledger/verify", data={"csrf": _csrf(page)})
        assert app.state.gateway.ui.verification is first  # a result under a minute old is reused
    async with _browser(app) as b:  # analysts: neither the ledger's sizes nor the policy's status
        await _sign_in(b, new_key(settings, "analyst"))
        page = (await b.get("/admin/ui")).text
        assert "Your roles do not include the ledger's status" in page and "tree size" not in page
        assert "Your roles do not include the policy's status" in page
        r = await b.post("/admin/ui/ledger/verify", data={"csrf": _csrf(page)})
        assert r.status_code == 403 and "route:/admin/reports/sections/integrity" in r.text


async def test_a_revoked_key_ends_the_session_and_sign_out_clears_it(gw) -> None:
    app, settings = gw
    key = new_key(settings, "analyst")
    async with _browser(app) as b:
        await _sign_in(b, key)
        page = (await b.get("/admin/ui")).text
        assert "Your roles do not include the fairness audits' results." in page  # analysts: DP numbers only
        r = await b.post("/admin/ui/logout", data={"csrf": _csrf(page)})
        assert r.status_code == 303 and "gateway-ui=" in r.headers["set-cookie"]
        assert (await b.get("/admin/ui")).status_code == 303
        await _sign_in(b, key)
        assert (await b.get("/admin/ui")).status_code == 200
        store = APIKeyStore(settings.api_keys_db)
        try:
            store.revoke(key.split("_")[1])
        finally:
            store.close()
        r = await b.get("/admin/ui")
        assert r.status_code == 303 and r.headers["location"] == "/admin/ui/login?reason=ended"
        page = await b.get(r.headers["location"])
        assert "Your session has ended; sign in again." in page.text


async def test_the_page_can_be_turned_off(triton, tmp_path: Path) -> None:
    settings = make_settings(triton, tmp_path, ui={"enabled": False})
    app = create_app(settings)
    async with app.router.lifespan_context(app), _browser(app) as b:
        r = await b.get("/admin/ui")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_analysts_create_reports_with_their_sections_only(gw) -> None:
    app, settings = gw
    async with _browser(app) as b:
        await _sign_in(b, new_key(settings, "analyst"))
        page = (await b.get("/admin/ui")).text
        offered = re.findall(r'name="sections" value="([a-z_]+)"', page)
        assert offered == ["inventory", "privacy"]
        form = {"csrf": _csrf(page), "from": TODAY.isoformat(), "to": TODAY.isoformat(),
                "sections": ["inventory", "integrity"]}  # fmt: skip
        r = await b.post("/admin/ui/reports", data=form)
        assert r.status_code == 403 and "route:/admin/reports/sections/integrity" in r.text
        assert 'id="create-report"' in r.text  # the page again, with the error
    assert _entries(settings, "report.created") == []


async def test_messages_come_from_codes_and_odd_input_is_refused_not_crashed(gw) -> None:
    app, settings = gw
    async with _browser(app) as b:
        page = await b.get("/admin/ui/login", params={"reason": "<b>Call 555-0100 to restore access</b>"})
        assert page.status_code == 200 and "555-0100" not in page.text  # no text from the URL
        assert "Your roles do not include this page." in (await b.get("/admin/ui/login?reason=denied")).text
        await _sign_in(b, new_key(settings, "compliance-officer"))
        shown = (await b.get("/admin/ui", params={"notice": "Your password expired: see evil.example"})).text
        assert "evil.example" not in shown
        r = await b.post("/admin/ui/logout", data={"csrf": "é"})  # non-ASCII: compared as bytes, refused
        assert r.status_code == 403
        r = await b.post("/admin/ui/reports", content=b"csrf=\xff\xfe", headers={
            "content-type": "application/x-www-form-urlencoded"})  # fmt: skip
        assert r.status_code == 400 and "URL-encoded UTF-8" in r.text


async def test_behind_a_proxy_the_public_url_is_the_origin(triton, tmp_path: Path) -> None:
    """With ui.public_url, forms must come from the browser's origin (the proxy's), not the gateway's own."""
    settings = make_settings(triton, tmp_path, ui={"public_url": "http://compliance.example"})
    app = create_app(settings)
    async with app.router.lifespan_context(app), _browser(app) as b:
        key = new_key(settings, "compliance-officer")
        r = await b.post("/admin/ui/login", data={"api_key": key}, headers={"origin": "http://gw"})
        assert r.status_code == 403 and "another site" in r.text
        r = await b.post("/admin/ui/login", data={"api_key": key}, headers={"origin": "http://compliance.example"})
        assert r.status_code == 303
        assert (await b.get("/admin/ui")).status_code == 200
