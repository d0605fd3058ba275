"""The fairness section over a real probe audit of the test model ``biased-screener``: every audit of the period
with its checks, thresholds and intervals, and charts in the PDF."""

from __future__ import annotations

import io
from pathlib import Path

import jsonschema
import orjson
import pytest
from pypdf import PdfReader

from gateway.reports.sign import check_signature
from tests.conftest import create_app, make_settings, new_key
from tests.fairness.test_probe_audit_e2e import policy_folder
from tests.reports.test_reports_api import SCHEMA, _client, _report, _today

pytestmark = pytest.mark.triton


async def test_a_probe_audit_in_the_period_is_in_the_report_with_its_charts(triton, tmp_path: Path) -> None:
    """Checks with thresholds and intervals, per-group selection rates with intervals, a trend series; the PDF
    holds the audit and one chart image per audit plus one per trend."""
    settings = make_settings(triton, tmp_path, policy={"dir": policy_folder(tmp_path), "watch": False})
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        (audit,) = await app.state.gateway.fairness.run("screening-test", requested_by="test")
        async with _client(app, new_key(settings, "compliance-officer")) as officer:
            status = await _report(officer, _today(), sections=["fairness"])
            assert status["status"] == "done", status
            doc = orjson.loads((await officer.get(f"/admin/reports/{status['id']}.json")).content)
            pdf = (await officer.get(f"/admin/reports/{status['id']}.pdf")).content
    jsonschema.validate(doc, SCHEMA)
    fairness = check_signature(doc)["sections"]["fairness"]
    (a,) = fairness["audits"]
    assert (a["name"], a["model"], a["status"]) == ("screening-test", "biased-screener", audit.status)
    assert a["thresholds"] and len(a["checks"]) == sum(len(x.checks) for x in audit.attributes)
    assert {c["attribute"] for c in a["checks"]} == {x.attribute for x in audit.attributes}
    assert all(c["threshold"] is not None and c["status"] in ("pass", "fail", "insufficient_data")
               for c in a["checks"])  # fmt: skip
    rates = a["selection_rates"]
    assert rates and all(r["low"] <= r["value"] <= r["high"] for r in rates)
    assert fairness["summary"]["audits"] == 1 and fairness["trends"]
    reader = PdfReader(io.BytesIO(pdf))
    text = " ".join(p.extract_text() for p in reader.pages)
    assert "screening-test" in text and "Trends across model versions" in text
    images = sum(len(p.images) for p in reader.pages)
    assert images == 1 + len([t for t in fairness["trends"] if t["points"]][:12])
