"""A compliance report over a ledger of 1,000,000 entries.

    python -m benches.bench_reports [--requests 500000] [--days 30]

Writes real, hash-chained entries into a fresh SQLite ledger: ``--requests`` requests (2 entries each) of
5,000 callers over ``--days`` days up to yesterday, plus policy changes, authentication failures, alerts and
breaker transitions. Then opens the gateway's ledger, statistics, fairness store and report service as
``create_app`` does and times one full report over the whole period through ``ReportService`` (the path of
``POST /admin/reports``): the ledger scan, the ledger verification, five differentially private releases, the
PDF with its charts, signing and the ``report.created`` entry. Indexing the facts for the releases is timed
apart: a gateway does it in the background as entries arrive. Target: under 60 s.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from benches._procs import machine
from benches._synthetic_ledger import Event, mixed, write
from gateway.audit import AuditTrail
from gateway.authz.store import PolicyStore
from gateway.fairness.store import FairnessStore, fairness_url
from gateway.identity.principal import Principal
from gateway.reports.service import ReportService, report_signer
from gateway.settings import Settings
from gateway.stats.compute import PublicKeys
from gateway.stats.service import StatsService

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("llama-3.1-8b-instruct", "smollm2-135m-instruct", "e5-small", "deepseek-r1")


def _gateway_events(first: date, days: int) -> list[Event]:
    """A few hundred events of the gateway's own, spread over the period."""
    out: list[Event] = []
    for d in range(days):
        at = datetime(first.year, first.month, first.day, 6, tzinfo=UTC) + timedelta(days=d)
        out.append((at, "authn.failed", "anonymous", {"reason": "unknown API key"}))
        if d % 7 == 0:
            out.append((at, "policy.accepted", "apikey:admin", {"version": d + 2, "digest": "ab" * 32, "files": {}}))
            out.append((at, "alert.fired", "gateway", {"alert": "error_rate", "severity": "page"}))
            out.append((at + timedelta(hours=1), "alert.resolved", "gateway", {"alert": "error_rate"}))
            out.append((at, "breaker.changed", "gateway", {"model": "deepseek-r1", "from": "closed", "to": "open",
                                                          "reason": "5 failures"}))  # fmt: skip
    return out


async def run(args: argparse.Namespace, tmp: Path) -> None:
    settings = Settings.load(None, state_dir=tmp, backends={"local": {"kind": "triton", "url": "127.0.0.1:9"}},
                             policy={"dir": ROOT / "policies", "watch": False}, ledger={"chain": {"enabled": False}},
                             reports={"max_days": 92})  # fmt: skip
    today = datetime.now(UTC).date()
    first = today - timedelta(days=args.days)
    t = time.perf_counter()
    origin = settings.ledger.origin
    written = write(settings.ledger_store(), origin, _gateway_events(first, args.days))
    written = write(settings.ledger_store(), origin, mixed(first, args.days, args.requests, 5000, MODELS,
                                                           start_seq=written, decisions=False))  # fmt: skip
    print(f"wrote {written:,} entries in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    t = time.perf_counter()
    audit = await AuditTrail.open(settings)
    print(f"opened the ledger in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    policy = PolicyStore(settings.policy.dir, audit)
    stats = StatsService(settings.ledger_store(), audit, lambda: policy.engine.files.privacy,
                         lambda: PublicKeys(MODELS, frozenset({"user", "analyst", "admin"})))  # fmt: skip
    fairness = FairnessStore(fairness_url(settings.ledger_store()))
    reports = ReportService(settings, audit, origin, audit.ledger.verifier_key, fairness, policy.status,
                            stats.release, report_signer(settings))  # fmt: skip
    try:
        t, c = time.perf_counter(), time.process_time()
        indexed = await asyncio.to_thread(stats.catch_up)
        index_wall, index_cpu = time.perf_counter() - t, time.process_time() - c
        principal = Principal("apikey:bench", "apikey", frozenset({"analyst"}), owner="bench")
        body = {"period": {"from": first.isoformat(), "to": today.isoformat()}}
        t, c = time.perf_counter(), time.process_time()
        status = await reports.create(principal, frozenset({"analyst"}), body)
        steps: list[tuple[str, float]] = []
        while status["status"] not in ("done", "failed"):
            await asyncio.sleep(0.05)
            status = await reports.get(status["id"]) or status
            step = status["progress"] or status["status"]
            if not steps or steps[-1][0] != step:
                steps.append((step, time.perf_counter() - t))
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        if status["status"] != "done":
            raise SystemExit(f"the report failed: {status['error']}")
        pdf = await reports.file(status["id"], "pdf")
        assert pdf is not None
        print(f"\nMachine: {machine()}\n")
        print(f"Ledger: {written:,} entries over {args.days + 1} days ({args.requests:,} requests).\n")
        print(f"Indexing the facts for the releases (background work in a gateway): {indexed:,} entries, "
              f"{index_wall:.1f} s wall, {index_cpu:.1f} s CPU\n")  # fmt: skip
        print(f"**Report over the whole period: {wall:.1f} s wall, {cpu:.1f} s CPU of this process** "
              f"(PDF {len(pdf[0]):,} bytes)\n")  # fmt: skip
        print("| step began | at |\n| --- | ---: |")
        for step, at in steps:
            print(f"| {step} | {at:.1f} s |")
    finally:
        await reports.aclose()
        stats.close()
        fairness.close()
        await audit.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500_000)
    parser.add_argument("--days", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
