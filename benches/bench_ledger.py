"""The ledger's cost: durable appends (group commit and one at a time), request latency, verification.

    python -m benches.bench_ledger [--runs N] [--seconds S] [--verify-entries N] [--no-postgres]
                                   [--postgres URL] [--profile]

Runs in this one process, on uvloop as the gateway does, against SQLite in a temporary folder
(WAL, ``synchronous=FULL``: a real fsync per commit, as the store opens it) and against the
machine's PostgreSQL (a scratch database, created and dropped as the tests' ``pg_url`` does).
Entries have the shape of the gateway's ``request.admitted``. Per run and store:

- group commit: C asyncio tasks each ``await ledger.commit(...)`` in a loop for S seconds
  (after a short warm-up); entries/s, commit latency p50/p99, and this process's CPU per entry;
- one at a time: a single caller, sequential commits, so every entry pays its own fsync
  (SQLite) or commit (PostgreSQL); entries/s and latency, which is what one request waits for
  when the gateway is otherwise idle; the store's bare ``append`` of one row alongside it;
- ``verify_log`` over a log of N entries (admitted/completed pairs, a signed checkpoint every
  1,000 entries, as the gateway's defaults), built once per store before the runs.

Runs alternate the stores, and each figure is printed as median [min-max] over runs. Nothing
is asserted: the machine is shared and noisy; compare figures within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import itertools
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benches._procs import machine
from ledger.entry import make_entry, timestamp
from ledger.log import Ledger, LedgerConfig
from ledger.store import Store, open_store
from ledger.verifier import verify_log

ACTOR = "key:gk_0123456789ab"
MODELS = ("llama-3.1-8b-instruct", "demo", "gpt-4o-mini")
_KEY = b"\x11" * 32
PG_ADMIN = os.environ.get("GATEWAY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def admitted(i: int) -> dict[str, Any]:
    """``request.admitted`` data as ``gateway.api.ticket.admit`` writes it for a chat request."""
    rid = uuid.uuid4().hex
    return {
        "request_id": rid, "model": MODELS[i % 3], "route": "/v1/chat/completions", "stream": i % 2 == 0,
        "max_tokens": 256, "request_digest": "hmac-sha256:" + hmac.new(_KEY, rid.encode(), hashlib.sha256).hexdigest(),
    }  # fmt: skip


def completed(i: int, rid: str, seq: int) -> dict[str, Any]:
    """``request.completed`` data as ``Ticket.close`` queues it."""
    return {
        "request_id": rid, "admitted_seq": seq, "outcome": "ok", "status": 200, "latency_ms": 40 + i % 50,
        "model": MODELS[i % 3], "fallback_used": False, "prompt_tokens": 120, "completion_tokens": 256,
        "response_digest": "hmac-sha256:" + hmac.new(_KEY, rid.encode()[::-1], hashlib.sha256).hexdigest(),
    }  # fmt: skip


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# ----- stores


class Target:
    """One kind of store: hands out fresh, empty logs for each measurement."""

    def __init__(self, name: str, url: Callable[[str], str], tmp: Path) -> None:
        self.name = name
        self._url = url
        self.tmp = tmp
        self._n = itertools.count()

    def ledger(self, label: str) -> Ledger:
        """A started ledger on a fresh log (its own SQLite file, or its own origin in PostgreSQL)."""
        n = next(self._n)
        config = LedgerConfig(store_url=self._url(f"{label}-{n}"), origin=f"bench.example/{label}-{n}",
                              signing_key=self.tmp / "checkpoint.key")  # fmt: skip
        led = Ledger(config)
        led.start()
        return led

    def store(self, label: str) -> Store:
        return open_store(self._url(label))


@contextmanager
def postgres_db(admin: str, prefix: str = "gateway_bench") -> Iterator[str]:
    """A scratch database on the real server, dropped afterwards (the tests' ``pg_url`` uses it too)."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as db:
        db.execute(f'CREATE DATABASE "{name}"'.encode())
    try:
        yield admin.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin, autocommit=True) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


# ----- measurements


