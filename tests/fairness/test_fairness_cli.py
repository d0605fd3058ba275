"""``gateway fairness list`` and ``run``: the command audits through the real Triton server, writes a ledger log of
its own (which verifies), exits 1 unless every audit passes, and refuses a second run on the same log."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from click.testing import CliRunner

from backends.local.launcher import LocalTriton
from gateway.cli import main
from gateway.fairness.runner import SUBJECT
from gateway.fairness.store import FairnessStore, fairness_url
from gateway.settings import Settings
from ledger.store import open_store
from tests.fairness.test_probe_audit_e2e import PER_ATTRIBUTE, policy_folder

pytestmark = pytest.mark.triton


def _config(tmp_path: Path, triton: LocalTriton) -> tuple[Path, Settings]:
    values = {
        "state_dir": str(tmp_path / "state"),
        "local_triton": {"enabled": False},
        "backends": {"triton": {"kind": "triton", "url": triton.grpc_url}},
        "models": [{"name": "biased-screener", "backend": "triton", "version": "1"}],
        "policy": {"dir": str(policy_folder(tmp_path)), "watch": False},
        "ledger": {"chain": {"enabled": False}, "origin": "gw.test/one"},
    }
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(yaml.safe_dump(values))
    return cfg, Settings.load(cfg)


def _entries(settings: Settings, origin: str) -> list[dict[str, Any]]:
    store = open_store(settings.ledger_store())
    try:
        return [orjson.loads(body) for _, _, body in store.read(origin)]
    finally:
        store.close()


def test_fairness_run_writes_its_own_log(triton: LocalTriton, tmp_path: Path) -> None:
    """A passing attribute exits 0, the biased one exits 1 with the failed checks; both audits are in the log
    gw.test/one/fairness, which verifies, and nothing is written to the gateway's own log."""
    cfg, settings = _config(tmp_path, triton)
    run = CliRunner().invoke
    listed = run(main, ["fairness", "list", "--config", str(cfg)])
    assert listed.exit_code == 0, listed.output
    assert any(line.split()[:4] == ["screening-test", "probe", "surname,age", str(2 * PER_ATTRIBUTE)]
               for line in listed.output.splitlines())  # fmt: skip
    assert any(line.split()[:3] == ["credit-decisions", "outcome", "age_band"] for line in listed.output.splitlines())

    passed = run(main, ["fairness", "run", "screening-test", "--config", str(cfg), "--attribute", "age"])
    assert passed.exit_code == 0, passed.output
    assert "screening-test on biased-screener (triton:biased-screener, version 1): PASS" in passed.output
    assert "in log gw.test/one/fairness" in passed.output

    failed = run(main, ["fairness", "run", "screening-test", "--config", str(cfg), "--attribute", "surname",
                        "--json", "--concurrency", "8"])  # fmt: skip
    assert failed.exit_code == 1
    (report,) = json.loads(failed.stdout)  # the progress bar is on stderr
    assert report["status"] == "fail" and report["requests"] == PER_ATTRIBUTE and report["version"] == "1"
    assert report["requested_by"].startswith("cli:")
    assert [c["status"] for c in report["attributes"][0]["checks"]] == ["fail", "fail", "fail", "pass"]

    own = _entries(settings, "gw.test/one/fairness")
    audits = [e for e in own if e["kind"] == "fairness.audit"]
    assert [(e["actor"], e["data"]["status"]) for e in audits] == [(SUBJECT, "pass"), (SUBJECT, "fail")]
    assert sum(e["kind"] == "request.admitted" for e in own) == 2 * PER_ATTRIBUTE
    assert own[0]["kind"] == "policy.loaded"  # which policy authorized the probes
    assert _entries(settings, "gw.test/one") == []
    stored = FairnessStore(fairness_url(settings.ledger_store()))  # the results the API serves
    try:
        records, _ = stored.audits(name="screening-test")
    finally:
        stored.close()
    assert [(r.kind, r.status, r.version, r.log, r.seq) for r in records] == [
        ("probe", e["data"]["status"], "1", "gw.test/one/fairness", e["seq"]) for e in reversed(audits)
    ]
    verified = run(main, ["ledger", "verify", "--config", str(cfg), "--no-chain"],
                   env={"GATEWAY_LEDGER__ORIGIN": "gw.test/one/fairness"})  # fmt: skip
    assert verified.exit_code == 0 and "OK" in verified.output, verified.output


def test_fairness_run_refusals(triton: LocalTriton, tmp_path: Path) -> None:
    """An unknown probe set or attribute, and a second run while one holds the log, stop with the reason."""
    cfg, settings = _config(tmp_path, triton)
    run = CliRunner().invoke
    unknown = run(main, ["fairness", "run", "nope", "--config", str(cfg)])
    assert unknown.exit_code == 1 and "no probe set 'nope'" in unknown.output and "screening-test" in unknown.output
    bad = run(main, ["fairness", "run", "screening-test", "--config", str(cfg), "--attribute", "height"])
    assert bad.exit_code == 1 and "has no attribute 'height'" in bad.output
    lock = settings.ledger_dir() / "fairness.lock"
    with lock.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        busy = run(main, ["fairness", "run", "screening-test", "--config", str(cfg)])
    assert busy.exit_code == 1 and "has one writer at a time" in busy.output
