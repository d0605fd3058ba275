"""Reports beyond the happy path: a spent privacy budget, a broken controls file, a gateway stopped mid-report,
and ``gateway report create`` against a real TLS gateway."""

from __future__ import annotations

import shutil
from pathlib import Path

import jsonschema
import orjson
import pytest
from click.testing import CliRunner
from pypdf import PdfReader

from gateway.cli import main
from gateway.errors import ConfigError
from gateway.reports.service import report_signer
from gateway.reports.sign import check_signature
from tests.conftest import POLICIES, create_app, make_settings, new_key
from tests.reports.test_reports_api import SCHEMA, _client, _report, _today

pytestmark = pytest.mark.triton


async def test_a_spent_budget_leaves_tables_unreleased_never_exact(triton, tmp_path: Path) -> None:
    """At epsilon 1 per table, a compliance officer's 3.0 covers three of the five tables; the other two say why they
    are missing and hold no number. Asked again, the three come from the cache and the others still fail."""
    settings = make_settings(triton, tmp_path, reports={"epsilon_per_statistic": 1.0})
    app = create_app(settings)
    async with app.router.lifespan_context(app), _client(app, new_key(settings, "compliance-officer")) as officer:
        bodies = []
        for _ in range(2):
            status = await _report(officer, _today())
            assert status["status"] == "done", status
            doc = orjson.loads((await officer.get(f"/admin/reports/{status['id']}.json")).content)
            jsonschema.validate(doc, SCHEMA)
            bodies.append(check_signature(doc))
    for body in bodies:
        s = body["sections"]
        tables = [s["operations"]["requests"], s["operations"]["errors"], s["operations"]["fallbacks"],
                  s["access_control"]["denials"], s["privacy"]["pii_detections"]]  # fmt: skip
        assert [t["released"] for t in tables] == [True, True, True, False, False]
        for t in tables[3:]:
            assert "budget" in t["reason"] and "groups" not in t
    first, second = bodies
    assert first["summary"]["epsilon_spent_by_this_report"] == 3.0
    assert second["summary"]["epsilon_spent_by_this_report"] == 0.0
    assert all(second["sections"]["operations"][n]["cached"] for n in ("requests", "errors", "fallbacks"))


async def test_a_broken_controls_file_fails_the_report_with_its_reason(triton, tmp_path: Path) -> None:
    """An unknown section in controls.yaml: the report fails naming the file and key, and has no files."""
    folder = tmp_path / "policies"
    shutil.copytree(POLICIES, folder)
    text = (folder / "controls.yaml").read_text().replace("sections: [privacy]\n", "sections: [privacy, gossip]\n", 1)
    (folder / "controls.yaml").write_text(text)
    settings = make_settings(triton, tmp_path, policy={"dir": folder, "watch": False})
    app = create_app(settings)
    async with app.router.lifespan_context(app), _client(app, new_key(settings, "compliance-officer")) as officer:
        status = await _report(officer, _today())
        assert status["status"] == "failed" and status["files"] is None
        assert "controls.yaml: controls.0.sections" in status["error"] and "gossip" in status["error"]
        r = await officer.get(f"/admin/reports/{status['id']}.pdf")
        assert r.status_code == 409 and r.json()["error"]["code"] == "report_not_ready"


async def test_a_report_the_gateway_stopped_during_is_failed_after_a_restart(triton, tmp_path: Path) -> None:
    """The gateway stops right after accepting a report: started again, it reports it failed (interrupted)."""
    settings = make_settings(triton, tmp_path)
    key = new_key(settings, "compliance-officer")
    app = create_app(settings)
    async with app.router.lifespan_context(app), _client(app, key) as officer:
        r = await officer.post("/admin/reports", json={"period": _today()})
        assert r.status_code == 202 and r.json()["status"] == "pending"
        rid = r.json()["id"]
    app = create_app(settings)
    async with app.router.lifespan_context(app), _client(app, key) as officer:
        status = (await officer.get(f"/admin/reports/{rid}")).json()
    assert status["status"] == "failed" and status["error"].startswith("interrupted")


def test_report_create_shows_progress_and_saves_the_file(live, tmp_path: Path) -> None:
    """``gateway report create`` through a real TLS gateway: progress on stderr, the PDF saved, and it verifies
    with the JSON fetched the same way."""
    server = live()
    runner = CliRunner()
    common = ["--url", server.url, "--ca-file", str(server.ca_file), "--api-key", server.api_key,
              "--from", _today()["from"], "--to", _today()["to"]]  # fmt: skip
    out = tmp_path / "r.pdf"
    made = runner.invoke(main, ["report", "create", *common, "--format", "pdf", "-o", str(out)])
    assert made.exit_code == 0, made.output
    steps = made.stderr.strip().splitlines()  # which steps a poll sees depends on timing: only the last is fixed
    assert steps and all(s.startswith("report ") for s in steps) and steps[-1].endswith(": done")
    assert f"{out} (" in made.stdout
    assert "Compliance report" in PdfReader(out).pages[0].extract_text()
    as_json = tmp_path / "r.json"
    made = runner.invoke(main, ["report", "create", *common, "--format", "json", "-o", str(as_json)])
    assert made.exit_code == 0, made.output
    config = tmp_path / "gateway.yaml"
    config.write_text(f"state_dir: {server.settings.state_dir}\n")
    checked = runner.invoke(main, ["report", "verify", str(as_json), "--config", str(config)])
    assert checked.exit_code == 0, checked.output
    bad = runner.invoke(main, ["report", "create", *common[:6], "--from", "2026-01-02", "--to", "2026-01-01"])
    assert bad.exit_code == 1 and "400" in bad.output and "before" in bad.output


async def test_a_report_key_others_can_read_stops_the_start(triton, tmp_path: Path) -> None:
    """Fail closed: the gateway does not start with a report signing key of mode 0644, and says which."""
    settings = make_settings(triton, tmp_path)
    key = settings.reports_dir() / "report.key"
    report_signer(settings)
    key.chmod(0o644)
    app = create_app(settings)
    with pytest.raises(ConfigError, match=r"reports.signing_key: .*report.key has mode 0644"):
        async with app.router.lifespan_context(app):
            pass
