"""The compliance page in a real headless Chromium (Debian's, driven by Playwright with ``executable_path``),
against a real TLS gateway and a real OpenID Connect provider (tests/idp): sign in through the provider, create a
report with the page's form, wait for it (the page refreshes itself; no JavaScript), download the PDF, and keep
a screenshot. Then sign in with an API key in a fresh browser context.

The screenshot is kept in ``$GATEWAY_TEST_ARTIFACTS`` (default ``build/test-artifacts/``)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from pypdf import PdfReader

from gateway.reports.controls import SECTIONS, TITLES
from tests.conftest import ROOT, new_key
from tests.idp.provider import start_idp

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("GATEWAY_TEST_ARTIFACTS", ROOT / "build" / "test-artifacts"))
AUDIENCE = "llm-gateway"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (scripts/bootstrap "
                                                          "installs it where it may run apt-get)")  # fmt: skip


def _free_port() -> int:
    """A port for the gateway, known before it starts: the provider must know the redirect URI first."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def stack(triton: Any, tmp_path: Path, live: Any) -> Any:
    port = _free_port()
    callback = f"https://127.0.0.1:{port}/admin/ui/callback"
    accounts = {"olivia": ["compliance-officer"], "uma": ["user"]}
    with start_idp(tmp_path, client_id="gateway-ui", redirect_uris=[callback], audience=AUDIENCE,
                   accounts=accounts) as idp:  # fmt: skip
        jwt = {"issuer": idp.issuer, "audience": AUDIENCE, "jwks_url": idp.jwks_url}
        server = live(server={"host": "127.0.0.1", "port": port}, auth={"jwt": jwt},
                      ui={"oidc": {"issuer": idp.issuer, "client_id": "gateway-ui"}})  # fmt: skip
        yield server, idp


async def test_sign_in_create_and_download_a_report_in_chromium(stack: Any, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    server, _ = stack
    await asyncio.to_thread(ARTIFACTS.mkdir, parents=True, exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            context = await browser.new_context(ignore_https_errors=True, accept_downloads=True,
                                                viewport={"width": 1280, "height": 900})  # fmt: skip
            page = await context.new_page()
            await page.goto(f"{server.url}/admin/ui")
            assert page.url.endswith("/admin/ui/login")
            await page.click("#sso")  # to the identity provider's sign-in page
            await page.fill("input[name=login]", "olivia")
            await page.fill("input[name=password]", "any")
            await page.click("button[type=submit]")
            await page.wait_for_url(f"{server.url}/admin/ui", timeout=30_000)  # back, through the callback
            assert await page.text_content("#subject") == "user:olivia"

            await page.click("#create")  # the form's defaults: the last 30 days, every section
            await page.wait_for_selector(".notice")
            link = page.locator("a.pdf").first
            await link.wait_for(timeout=180_000)  # the page refreshes itself every 5 s until the report is done
            async with page.expect_download() as info:
                await link.click()
            download = await info.value
            pdf_path = tmp_path / download.suggested_filename
            await download.save_as(pdf_path)
            await page.screenshot(path=str(ARTIFACTS / "ui-compliance-page.png"), full_page=True)
        finally:
            await browser.close()
    rid = download.suggested_filename.removeprefix("report-").removesuffix(".pdf")
    text = "\n".join(p.extract_text() for p in PdfReader(pdf_path).pages)
    for section in SECTIONS:
        assert TITLES[section] in text, section
    async with server.client(new_key(server.settings, "compliance-officer")) as api:
        r = await api.get(f"/admin/reports/{rid}.pdf")
        assert r.status_code == 200 and r.content == pdf_path.read_bytes()  # the very file, byte for byte
        status = (await api.get(f"/admin/reports/{rid}")).json()
        assert status["requested_by"] == "user:olivia"  # the report is in the provider's user's name
    assert (ARTIFACTS / "ui-compliance-page.png").stat().st_size > 10_000


async def test_api_key_sign_in_and_a_role_without_the_page_in_chromium(stack: Any) -> None:
    from playwright.async_api import async_playwright

    server, _ = stack
    key = new_key(server.settings, "auditor", owner="ada")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = await (await browser.new_context(ignore_https_errors=True)).new_page()
            await page.goto(f"{server.url}/admin/ui/login")
            await page.fill("#api_key", key)
            await page.click("#sign-in")
            await page.wait_for_url(f"{server.url}/admin/ui")
            assert (await page.text_content("#subject") or "").startswith("apikey:")
            await page.click("#verify")
            await page.wait_for_selector("#verification .ok", timeout=60_000)
            await page.click("#sign-out")
            await page.wait_for_url(f"{server.url}/admin/ui/login?**")

            page = await (await browser.new_context(ignore_https_errors=True)).new_page()
            await page.goto(f"{server.url}/admin/ui/login")
            await page.click("#sso")
            await page.fill("input[name=login]", "uma")  # a plain user: the provider signs her in, policy says no
            await page.fill("input[name=password]", "any")
            response_wait = page.wait_for_url(f"{server.url}/admin/ui/callback?**")
            await page.click("button[type=submit]")
            await response_wait
            assert "permission denied: report on route:/admin/ui" in (await page.content())
        finally:
            await browser.close()
    async with httpx.AsyncClient(verify=server.ssl_context(), base_url=server.url) as anon:
        assert (await anon.get("/admin/ui", follow_redirects=False)).status_code == 303