async def group_commit(target: Target, concurrency: int, seconds: float, warmup_s: float = 0.5) -> dict[str, float]:
    """``concurrency`` callers committing in a closed loop; figures over the last ``seconds``."""
    led = target.ledger(f"c{concurrency}")
    latencies: list[float] = []
    measuring = False
    stop = False
    counter = itertools.count()

    async def caller() -> None:
        while not stop:
            data = admitted(next(counter))
            t = time.perf_counter()
            await led.commit("request.admitted", ACTOR, data)
            if measuring:
                latencies.append(time.perf_counter() - t)

    try:
        tasks = [asyncio.create_task(caller()) for _ in range(concurrency)]
        await asyncio.sleep(warmup_s)
        measuring = True
        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        measuring = False
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        stop = True
        await asyncio.gather(*tasks)
    finally:
        await led.aclose()
    n = len(latencies)
    return {"eps": n / elapsed, "p50_ms": pct(latencies, 0.5) * 1e3, "p99_ms": pct(latencies, 0.99) * 1e3,
            "cpu_us": cpu / n * 1e6}  # fmt: skip


async def one_at_a_time(target: Target, seconds: float, warmup: int = 50) -> dict[str, float]:
    """One caller, each commit awaited before the next: one fsync (or commit) per entry."""
    led = target.ledger("seq")
    latencies: list[float] = []
    try:
        for i in range(warmup):
            await led.commit("request.admitted", ACTOR, admitted(i))
        cpu0, t0 = time.process_time(), time.perf_counter()
        i = 0
        while time.perf_counter() - t0 < seconds:
            data = admitted(i)
            t = time.perf_counter()
            await led.commit("request.admitted", ACTOR, data)
            latencies.append(time.perf_counter() - t)
            i += 1
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        await led.aclose()
    n = len(latencies)
    return {"eps": n / elapsed, "p50_ms": pct(latencies, 0.5) * 1e3, "p99_ms": pct(latencies, 0.99) * 1e3,
            "cpu_us": cpu / n * 1e6}  # fmt: skip


def bare_append(target: Target, n: int = 500) -> dict[str, float]:
    """The store alone: ``append`` of one prebuilt row per transaction (the fsync floor)."""
    store = target.store(f"bare-{uuid.uuid4().hex[:8]}")
    origin = f"bench.example/bare-{uuid.uuid4().hex[:8]}"
    prev = "0" * 64
    rows = []
    for seq in range(n):
        e = make_entry(log=origin, seq=seq, ts=timestamp(), kind="request.admitted", actor=ACTOR,
                       data=admitted(seq), prev=prev)  # fmt: skip
        rows.append((seq, e.hash, e.body))
        prev = e.hash.hex()
    latencies = []
    try:
        for row in rows:
            t = time.perf_counter()
            store.append(origin, [row])
            latencies.append(time.perf_counter() - t)
    finally:
        store.close()
    return {"p50_ms": pct(latencies, 0.5) * 1e3, "p99_ms": pct(latencies, 0.99) * 1e3}


