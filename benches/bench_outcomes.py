"""Outcome audits on a million decisions, end to end through the store.

    python -m benches.bench_outcomes [--rows N] [--postgres]

Per store (SQLite beside a ledger; with ``--postgres``, also a scratch database on the local server):

1. record N decisions (the request path's writer inserts batches of up to 256; here batches of 10,000);
2. upload N outcomes as one CSV: ``upload.parse`` (the CSV checks), then ``upload.apply`` (lookup of every id,
   the update, one transaction);
3. the outcome audit (``run_outcome_audit``): the cell counts by SQL ``GROUP BY``, the metrics with 1,000
   bootstrap resamples and fairlearn's weighted values in a spawned worker process (its start included), the
   two ledger entries.

Five groups of unequal sizes, synthetic decisions from a fixed seed. Wall and CPU seconds of this process
(the worker's and the database server's CPU are not in it). Nothing is asserted; the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

from benches.bench_fairness import decisions
from benches.bench_ledger import PG_ADMIN, postgres_db
from gateway.audit import AuditTrail
from gateway.fairness import upload
from gateway.fairness.decisions import DecisionAudit, DecisionAuditFile
from gateway.fairness.outcome_runner import OutcomeServices, run_outcome_audit
from gateway.fairness.store import DecisionRow, FairnessStore
from gateway.settings import Settings

SPEC = DecisionAudit.model_validate({
    "kind": "outcome", "name": "bench", "description": "bench", "models": ["scorer"], "window": "30d",
    "prediction": {"kind": "yes_no"},
    "attribute": {"header": "X-Audit-Group", "groups": [f"group-{g}" for g in "abcde"]},
})  # fmt: skip


def timed(label: str, start: tuple[float, float]) -> None:
    print(f"  {label:<58} wall {time.perf_counter() - start[0]:7.2f} s   CPU {time.process_time() - start[1]:7.2f} s")


def now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


async def bench(url: str, folder: Path, rows: int) -> None:
    y_true, y_pred, groups = decisions(rows)
    ids = [f"{i:032x}" for i in range(rows)]
    store = FairnessStore(url)
    at = time.time() - 3600
    t = now()
    for i in range(0, rows, 10_000):
        store.add_decisions([DecisionRow(ids[j], "bench", "scorer", "1", int(y_pred[j]), str(groups[j]), at,
                                         at + 86400) for j in range(i, min(rows, i + 10_000))])  # fmt: skip
    timed(f"record {rows:,} decisions", t)
    raw = ("request_id,outcome\n" + "".join(f"{r},{o}\n" for r, o in zip(ids, y_true.tolist(), strict=True))).encode()
    t = now()
    parsed = upload.parse(raw)
    timed(f"parse a {len(raw) / 1e6:.0f} MB CSV of {rows:,} outcomes", t)
    t = now()
    upload.apply(store, parsed, "bench", lambda _: None)
    timed("apply it (every id looked up, one transaction)", t)
    settings = Settings.load(None, state_dir=folder, local_triton={"enabled": False}, backends={}, models=[],
                             ledger={"chain": {"enabled": False}})  # fmt: skip
    audit = await AuditTrail.open(settings)
    try:
        t = now()
        (report,) = await run_outcome_audit(OutcomeServices(store, audit, 1),
                                            DecisionAuditFile("bench.yaml", "0" * 64, SPEC), "scorer",
                                            requested_by="bench", until=datetime.now(UTC))  # fmt: skip
        timed("outcome audit: query, worker (spawned), metrics, ledger", t)
        print(f"  status {report.status}, {sum(c.labelled for c in report.coverage):,} labelled decisions")
    finally:
        await audit.aclose()
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        print("SQLite")
        asyncio.run(bench(str(folder / "fairness.sqlite3"), folder / "a", args.rows))
        if args.postgres:
            print("PostgreSQL")
            asyncio.run(bench(stack.enter_context(postgres_db(PG_ADMIN)), folder / "b", args.rows))


if __name__ == "__main__":
    main()
