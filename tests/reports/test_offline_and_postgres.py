"""A report verified offline from a proof bundle of its ledger entry, and reports kept in PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from gateway.cli import main
from tests.conftest import create_app, make_settings, new_key
from tests.reports.test_reports_api import _client, _report, _today

pytestmark = pytest.mark.triton


async def test_verify_offline_with_the_proof_bundle_of_the_entry(triton, tmp_path: Path) -> None:
    """``report verify --proof`` checks the entry's inclusion under the pinned ledger key, with no store."""
    settings = make_settings(triton, tmp_path)
    app = create_app(settings)
    async with app.router.lifespan_context(app), _client(app, new_key(settings, "compliance-officer")) as officer:
        status = await _report(officer, _today(), sections=["inventory"])
        doc = (await officer.get(f"/admin/reports/{status['id']}.json")).content
    (tmp_path / "r.json").write_bytes(doc)
    config = tmp_path / "gateway.yaml"
    config.write_text(f"state_dir: {tmp_path}\n")
    run = CliRunner().invoke
    proof = run(main, ["ledger", "proof", "--config", str(config), str(status["ledger"]["seq"])])
    assert proof.exit_code == 0, proof.output
    (tmp_path / "proof.json").write_text(proof.output)
    vkey = run(main, ["ledger", "key", "--config", str(config)]).output.strip()
    elsewhere = tmp_path / "elsewhere.yaml"  # no ledger there: the check must not need one
    elsewhere.write_text(f"state_dir: {tmp_path / 'nothing'}\n")
    ok = run(main, ["report", "verify", str(tmp_path / "r.json"), "--proof", str(tmp_path / "proof.json"),
                    "--ledger-key", vkey, "--config", str(elsewhere)])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    assert "ledger: report.created at " in ok.output and not (tmp_path / "nothing").exists()
    # a proof of another entry is not this report's entry
    other = run(main, ["ledger", "proof", "--config", str(config), "0"])
    (tmp_path / "other.json").write_text(other.output)
    bad = run(main, ["report", "verify", str(tmp_path / "r.json"), "--proof", str(tmp_path / "other.json")])
    assert bad.exit_code == 1 and "not the report.created entry of this report" in bad.output
    # an edited entry in the bundle fails the proof
    bundle = json.loads(proof.output)
    bundle["entry"]["data"]["report_sha256"] = "0" * 64
    (tmp_path / "edited.json").write_text(json.dumps(bundle))
    bad = run(main, ["report", "verify", str(tmp_path / "r.json"), "--proof", str(tmp_path / "edited.json")])
    assert bad.exit_code == 1 and "proof bundle does not verify" in bad.output


async def test_reports_and_their_files_live_in_postgresql(triton, tmp_path: Path, pg_url: str) -> None:
    """With a PostgreSQL ledger, a report's row and files are in that database: a second gateway process on it
    lists the report and serves the same bytes."""
    settings = make_settings(triton, tmp_path, ledger={"store": pg_url, "chain": {"enabled": False},
                                                       "origin": "reports.test/pg"})  # fmt: skip
    key = new_key(settings, "compliance-officer")
    app = create_app(settings)
    async with app.router.lifespan_context(app), _client(app, key) as officer:
        status = await _report(officer, _today(), sections=["inventory", "integrity"])
        assert status["status"] == "done", status
        pdf = (await officer.get(f"/admin/reports/{status['id']}.pdf")).content
    again = create_app(settings)
    async with again.router.lifespan_context(again), _client(again, key) as officer:
        assert status["id"] in [r["id"] for r in (await officer.get("/admin/reports")).json()["data"]]
        assert (await officer.get(f"/admin/reports/{status['id']}.pdf")).content == pdf
        doc = orjson.loads((await officer.get(f"/admin/reports/{status['id']}.json")).content)
    assert doc["report"]["sections"]["integrity"]["verification"]["ok"] is True