def build_log(target: Target, entries: int, chunk: int = 1000) -> tuple[str, str, str]:
    """A log of ``entries`` admitted/completed pairs written through the ledger; (label, origin, key)."""
    led = target.ledger("verify")
    t = time.perf_counter()
    try:
        i = 0
        while i < entries:
            n = min(chunk, entries - i)
            rid = ""
            for j in range(i, i + n - 1):
                if (j - i) % 2 == 0:
                    data = admitted(j)
                    rid = data["request_id"]
                    led.record("request.admitted", ACTOR, data)
                else:
                    led.record("request.completed", ACTOR, completed(j, rid, j - 1))
            led.commit_sync("request.admitted", ACTOR, admitted(i + n - 1))  # the chunk is durable
            i += n
        origin, key, size = led.origin, led.verifier_key, led.status().size
    finally:
        led.close()
    print(f"  {target.name}: built a {size:,}-entry log in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    return led.config.store_url, origin, key


def verify(target: Target, log: tuple[str, str, str]) -> dict[str, float]:
    url, origin, key = log
    store = open_store(url)
    try:
        t = time.perf_counter()
        report = verify_log(store, origin, key)
        elapsed = time.perf_counter() - t
        t = time.perf_counter()
        n_read = sum(1 for _ in store.read(origin))
        read_s = time.perf_counter() - t
    finally:
        store.close()
    if not report.ok:
        raise RuntimeError(f"the bench log does not verify: {report.problems[:3]}")
    return {"eps": report.entries / elapsed, "read_eps": n_read / read_s, "checkpoints": report.checkpoints}


def profile_verify(log: tuple[str, str, str]) -> None:
    from pyinstrument import Profiler

    url, origin, key = log
    store = open_store(url)
    try:
        with Profiler(interval=0.0005) as profiler:
            verify_log(store, origin, key)
    finally:
        store.close()
    print(profiler.output_text(unicode=False, color=False, show_all=False))


# ----- main


def fmt(values: list[float], spec: str) -> str:
    return f"{statistics.median(values):{spec}} [{min(values):{spec}}-{max(values):{spec}}]"


async def main_async(args: argparse.Namespace, targets: list[Target]) -> None:
    logs = {t.name: build_log(t, args.verify_entries) for t in targets}
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for r in range(args.runs):
        for t in targets:
            print(f"run {r + 1}/{args.runs}: {t.name}", file=sys.stderr, flush=True)
            for c in args.concurrency:
                results.setdefault((t.name, f"c{c}"), []).append(await group_commit(t, c, args.seconds))
            results.setdefault((t.name, "seq"), []).append(await one_at_a_time(t, args.seconds / 2))
            results.setdefault((t.name, "bare"), []).append(bare_append(t))
            results.setdefault((t.name, "verify"), []).append(verify(t, logs[t.name]))

    m = machine()
    print(f"machine: {m['nproc']} CPU ({m['cpu']}), kernel {m['kernel']}, Python {m['python']}, "
          f"uvloop {m['uvloop']}, load average {m['loadavg']}")  # fmt: skip
    print(f"{args.runs} runs; {args.seconds:g} s per group-commit figure; median [min-max] over runs\n")
    print("durable appends (await ledger.commit)")
    print(f"{'store':<11} {'callers':<24} {'entries/s':>26} {'p50 ms':>22} {'p99 ms':>24} {'CPU us/entry':>20}")
    for t in targets:
        for key, label in [*((f"c{c}", f"{c} tasks, group commit") for c in args.concurrency),
                           ("seq", "1 caller, fsync/entry")]:  # fmt: skip
            rs = results[(t.name, key)]
            print(f"{t.name:<11} {label:<24} {fmt([x['eps'] for x in rs], ',.0f'):>26} "
                  f"{fmt([x['p50_ms'] for x in rs], '.3f'):>22} {fmt([x['p99_ms'] for x in rs], '.3f'):>24} "
                  f"{fmt([x['cpu_us'] for x in rs], '.0f'):>20}")  # fmt: skip
    print("\nthe store alone: append of one prebuilt row per transaction")
    for t in targets:
        rs = results[(t.name, "bare")]
        print(f"{t.name:<11} p50 {fmt([x['p50_ms'] for x in rs], '.3f')} ms   "
              f"p99 {fmt([x['p99_ms'] for x in rs], '.3f')} ms")  # fmt: skip
    print(f"\nverify_log over {args.verify_entries:,} entries")
    for t in targets:
        rs = results[(t.name, "verify")]
        print(f"{t.name:<11} {fmt([x['eps'] for x in rs], ',.0f')} entries/s   "
              f"(store.read alone {fmt([x['read_eps'] for x in rs], ',.0f')} entries/s; "
              f"{int(rs[0]['checkpoints'])} checkpoints)")  # fmt: skip

    sq = next((t for t in targets if t.name == "sqlite"), None)
    if sq is not None:
        best = max(statistics.median(x["eps"] for x in results[("sqlite", f"c{c}")]) for c in args.concurrency)
        p50 = statistics.median(x["p50_ms"] for x in results[("sqlite", "seq")])
        ver = statistics.median(x["eps"] for x in results[("sqlite", "verify")])
        print("\ntargets (SQLite, medians)")
        print(f"  group commit >= 20,000 entries/s:  {best:,.0f}  {'met' if best >= 20_000 else 'MISSED'}")
        print(f"  verify_log >= 100,000 entries/s:   {ver:,.0f}  {'met' if ver >= 100_000 else 'MISSED'}")
        print(f"  added latency p50 <= 2 ms:         {p50:.3f} ms  {'met' if p50 <= 2 else 'MISSED'}")
    if args.profile:
        print("\npyinstrument profile of verify_log (first store)\n")
        profile_verify(logs[targets[0].name])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--verify-entries", type=int, default=200_000)
    parser.add_argument("--postgres", default=PG_ADMIN, help="an admin URL; a scratch database is made on it")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--profile", action="store_true", help="profile verify_log with pyinstrument")
    args = parser.parse_args()
    try:
        import uvloop

        run: Callable[[Any], Any] = uvloop.run
    except ImportError:
        run = asyncio.run
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as tmp:
        folder = Path(tmp)
        targets = [Target("sqlite", lambda label: str(folder / f"{label}.db"), folder)]
        if args.no_postgres:
            run(main_async(args, targets))
            return
        with postgres_db(args.postgres) as url:
            targets.append(Target("postgresql", lambda _label: url, folder))
            run(main_async(args, targets))


if __name__ == "__main__":
    main()
