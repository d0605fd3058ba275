"""Compliance reports end to end: real traffic through the gateway into the ledger, a report over the API, its
three files, its signature and ledger entry, and the CLI."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import orjson
import pytest
from click.testing import CliRunner
from pypdf import PdfReader

from gateway.cli import main
from gateway.reports.sign import ReportSignatureError, check_signature, report_digest
from ledger.store import open_store
from tests.conftest import POLICIES, ROOT, create_app, make_settings, new_key

TODAY = datetime.now(UTC).date()
CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
SCHEMA = json.loads((ROOT / "docs" / "report.schema.json").read_text())


@pytest.fixture
async def gw(triton, tmp_path: Path):
    folder = tmp_path / "policies"
    shutil.copytree(POLICIES, folder)
    with (folder / "policy.csv").open("a") as f:
        f.write("p, role:user, model:echo*, infer, allow\np, role:user, model:broken*, infer, allow\n")
        f.write("p, role:user, model:counter*, infer, allow\n")
    settings = make_settings(triton, tmp_path, policy={"dir": folder, "watch": False})
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app, settings


def _client(app: Any, key: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://gw", headers={"authorization": f"Bearer {key}"})


async def _traffic(app: Any, settings: Any) -> None:
    """Requests, a fallback, personal data in a prompt, a denial and an authentication failure."""
    async with _client(app, new_key(settings, "user", owner="carol")) as user:
        for _ in range(3):
            assert (await user.post("/v1/chat/completions", json=CHAT)).status_code == 200
        pii = {**CHAT, "messages": [{"role": "user", "content": "mail me at jane.doe@example.com"}]}
        assert (await user.post("/v1/chat/completions", json=pii)).status_code == 200
        r = await user.post("/v1/chat/completions", json={**CHAT, "model": "broken"})
        assert r.status_code == 200 and r.headers.get("x-gateway-fallback") == "true"
        assert (await user.get("/admin/stats")).status_code == 403
    async with _client(app, "sk-not-a-key") as stranger:
        assert (await stranger.get("/v1/models")).status_code == 401


async def _report(client: httpx.AsyncClient, period: dict[str, str], **extra: Any) -> dict[str, Any]:
    r = await client.post("/admin/reports", json={"period": period, **extra})
    assert r.status_code == 202, r.text
    rid = r.json()["id"]
    deadline = time.monotonic() + 120
    while True:
        status = (await client.get(f"/admin/reports/{rid}")).json()
        if status["status"] in ("done", "failed"):
            return dict(status)
        assert time.monotonic() < deadline, f"report {rid} still {status['status']}"
        await asyncio.sleep(0.05)


def _today() -> dict[str, str]:
    return {"from": TODAY.isoformat(), "to": TODAY.isoformat()}


async def test_a_report_over_real_traffic_holds_every_section_signed_and_in_the_ledger(gw) -> None:
    """Sections present, numbers from DP releases, PDF text matches the JSON, signature and ledger entry."""
    app, settings = gw
    await _traffic(app, settings)
    async with _client(app, new_key(settings, "compliance-officer", owner="ana")) as officer:
        status = await _report(officer, _today())
        assert status["status"] == "done", status
        rid = status["id"]
        files = {}
        for fmt, media in (("json", "application/json"), ("csv", "text/csv"), ("pdf", "application/pdf")):
            r = await officer.get(f"/admin/reports/{rid}.{fmt}")
            assert r.status_code == 200 and r.headers["content-type"].startswith(media)
            assert r.headers["content-disposition"] == f'attachment; filename="report-{rid}.{fmt}"'
            files[fmt] = r.content
            again = await officer.get(f"/admin/reports/{rid}.{fmt}", headers={"if-none-match": r.headers["etag"]})
            assert again.status_code == 304 and again.content == b""
        key = (await officer.get("/admin/reports/key")).json()
        listed = (await officer.get("/admin/reports")).json()["data"]
        assert [x["id"] for x in listed] == [rid]
    document = orjson.loads(files["json"])
    jsonschema.validate(document, SCHEMA)
    body = check_signature(document, pinned_key=key["public_key"])
    assert body["empty"] is False and list(body["sections"]) == [
        "inventory", "access_control", "privacy", "fairness", "operations", "integrity"]  # fmt: skip
    s = body["sections"]
    assert {m["name"] for m in s["inventory"]["models"]} >= {"echo", "broken", "biased-screener"}
    assert s["access_control"]["authentication_failures"]["count"] == 1
    assert s["access_control"]["policy_changes"][0]["outcome"] == "loaded"
    for section, name in (("operations", "requests"), ("operations", "fallbacks"), ("access_control", "denials"),
                          ("privacy", "pii_detections")):  # fmt: skip
        rel = s[section][name]
        assert rel["released"] is True and rel["privacy"]["epsilon"] == settings.reports.epsilon_per_statistic
        assert rel["budget"]["consumer"].startswith("apikey:")
    ops = s["operations"]
    noisy = [sum(g["value"] for g in ops[n]["groups"]) for n in ("errors", "requests")]
    assert ops["error_rate"] == (round(min(1.0, noisy[0] / noisy[1]), 4) if noisy[1] > 0 else None)
    entities = {g["entity"] for g in s["privacy"]["pii_detections"]["groups"]}
    assert "EMAIL_ADDRESS" in entities
    assert s["integrity"]["verification"]["ok"] is True and s["integrity"]["entries_in_period"] > 10
    assert {c["id"] for c in body["controls"]} >= {"gdpr-art5-1c", "gdpr-art30", "euaiact-art12"}
    # the files are the ones the body names, and the ledger holds the report's digest
    assert body["files"]["pdf"]["sha256"] == status["digests"]["pdf_sha256"]
    assert report_digest(body) == status["digests"]["report_sha256"]
    store = open_store(settings.ledger_store())
    try:
        entry = orjson.loads(next(iter(store.read(status["ledger"]["log"], status["ledger"]["seq"])))[2])
    finally:
        store.close()
    assert entry["kind"] == "report.created" and entry["data"]["report_sha256"] == report_digest(body)
    # the PDF opens, and its text holds the section titles and the JSON's numbers
    text = " ".join(page.extract_text() for page in PdfReader(io.BytesIO(files["pdf"])).pages)
    for title in ("Inventory", "Access control", "Privacy", "Fairness", "Operations", "Integrity",
                  "Mapping to controls"):  # fmt: skip
        assert title in text
    pages = PdfReader(io.BytesIO(files["pdf"])).pages
    assert [f"Page {n} of {len(pages)}" in p.extract_text() for n, p in enumerate(pages, 1)] == [True] * len(pages)
    for g in s["operations"]["requests"]["groups"]:
        assert f"{g['value']}" in text
    assert rid in text and str(s["integrity"]["entries_in_period"]) in text
    csv_text = files["csv"].decode()
    assert csv_text.startswith("section,table,row,column,value\n")
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    values = [float(r["value"]) for r in rows if (r["section"], r["table"], r["column"]) == (
        "operations", "requests.groups", "value")]  # fmt: skip
    assert values == [g["value"] for g in s["operations"]["requests"]["groups"]]
    failures = [r["value"] for r in rows if (r["section"], r["column"]) == ("access_control",
                "authentication_failures.count")]  # fmt: skip
    assert failures == ["1"]


async def test_one_changed_byte_fails_verification(gw, tmp_path: Path) -> None:
    """The CLI verifies a downloaded report and its PDF; one byte changed in either fails, with exit 1."""
    app, settings = gw
    async with _client(app, new_key(settings, "compliance-officer", owner="ana")) as officer:
        status = await _report(officer, _today(), sections=["inventory", "integrity"])
        rid = status["id"]
        doc = (await officer.get(f"/admin/reports/{rid}.json")).content
        pdf = (await officer.get(f"/admin/reports/{rid}.pdf")).content
    (tmp_path / "r.json").write_bytes(doc)
    (tmp_path / "r.pdf").write_bytes(pdf)
    config = tmp_path / "gateway.yaml"
    config.write_text(f"state_dir: {tmp_path}\n")
    runner = CliRunner()
    ok = runner.invoke(main, ["report", "verify", str(tmp_path / "r.json"), "--pdf", str(tmp_path / "r.pdf"),
                              "--config", str(config)])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    assert "signature: valid" in ok.output and "ledger: report.created" in ok.output
    # one byte of the JSON body (a digit of the period) changed: the signature no longer verifies
    document = orjson.loads(doc)
    i = doc.index(b'"entries_in_period"')
    j = i + len(b'"entries_in_period": ')
    flipped = doc[:j] + (b"9" if doc[j : j + 1] != b"9" else b"8") + doc[j + 1 :]
    with pytest.raises(ReportSignatureError):
        check_signature(orjson.loads(flipped))
    (tmp_path / "bad.json").write_bytes(flipped)
    bad = runner.invoke(main, ["report", "verify", str(tmp_path / "bad.json"), "--config", str(config)])
    assert bad.exit_code == 1 and "does not verify" in bad.output
    # one byte of the PDF changed: its digest no longer matches the signed one
    (tmp_path / "bad.pdf").write_bytes(pdf[:100] + bytes([pdf[100] ^ 1]) + pdf[101:])
    bad = runner.invoke(main, ["report", "verify", str(tmp_path / "r.json"), "--pdf", str(tmp_path / "bad.pdf"),
                               "--config", str(config)])  # fmt: skip
    assert bad.exit_code == 1 and "PDF" in bad.output
    assert document["report"]["id"] == rid


async def test_a_role_without_report_gets_403(gw) -> None:
    """A user (no ``report`` on /admin/reports) can neither create nor read reports."""
    app, settings = gw
    async with _client(app, new_key(settings, "user")) as user:
        r = await user.post("/admin/reports", json={"period": _today()})
        assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
        assert (await user.get("/admin/reports")).status_code == 403


async def test_an_empty_period_gives_a_valid_report_that_says_so(gw) -> None:
    """A period before the ledger began: valid, signed, ``empty`` true, the summary and the PDF say so."""
    app, settings = gw
    old = {"from": (TODAY - timedelta(days=40)).isoformat(), "to": (TODAY - timedelta(days=35)).isoformat()}
    async with _client(app, new_key(settings, "compliance-officer")) as officer:
        status = await _report(officer, old)
        assert status["status"] == "done", status
        doc = orjson.loads((await officer.get(f"/admin/reports/{status['id']}.json")).content)
        pdf = (await officer.get(f"/admin/reports/{status['id']}.pdf")).content
        only = await _report(officer, old, sections=["fairness"])  # without the integrity section too
        only_doc = orjson.loads((await officer.get(f"/admin/reports/{only['id']}.json")).content)
    assert check_signature(only_doc)["empty"] is True
    assert check_signature(only_doc)["summary"]["note"] == "The ledger holds no entries in this period."
    jsonschema.validate(doc, SCHEMA)
    body = check_signature(doc)
    assert body["empty"] is True and body["summary"]["ledger_entries_in_period"] == 0
    assert body["sections"]["fairness"]["audits"] == [] and body["sections"]["access_control"]["policy_changes"] == []
    text = " ".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf)).pages)
    assert "no entries in this period" in text


@pytest.mark.parametrize(("body", "param"), [
    ({"period": {"from": "2026-13-01", "to": "2026-01-02"}}, "period.from"),
    ({"period": {"from": "2026-01-02", "to": "2026-01-01"}}, "period.to"),
    ({"period": {"from": "2020-01-01", "to": "2020-12-31"}}, "period"),
    ({"period": {"from": "2026-01-01", "to": "9999-01-01"}}, "period.to"),
    ({"period": {"from": "2026-01-01", "to": "2026-01-02"}, "sections": ["gossip"]}, "sections"),
    ({"period": {"from": "2026-01-01", "to": "2026-01-02"}, "extra": 1}, "extra"),
])  # fmt: skip
async def test_bad_requests_name_the_member(gw, body: dict[str, Any], param: str) -> None:
    """Each malformed request is a 400 naming the offending member, and queues nothing."""
    app, settings = gw
    async with _client(app, new_key(settings, "compliance-officer")) as officer:
        r = await officer.post("/admin/reports", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param
        assert (await officer.get("/admin/reports")).json()["data"] == []
        missing = await officer.get("/admin/reports/" + "0" * 32 + ".pdf")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "report_not_found"


async def test_analysts_get_only_the_sections_whose_numbers_are_private(gw) -> None:
    """Sections with exact figures (the ledger's extent, policy changes, per-group fairness rates) need their own
    permission: an analyst's report covers inventory and privacy, a section beyond them is 403 (recorded), and a
    report that holds one cannot be downloaded by an analyst."""
    app, settings = gw
    async with _client(app, new_key(settings, "analyst", owner="ana")) as analyst, \
            _client(app, new_key(settings, "compliance-officer", owner="olivia")) as officer:  # fmt: skip
        own = await _report(analyst, _today())  # no sections named: the ones an analyst may read
        assert own["status"] == "done" and own["sections"] == ["inventory", "privacy"]
        doc = orjson.loads((await analyst.get(f"/admin/reports/{own['id']}.json")).content)
        assert set(doc["report"]["sections"]) == {"inventory", "privacy"}
        for section in ("integrity", "fairness", "access_control", "operations"):
            r = await analyst.post("/admin/reports", json={"period": _today(), "sections": ["inventory", section]})
            assert r.status_code == 403, r.text
            assert (
                r.json()["error"]["message"] == f"permission denied: report on route:/admin/reports/sections/{section}"
            )
        full = await _report(officer, _today())
        assert full["sections"] == ["inventory", "access_control", "privacy", "fairness", "operations", "integrity"]
        for fmt in ("json", "csv", "pdf"):
            assert (await analyst.get(f"/admin/reports/{full['id']}.{fmt}")).status_code == 403
        assert (await analyst.get(f"/admin/reports/{full['id']}")).status_code == 200  # its status: no numbers
        listed = {r["id"] for r in (await analyst.get("/admin/reports")).json()["data"]}
        assert listed == {own["id"], full["id"]}
    store = open_store(settings.ledger_store())
    try:
        entries = [json.loads(b) for _, _, b in store.read(settings.ledger.origin)]
    finally:
        store.close()
    denied = {e["data"]["object"] for e in entries if e["kind"] == "authz.decision" and not e["data"]["allowed"]}
    assert "route:/admin/reports/sections/integrity" in denied
    assert [e["data"]["id"] for e in entries if e["kind"] == "report.created"] == [own["id"], full["id"]]


async def test_a_caller_queues_a_bounded_number_of_reports(triton, tmp_path: Path) -> None:
    settings = make_settings(triton, tmp_path, reports={"max_queued": 1})
    app = create_app(settings)
    async with app.router.lifespan_context(app), _client(app, new_key(settings, "compliance-officer")) as officer:
        first = await officer.post("/admin/reports", json={"period": _today(), "sections": ["inventory"]})
        assert first.status_code == 202
        second = await officer.post("/admin/reports", json={"period": _today(), "sections": ["inventory"]})
        assert second.status_code == 429 and second.json()["error"]["code"] == "too_many_reports"
        assert int(second.headers["retry-after"]) > 0
        store = open_store(settings.ledger_store())
        try:  # the refusal is on the record, durable before the 429
            refused = [json.loads(b) for _, _, b in store.read(settings.ledger.origin)]
        finally:
            store.close()
        assert [e["data"]["reason"] for e in refused if e["kind"] == "report.refused"] == ["too_many_reports"]
        for _ in range(2400):  # once the first is done, the caller may ask again
            if (await officer.get(f"/admin/reports/{first.json()['id']}")).json()["status"] == "done":
                break
            await asyncio.sleep(0.05)
        assert (
            await officer.post("/admin/reports", json={"period": _today(), "sections": ["inventory"]})
        ).status_code == 202
