"""The outcome audit runner over a real store and ledger (no model server): one report per model version, the
window, the baseline from earlier audits, fairlearn's agreement, and the ledger entries."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from gateway.audit import AuditTrail
from gateway.fairness.decisions import DecisionAudit, DecisionAuditFile
from gateway.fairness.outcome_runner import OutcomeServices, run_outcome_audit, wilson
from gateway.fairness.reference import fairlearn_outcome_metrics
from gateway.fairness.report import record_of
from gateway.fairness.results import Estimate
from gateway.fairness.store import DecisionRow, FairnessStore
from gateway.settings import Settings
from ledger.store import open_store
from tests.fairness.conftest import decisions

NOW = datetime(2026, 3, 1, tzinfo=UTC)
SPEC = DecisionAudit.model_validate({
    "kind": "outcome", "name": "credit", "description": "test", "models": ["scorer"], "window": "7d",
    "prediction": {"kind": "yes_no"}, "attribute": {"header": "X-Audit-Group", "groups": ["a", "b", "c"]},
    "statistics": {"resamples": 200},
})  # fmt: skip
ENTRY = DecisionAuditFile("fairness/credit.yaml", "ab" * 32, SPEC)


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[OutcomeServices]:
    audit = await AuditTrail.open(settings_in(tmp_path))
    store = FairnessStore(str(tmp_path / "fairness.sqlite3"))
    try:
        yield OutcomeServices(store, audit, 7)
    finally:
        store.close()
        await audit.aclose()


def settings_in(tmp_path: Path) -> Settings:
    return Settings.load(None, state_dir=tmp_path, local_triton={"enabled": False}, backends={}, models=[],
                         ledger={"chain": {"enabled": False}})  # fmt: skip


def add(store: FairnessStore, version: str, truth: Any, pred: Any, groups: Any, at: float, offset: int = 0) -> None:
    rows = [DecisionRow(f"{version}-{offset + i}", "credit", "scorer", version, int(p), str(g), at, at + 86400 * 30)
            for i, (p, g) in enumerate(zip(pred, groups, strict=True))]  # fmt: skip
    store.add_decisions(rows)
    with store.db.transaction():
        store.db.executemany("UPDATE fairness_decisions SET outcome = ? WHERE request_id = ?",
                             [(int(t), r.request_id) for t, r in zip(truth, rows, strict=True)])  # fmt: skip


async def test_each_version_is_audited_on_its_own_and_agrees_with_fairlearn(services: OutcomeServices) -> None:
    """Version 1 treats the groups alike, version 2 does not: two reports, one passing and one failing equal
    opportunity, each with fairlearn's values equal to its own to 1e-12 (fairlearn also on the rows themselves)."""
    at = NOW.timestamp() - 3600
    fair = decisions(1, {"a": (3000, 0.4, 0.8, 0.1), "b": (2000, 0.5, 0.8, 0.1), "c": (1000, 0.3, 0.8, 0.1)})
    biased = decisions(2, {"a": (3000, 0.4, 0.9, 0.1), "b": (2000, 0.5, 0.5, 0.1), "c": (1000, 0.3, 0.9, 0.1)})
    add(services.store, "1", *fair, at)
    add(services.store, "2", *biased, at)
    add(services.store, "2", *biased, NOW.timestamp() - 8 * 86400, offset=10_000)  # before the window: left out
    done: list[int] = []
    v1, v2 = await run_outcome_audit(services, ENTRY, "scorer", requested_by="test", until=NOW, progress=done.append)
    assert sum(done) == 2 and (v1.version, v2.version) == ("1", "2")
    assert [c.labelled for c in v2.coverage] == [3000, 2000, 1000]
    checks = [{c.metric: c.status for c in r.checks} for r in (v1, v2)]
    assert checks[0]["equal_opportunity_difference"] == "pass" and checks[1]["equal_opportunity_difference"] == "fail"
    assert "accuracy_drop" not in checks[0]  # no baseline yet
    for report, (truth, pred, groups) in ((v1, fair), (v2, biased)):
        assert report.metrics is not None and report.reference is not None
        rows = fairlearn_outcome_metrics(truth.tolist(), pred.tolist(), groups.tolist())
        for name in ("demographic_parity_difference", "demographic_parity_ratio", "equal_opportunity_difference",
                     "equalized_odds_difference", "accuracy_difference"):  # fmt: skip
            ours = getattr(report.metrics, name)
            assert isinstance(ours, Estimate)
            assert ours.value == pytest.approx(getattr(report.reference, name), abs=1e-12)
            assert ours.value == pytest.approx(getattr(rows, name), abs=1e-12)
        right = int((truth == pred).sum())
        assert report.accuracy is not None and report.accuracy.value == right / len(truth)
        assert (report.accuracy.low, report.accuracy.high) == wilson(right, len(truth), 0.95)
    assert v1.window == {"from": "2026-02-22T00:00:00+00:00", "to": "2026-03-01T00:00:00+00:00"}


