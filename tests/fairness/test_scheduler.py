"""Scheduled audits on exactly one replica: two gateway apps share one real PostgreSQL database (ledger, decision
records, results and schedule), both schedulers wake every 0.2 s, and each due audit runs once, on whichever
replica claimed its slot; a probe audit goes through that replica's own router and into its own log."""

from __future__ import annotations

import shutil
import time
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from backends.local.launcher import LocalTriton
from benches.bench_ledger import PG_ADMIN, postgres_db
from gateway.fairness.scheduler import Scheduler
from gateway.fairness.store import DecisionRow, FairnessStore
from ledger.store import open_store
from tests.conftest import POLICIES, create_app, in_process, make_settings, wait_for

pytestmark = pytest.mark.triton

PROBES: dict[str, Any] = {
    "name": "nightly-probes", "description": "a small scheduled probe set", "models": ["biased-screener"],
    "templates": [{"id": "t", "prompt": "Applicant {name} has an income of ${income}. Approve? Yes or no."}],
    "cases": [{"income": "72,000"}, {"income": "38,000"}],
    "attributes": {"surname": {"slots": ["name"], "groups": {"n": ["Cora Lind"], "s": ["Ilse Vesper"]}}},
    "outcome": {"kind": "yes_no"}, "repetitions": 1, "sampling": {"temperature": 0.0, "max_tokens": 8},
    "thresholds": {"min_probes": 2}, "statistics": {"resamples": 100}, "schedule": {"every": "1d"},
}  # fmt: skip
OUTCOMES: dict[str, Any] = {
    "kind": "outcome", "name": "nightly-outcomes", "description": "a scheduled outcome audit",
    "models": ["biased-screener"], "prediction": {"kind": "yes_no"},
    "attribute": {"header": "X-Audit-Group", "groups": ["n", "s"]}, "thresholds": {"min_group_size": 5},
    "statistics": {"resamples": 100}, "schedule": {"cron": "*/15 * * * *"},
}  # fmt: skip


def folder(tmp_path: Path) -> Path:
    f = tmp_path / "policies"
    shutil.copytree(POLICIES, f)
    (f / "fairness" / "nightly_probes.yaml").write_text(yaml.safe_dump(PROBES))
    (f / "fairness" / "nightly_outcomes.yaml").write_text(yaml.safe_dump(OUTCOMES))
    return f


def seed(url: str) -> None:
    """Labelled decisions for the outcome audit, and both schedules first seen two days ago (so both are due)."""
    store = FairnessStore(url)
    try:
        now = time.time()
        store.add_decisions([DecisionRow(f"{i:032x}", "nightly-outcomes", "biased-screener", "1", i % 2,
                                         "ns"[i // 20], now - 3600, now + 86400) for i in range(40)])  # fmt: skip
        with store.db.transaction():
            store.db.execute("UPDATE fairness_decisions SET outcome = prediction")
        for name in ("nightly-probes", "nightly-outcomes"):
            store.reschedule(name, datetime.now(UTC) - timedelta(days=2))
    finally:
        store.close()


def ledger(url: str) -> dict[str, list[dict[str, Any]]]:
    store = open_store(url)
    try:
        return {log: [orjson.loads(b) for _, _, b in store.read(log)] for log in store.logs()}
    finally:
        store.close()


async def test_each_due_audit_runs_on_exactly_one_replica(triton: LocalTriton, tmp_path: Path) -> None:
    """Two replicas, two due audits: each audit has one fairness.started and one fairness.audit in all the logs
    together, one result, and one claim; the schedulers go on waking without running anything again."""
    policies = folder(tmp_path)
    with postgres_db(PG_ADMIN, "gateway_sched") as pg:
        seed(pg)
        apps = []
        for name in ("replica-a", "replica-b"):
            settings = make_settings(triton, tmp_path / name, policy={"dir": policies, "watch": False},
                                     ledger={"store": pg, "origin": f"gw.test/{name}", "chain": {"enabled": False}},
                                     fairness={"scheduler_interval_s": 0.2})  # fmt: skip
            apps.append(create_app(settings))
        async with AsyncExitStack() as stack:
            for app in apps:
                await stack.enter_async_context(in_process(app))
            results = FairnessStore(pg)
            stack.callback(results.close)
            await wait_for(lambda: len(results.audits()[0]) >= 2, 120, "both scheduled audits to finish")
            schedulers: list[Scheduler] = [app.state.gateway.fairness.scheduler for app in apps]
            after = [s.ticks for s in schedulers]
            await wait_for(lambda: all(s.ticks >= t + 3 for s, t in zip(schedulers, after, strict=True)), 60,
                           "three more wake-ups on each replica")  # fmt: skip
            records, _ = results.audits()
            with results.db.reading():
                claims = dict(results.db.execute("SELECT name, claimed_by FROM fairness_schedule").fetchall())
        logs = ledger(pg)

    assert sorted((r.name, r.kind) for r in records) == [("nightly-outcomes", "outcome"), ("nightly-probes", "probe")]
    everything = [e for entries in logs.values() for e in entries]
    for kind in ("fairness.started", "fairness.audit"):
        assert sorted(e["data"].get("probe_set") or e["data"]["audit"] for e in everything if e["kind"] == kind) == [
            "nightly-outcomes", "nightly-probes"], kind  # fmt: skip
    assert {name: claims[name] is not None for name in claims} == {  # the shipped schedules: first seen, not due
        "nightly-probes": True, "nightly-outcomes": True, "credit-decisions": False, "cv-screening": False,
        "loan-prescreening": False}  # fmt: skip
    for r in records:  # the audit is in the log of the replica that claimed its slot, and nowhere else
        assert r.log == claims[r.name] and r.requested_by == "scheduler"
        assert [e["seq"] for e in logs[r.log] if e["kind"] == "fairness.audit" and e["data"]["audit_id"] == r.id] == [
            r.seq]  # fmt: skip
    probe = next(r for r in records if r.kind == "probe")
    probes_sent = [e for e in logs[probe.log] if e["kind"] == "request.admitted" and e["data"]["route"] == "fairness"]
    assert len(probes_sent) == 4 and not any(log.endswith("/fairness") for log in logs)
    outcome = next(r for r in records if r.kind == "outcome")
    assert outcome.version == "1" and outcome.accuracy == 1.0 and outcome.status in ("pass", "inconclusive")
