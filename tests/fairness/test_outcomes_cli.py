"""``gateway fairness outcomes upload`` against a real TLS gateway, and ``gateway fairness run`` of an outcome audit:
the upload goes through the gateway's authorization and ledger, the run writes the CLI's own log and the shared
results store, and exits 1 when the audit fails."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from click.testing import CliRunner

from backends.local.launcher import LocalTriton
from gateway.cli import main
from gateway.fairness.store import DecisionRow, FairnessStore, fairness_url
from ledger.store import open_store
from tests.conftest import LiveServer, new_key
from tests.fairness.test_outcome_audit_e2e import policy_folder

pytestmark = pytest.mark.triton

IDS = [f"{i:032x}" for i in range(1, 61)]


def seed(url: str) -> dict[str, int]:
    """60 decisions of biased-screener v1: north approved when the outcome is 1, south never; the outcomes."""
    store = FairnessStore(url)
    now = time.time()
    truth = {rid: i % 2 for i, rid in enumerate(IDS)}
    try:
        store.add_decisions([DecisionRow(rid, "screener-outcomes", "biased-screener", "1",
                                         truth[rid] if i < 30 else 0, "north" if i < 30 else "south", now - 60,
                                         now + 86400) for i, rid in enumerate(IDS)])  # fmt: skip
    finally:
        store.close()
    return truth


def test_upload_then_run_an_outcome_audit(live: Callable[..., LiveServer], triton: LocalTriton, tmp_path: Path) -> None:
    """A bad file is refused with the gateway's message and imports nothing; the good one is imported; the audit
    run from the command line fails equal opportunity, prints each group, and is served by the API."""
    policies = policy_folder(tmp_path)
    server = live(policy={"dir": policies, "watch": False}, fairness={"scheduler": False})
    settings = server.settings
    truth = seed(fairness_url(settings.ledger_store()))
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(yaml.safe_dump({
        "state_dir": str(settings.state_dir), "local_triton": {"enabled": False},
        "backends": {"triton": {"kind": "triton", "url": triton.grpc_url}},
        "models": [{"name": "biased-screener", "backend": "triton", "version": "1"}],
        "policy": {"dir": str(policies), "watch": False}, "ledger": {"chain": {"enabled": False}},
    }))  # fmt: skip
    key = new_key(settings, "outcome-uploader", owner="lending-team")
    client = ["--config", str(cfg), "--url", server.url, "--ca-file", str(server.ca_file), "--api-key", key]
    run = CliRunner().invoke

    bad = tmp_path / "bad.csv"
    bad.write_text("request_id,outcome\n" + "".join(f"{rid},{o}\n" for rid, o in truth.items()) + f"{IDS[0]},1\n")
    refused = run(main, ["fairness", "outcomes", "upload", str(bad), *client])
    assert refused.exit_code == 1 and f"422: line 62: request id {IDS[0]} is also on line 2" in refused.output

    good = tmp_path / "outcomes.csv"
    good.write_text("request_id,outcome\n" + "".join(f"{rid},{o}\n" for rid, o in truth.items()))
    uploaded = run(main, ["fairness", "outcomes", "upload", str(good), *client])
    assert uploaded.exit_code == 0, uploaded.output
    assert "uploaded 60 outcomes (30 positive) for biased-screener (60)" in uploaded.output

    shown = run(main, ["fairness", "run", "screener-outcomes", "--config", str(cfg)])
    assert shown.exit_code == 1, shown.output
    assert "screener-outcomes on biased-screener (version 1): FAIL" in shown.output
    assert "in log llm-gateway.local/default/fairness" in shown.output
    lines = {line.split()[0]: line.split() for line in shown.output.splitlines() if line.startswith("  ")}
    assert lines["north"][1:4] == ["30", "30", "0"] and lines["north"][5:] == ["1.000", "0.000", "1.000"]
    assert lines["south"][5:] == ["0.000", "0.000", "0.500"]
    failed = [line.split()[1] for line in shown.output.splitlines() if line.startswith("  fail ")]
    assert "equal_opportunity_difference:" in failed and "accuracy_drop:" in failed
    as_json = run(main, ["fairness", "run", "screener-outcomes", "--config", str(cfg), "--json"])
    (report,) = json.loads(as_json.stdout)
    checks = {c["metric"]: c["status"] for c in report["checks"]}
    assert checks["equal_opportunity_difference"] == "fail" and report["reference"]["equal_opportunity_difference"] == 1

    auditor = new_key(settings, "auditor")
    listed = httpx.get(f"{server.url}/admin/fairness/audits", params={"name": "screener-outcomes"},
                       headers={"authorization": f"Bearer {auditor}"}, verify=server.ssl_context()).json()  # fmt: skip
    assert [(a["kind"], a["version"], a["ledger"]["log"]) for a in listed["data"]] == [
        ("outcome", "1", "llm-gateway.local/default/fairness")] * 2  # fmt: skip
    store = open_store(settings.ledger_store())
    try:
        own = [orjson.loads(b)["kind"] for _, _, b in store.read("llm-gateway.local/default/fairness")]
        served: list[dict[str, Any]] = [orjson.loads(b) for _, _, b in store.read(settings.ledger.origin)]
    finally:
        store.close()
    assert own.count("fairness.audit") == 2 and "fairness.outcomes_uploaded" not in own
    (entry,) = [e for e in served if e["kind"] == "fairness.outcomes_uploaded"]
    assert entry["data"]["rows"] == 60 and entry["actor"].startswith("apikey:")