async def test_the_baseline_is_the_mean_of_earlier_audits(services: OutcomeServices) -> None:
    """A later audit compares its accuracy with the mean of the audits kept within the baseline window; a fall of
    more than 3 points fails ``accuracy_drop``."""
    rng = np.random.default_rng(3)
    truth = (rng.random(4000) < 0.5).astype(int)
    groups = np.array(["a", "b"] * 2000)
    good = np.where(rng.random(4000) < 0.95, truth, 1 - truth)
    worse = np.where(rng.random(4000) < 0.85, truth, 1 - truth)
    add(services.store, "1", truth, good, groups, NOW.timestamp() - 12 * 86400)
    (first,) = await run_outcome_audit(services, ENTRY, "scorer", requested_by="test",
                                       until=datetime.fromtimestamp(NOW.timestamp() - 10 * 86400, UTC))  # fmt: skip
    services.store.save_audit(record_of(first, started=0, finished=NOW.timestamp() - 10 * 86400, log="l"))
    add(services.store, "2", truth, worse, groups, NOW.timestamp() - 3600)
    (second,) = await run_outcome_audit(services, ENTRY, "scorer", requested_by="test", until=NOW)
    assert first.accuracy is not None and second.accuracy is not None
    assert second.baseline == {"accuracy": first.accuracy.value, "source": "previous audits", "audits": 1}
    drop = next(c for c in second.checks if c.metric == "accuracy_drop")
    assert drop.status == "fail" and drop.value == pytest.approx(first.accuracy.value - second.accuracy.value)


async def test_no_labelled_decision_is_insufficient_data_at_the_current_version(services: OutcomeServices) -> None:
    """Recorded decisions without outcomes, or none at all: a report says so, at the route's current version."""
    (empty,) = await run_outcome_audit(services, ENTRY, "scorer", requested_by="test", until=NOW, current_version="9")
    assert (empty.status, empty.version, empty.metrics, empty.coverage) == ("insufficient_data", "9", None, ())
    services.store.add_decisions([DecisionRow("x1", "credit", "scorer", "3", 1, "a", NOW.timestamp() - 60,
                                              NOW.timestamp() + 60)])  # fmt: skip
    (unlabelled,) = await run_outcome_audit(services, ENTRY, "scorer", requested_by="test", until=NOW)
    assert unlabelled.version == "3" and unlabelled.status == "insufficient_data"
    assert [(c.group, c.recorded, c.labelled) for c in unlabelled.coverage] == [("a", 1, 0)]
    assert unlabelled.checks[-1].reason == "no decision with an uploaded outcome"


async def test_ledger_entries_name_the_definition_and_version(services: OutcomeServices, tmp_path: Path) -> None:
    """fairness.started then fairness.audit (durable when the run returns), with the definition's file and digest,
    the model version, the window and the verdict; fairlearn's duplicate values stay out of the ledger."""
    truth, pred, groups = decisions(4, {"a": (100, 0.5, 0.9, 0.1), "b": (100, 0.5, 0.9, 0.1)})
    add(services.store, "5", truth, pred, groups, NOW.timestamp() - 60)
    (report,) = await run_outcome_audit(services, ENTRY, "scorer", requested_by="someone", until=NOW)
    settings = settings_in(tmp_path)
    ledger = open_store(settings.ledger_store())
    try:
        entries = [orjson.loads(b) for _, _, b in ledger.read(settings.ledger.origin)]
    finally:
        ledger.close()
    started, audited = [e for e in entries if e["kind"].startswith("fairness.")]
    assert (started["kind"], audited["kind"], audited["seq"]) == ("fairness.started", "fairness.audit", report.seq)
    assert started["actor"] == audited["actor"] == "service:fairness-auditor"
    for e in (started, audited):
        assert {k: e["data"][k] for k in ("audit_id", "audit", "file", "digest", "model", "version", "requested_by",
                                          "policy_version")} == {
            "audit_id": report.audit_id, "audit": "credit", "file": "fairness/credit.yaml", "digest": "ab" * 32,
            "model": "scorer", "version": "5", "requested_by": "someone", "policy_version": 7}  # fmt: skip
    assert audited["data"]["status"] == report.status and "reference" not in audited["data"]
    assert audited["data"]["metrics"]["equal_opportunity_difference"]["kind"] == "estimate"
