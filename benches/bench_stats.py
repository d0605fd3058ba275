"""Differentially private releases over a ledger of 1,000,000 requests.

    python -m benches.bench_stats [--requests 1000000] [--days 30] [--callers 5000] [--postgres]

Writes real, hash-chained ``request.admitted`` / ``request.completed`` pairs (2 entries per request) for
``--requests`` requests of ``--callers`` callers over ``--days`` days into a fresh SQLite ledger (and a
PostgreSQL one with ``--postgres``), indexes them into facts (timed: this is the catch-up cost a gateway pays
once per entry) and reads them back as a restarted gateway does (once per process), then times each kind of
release over the whole period: wall and CPU time of
``compute.release`` after the index is current, as a release of ``GET /admin/stats`` does it. Target: under
1 s per release on 1M records.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path

import yaml

from benches._procs import machine
from benches._synthetic_ledger import mixed, write
from benches.bench_ledger import PG_ADMIN, postgres_db
from gateway.db import Database, stats_url
from gateway.stats import compute
from gateway.stats.facts import SCHEMA, FactIndex
from gateway.stats.policy import PrivacyPolicy
from gateway.stats.query import StatsQuery

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("llama-3.1-8b-instruct", "smollm2-135m-instruct", "e5-small", "deepseek-r1")
QUERIES = [
    {"metric": "requests", "group_by": "model"},
    {"metric": "requests", "group_by": "model,day"},
    {"metric": "tokens", "group_by": "route"},
    {"metric": "tokens_per_request", "group_by": "model"},
    {"metric": "errors", "group_by": "day"},
    {"metric": "requests", "group_by": "role"},
    {"metric": "latency_ms", "group_by": "model"},
    {"metric": "pii_detections", "group_by": "entity"},
]


@contextmanager
def sqlite_store() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as tmp:
        yield str(Path(tmp) / "ledger.sqlite3")


def run(label: str, url: str, args: argparse.Namespace) -> None:
    first = date(2026, 10, 1)
    t = time.perf_counter()
    entries = write(url, "bench.example/log", mixed(first, args.days, args.requests, args.callers, MODELS,
                                                    decisions=False))  # fmt: skip
    print(f"  {label}: wrote {entries:,} entries in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    db = Database(stats_url(url), SCHEMA)
    index = FactIndex(db, url)
    t, c = time.perf_counter(), time.process_time()
    indexed = index.catch_up()
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    print(f"\n### {label}: {args.requests:,} requests ({entries:,} ledger entries), {args.callers:,} callers, "
          f"{args.days} days\n")  # fmt: skip
    print(f"Indexing {indexed:,} entries: {wall:.1f} s wall, {cpu:.1f} s CPU ({indexed / wall:,.0f} entries/s)\n")
    cold = FactIndex(db, url)  # a restarted gateway: facts are read back into memory once
    t, c = time.perf_counter(), time.process_time()
    cold.catch_up()
    print(f"After a restart, loading the facts into memory: {time.perf_counter() - t:.1f} s wall, "
          f"{time.process_time() - c:.1f} s CPU\n")  # fmt: skip
    index = cold
    policy = PrivacyPolicy.model_validate(yaml.safe_load((ROOT / "policies" / "privacy.yaml").read_text()))
    public = compute.PublicKeys(MODELS, frozenset({"user", "analyst", "admin"}))
    last = first + timedelta(days=args.days - 1)
    print("| release | groups | wall p50 | wall max | CPU p50 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for params in QUERIES:
        q = StatsQuery.parse({**params, "from": first.isoformat(), "to": last.isoformat()}, policy, today=last)
        walls, cpus, groups = [], [], 0
        for _ in range(args.rounds):
            t, c = time.perf_counter(), time.process_time()
            index.catch_up()  # nothing new: what every release pays to check
            answer = compute.release(q, policy, index, public)
            walls.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
            groups = len(answer["groups"])
        name = f"{params['metric']} by {params['group_by']}"
        print(f"| {name} | {groups} | {statistics.median(walls) * 1000:.0f} ms | {max(walls) * 1000:.0f} ms "
              f"| {statistics.median(cpus) * 1000:.0f} ms |")  # fmt: skip
    db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--callers", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--postgres", action="store_true", help=f"also on PostgreSQL ({PG_ADMIN})")
    args = parser.parse_args()
    m = machine()
    print(f"Machine: {m}")
    with sqlite_store() as url:
        run("SQLite", url, args)
    if args.postgres:
        with postgres_db(PG_ADMIN, "gateway_bench_stats") as url:
            run("PostgreSQL", url, args)


if __name__ == "__main__":
    main()
