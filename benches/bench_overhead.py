"""The gateway's own overhead: the same requests, direct to an upstream and through the gateway.

    python -m benches.bench_overhead [--quick] [--rounds N] [--no-tls] [--json FILE]

Three processes besides this one, so that each one's CPU time is its own: the fixed-answer
upstream (``benches.upstream``), a gateway in front of it over plain HTTP, and (unless
``--no-tls``) a second gateway terminating TLS with its own local CA. This process is the load
generator (``benches._client``: raw asyncio HTTP/1.1, keep-alive, connections opened before
timing so TLS handshakes are not counted).

Rounds alternate the targets (direct, gateway, gateway+tls, then again) so that drift in the
machine's load falls on all of them alike. Each round runs, per target:

- non-streaming chat with a ~1 KB prompt at concurrency 1 and 8 (latency percentiles), then at
  concurrency 16 (saturation throughput);
- streaming chat at concurrency 1 (time to the first SSE event, and to the end).

Server CPU per request is the server process's utime+stime (``/proc/PID/stat``) over a batch,
divided by the requests answered: the upstream's for direct rows, the gateway's for gateway rows.
Latency percentiles pool all rounds; "paired" figures are the median over rounds of the
difference between a gateway round and the direct round just before it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import ssl
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from benches import _procs
from benches._client import Endpoint, Pool, get
from benches.upstream import Answers

PHASES = ("c1", "c8", "sat", "stream")


@dataclass(frozen=True)
class Plan:
    rounds: int
    n_c1: int
    n_c8: int
    n_sat: int
    n_stream: int
    warmup: int
    sat_concurrency: int = 16
    batch_timeout_s: float = 60.0
    chunks: int = 16

    def phase(self, name: str) -> tuple[int, int]:
        """(requests, concurrency) of a phase."""
        return {
            "c1": (self.n_c1, 1),
            "c8": (self.n_c8, 8),
            "sat": (self.n_sat, self.sat_concurrency),
            "stream": (self.n_stream, 1),
        }[name]


# Sized for a gateway answering ~250 req/s on 2 cores: about 3 minutes in all.
FULL = Plan(rounds=5, n_c1=500, n_c8=1000, n_sat=2000, n_stream=200, warmup=300)
QUICK = Plan(rounds=3, n_c1=60, n_c8=120, n_sat=240, n_stream=20, warmup=60, batch_timeout_s=10.0)


@dataclass
class Target:
    name: str
    endpoint: Endpoint
    server: _procs.Child


@dataclass
class Run:
    """One phase of one round on one target."""

    n: int
    elapsed: float
    errors: int
    first_error: str
    cpu_server: float
    cpu_upstream: float
    cpu_client: float
    total: list[float] = field(repr=False)
    first: list[float] = field(repr=False)


def prompt_body(stream: bool) -> bytes:
    """A chat request with a ~1 KB user prompt (deterministic text)."""
    words = ["governance", "gateway", "policy", "ledger", "redact", "audit", "model", "tenant", "stream", "token"]
    text = " ".join(words[(i * 7) % len(words)] for i in range(120))[:1000]
    body: dict[str, Any] = {
        "model": "bench",
        "messages": [
            {"role": "system", "content": "You are a benchmark."},
            {"role": "user", "content": text},
        ],
        "max_tokens": 64,
        "temperature": 0,
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return json.dumps(body).encode()


def check_chat(body: bytes, expected: Answers) -> None:
    obj = json.loads(body)
    content = obj["choices"][0]["message"]["content"]
    if content != expected.text or obj["usage"]["completion_tokens"] != expected.completion_tokens:
        raise AssertionError(f"unexpected chat answer: {body[:300]!r}")


def check_stream(body: bytes, expected: Answers) -> None:
    events = [e for e in body.split(b"\n\n") if e]
    if not events or events[-1] != b"data: [DONE]" or any(not e.startswith(b"data: ") for e in events):
        raise AssertionError(f"malformed SSE stream: {body[:300]!r}")
    objs = [json.loads(e[6:]) for e in events[:-1]]
    text = "".join(c["delta"].get("content") or "" for o in objs for c in o["choices"])
    usage = [o["usage"] for o in objs if o.get("usage")]
    if text != expected.text or not usage or usage[-1]["completion_tokens"] != expected.completion_tokens:
        raise AssertionError(f"unexpected stream content {text!r} / usage {usage}")


async def wait_ready(target: Target, path: str, timeout_s: float) -> None:
    """Poll ``path`` until 200, at most ``timeout_s``; a bounded wait on a condition, not a sleep."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if target.server.proc.poll() is not None:
            break
        try:
            t = await get(target.endpoint, path, timeout_s=2.0)
            if t.status == 200:
                return
            last = f"HTTP {t.status}: {t.body[:200]!r}"
        except (TimeoutError, OSError) as exc:
            last = repr(exc)
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{target.name} not ready at {path}: {last}\n{target.server.log_tail()}")


async def run_phase(target: Target, upstream: _procs.Child, raw: bytes, n: int, concurrency: int,
                    timeout_s: float) -> Run:  # fmt: skip
    pool = await Pool.open(target.endpoint, concurrency)
    try:
        s0, u0, c0 = target.server.cpu(), upstream.cpu(), time.process_time()
        batch = await pool.run(raw, n, timeout_s)
        s1, u1, c1 = target.server.cpu(), upstream.cpu(), time.process_time()
    finally:
        pool.close()
    return Run(
        n=len(batch.timings), elapsed=batch.elapsed, errors=batch.errors, first_error=batch.first_error,
        cpu_server=s1 - s0, cpu_upstream=u1 - u0, cpu_client=c1 - c0,
        total=[t.total for t in batch.timings], first=[t.first for t in batch.timings],
    )  # fmt: skip


async def bench(plan: Plan, targets: list[Target], upstream: _procs.Child) -> dict[str, dict[str, list[Run]]]:
    expected = Answers.build(plan.chunks)
    requests = {t.name: {
        "chat": t.endpoint.request_bytes("POST", "/v1/chat/completions", prompt_body(False)),
        "stream": t.endpoint.request_bytes("POST", "/v1/chat/completions", prompt_body(True)),
    } for t in targets}  # fmt: skip
    for t in targets:
        await wait_ready(t, "/v1/models" if t.server is upstream else "/readyz", timeout_s=60.0)
        pool = await Pool.open(t.endpoint, 1)
        try:
            one = await pool.run(requests[t.name]["chat"], 1, 10.0)
            two = await pool.run(requests[t.name]["stream"], 1, 10.0)
        finally:
            pool.close()
        if one.errors or two.errors:
            raise RuntimeError(f"{t.name}: {one.first_error or two.first_error}\n{t.server.log_tail()}")
        check_chat(one.timings[0].body, expected)
        check_stream(two.timings[0].body, expected)
        for kind, n, conc in (("chat", plan.warmup, plan.sat_concurrency), ("stream", plan.warmup // 10, 1)):
            await run_phase(t, upstream, requests[t.name][kind], n, conc, plan.batch_timeout_s)
    runs: dict[str, dict[str, list[Run]]] = {t.name: {p: [] for p in PHASES} for t in targets}
    for r in range(plan.rounds):
        for t in targets:
            print(f"round {r + 1}/{plan.rounds}: {t.name}", file=sys.stderr, flush=True)
            for phase in PHASES:
                n, conc = plan.phase(phase)
                raw = requests[t.name]["stream" if phase == "stream" else "chat"]
                runs[t.name][phase].append(await run_phase(t, upstream, raw, n, conc, plan.batch_timeout_s))
    return runs


# ---- report -------------------------------------------------------------------------------------


def pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile; NaN for no data."""
    if not xs:
        return math.nan
    s = sorted(xs)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def _ms(x: float) -> str:
    return "-" if math.isnan(x) else f"{x * 1e3:.3f}"


def _pooled(runs: list[Run], attr: str = "total") -> list[float]:
    return [x for r in runs for x in getattr(r, attr)]


def _cpu_ms(runs: list[Run], attr: str) -> float:
    n = sum(r.n for r in runs)
    return sum(getattr(r, attr) for r in runs) / n * 1e3 if n else math.nan


def _paired(gw: list[Run], direct: list[Run], attr: str = "total") -> tuple[float, float, float]:
    """Median, min and max over rounds of (gateway round p50 - direct round p50)."""
    diffs = [pct(getattr(g, attr), 50) - pct(getattr(d, attr), 50) for g, d in zip(gw, direct, strict=True)]
    return statistics.median(diffs), min(diffs), max(diffs)


ADDED = (
    ("chat c=1", "c1", "total"),
    ("chat c=8", "c8", "total"),
    ("stream first event", "stream", "first"),
    ("stream total", "stream", "total"),
)


def report(plan: Plan, runs: dict[str, dict[str, list[Run]]], info: dict[str, str], load_after: str) -> str:
    out: list[str] = []
    w = out.append
    w(f"date      {info['date']}")
    w(f"machine   {info['nproc']} CPUs, {info['cpu']}; kernel {info['kernel']}")
    w(f"load avg  {info['loadavg']} (start)  {load_after} (end)")
    w(f"software  python {info['python']}, uvloop {info['uvloop']}")
    w(f"plan      {plan.rounds} rounds; per round and target: c=1 x{plan.n_c1}, c=8 x{plan.n_c8}, "
      f"c={plan.sat_concurrency} x{plan.n_sat} (chat), stream c=1 x{plan.n_stream} ({plan.chunks} content chunks); "
      f"prompt body {len(prompt_body(False))} B")  # fmt: skip
    w("")
    w("Non-streaming chat. Latency in ms, pooled over rounds. CPU in ms per request; srv = the process")
    w("the client talks to (upstream for direct, the gateway otherwise); util = srv CPU / wall time.")
    w(f"CPU times are read in {_procs.CPU_TICK_S * 1e3:.0f} ms ticks: a figure built from few ticks "
      "(the direct rows, in --quick) is noise.")  # fmt: skip
    w(f"{'target':<12} {'c1 p50':>8} {'c1 p99':>8} {'c8 p50':>8} {'c8 p99':>8} "
      f"{'req/s c' + str(plan.sat_concurrency):>10} {'(min-max)':>13} {'srv CPU c1':>10} {'srv CPU sat':>11} "
      f"{'util':>5} {'upstrm CPU':>10} {'client CPU':>10} {'err':>4}")  # fmt: skip
    for name, phases in runs.items():
        sat = phases["sat"]
        rps = [r.n / r.elapsed for r in sat if r.elapsed > 0]
        util = sum(r.cpu_server for r in sat) / sum(r.elapsed for r in sat) * 100
        errors = sum(r.errors for p in phases.values() for r in p)
        w(f"{name:<12} {_ms(pct(_pooled(phases['c1']), 50)):>8} {_ms(pct(_pooled(phases['c1']), 99)):>8} "
          f"{_ms(pct(_pooled(phases['c8']), 50)):>8} {_ms(pct(_pooled(phases['c8']), 99)):>8} "
          f"{statistics.median(rps):>10.0f} {f'({min(rps):.0f}-{max(rps):.0f})':>13} "
          f"{_cpu_ms(phases['c1'], 'cpu_server'):>10.3f} {_cpu_ms(sat, 'cpu_server'):>11.3f} {util:>4.0f}% "
          f"{_cpu_ms(sat, 'cpu_upstream'):>10.3f} {_cpu_ms(sat, 'cpu_client'):>10.3f} {errors:>4}")  # fmt: skip
    w("")
    w("Streaming chat, c=1. first = to the first SSE event; total = to the end of the stream (ms).")
    w(f"{'target':<12} {'first p50':>9} {'first p99':>9} {'total p50':>9} {'total p99':>9} {'srv CPU':>8}")
    for name, phases in runs.items():
        st = phases["stream"]
        first, total = _pooled(st, "first"), _pooled(st)
        w(f"{name:<12} {_ms(pct(first, 50)):>9} {_ms(pct(first, 99)):>9} "
          f"{_ms(pct(total, 50)):>9} {_ms(pct(total, 99)):>9} {_cpu_ms(st, 'cpu_server'):>8.3f}")  # fmt: skip
    direct = runs["direct"]
    for name, phases in runs.items():
        if name == "direct":
            continue
        w("")
        w(f"Added by {name} (gateway p50 - direct p50, ms; paired = median over rounds [min, max]):")
        for label, phase, attr in ADDED:
            pooled = pct(_pooled(phases[phase], attr), 50) - pct(_pooled(direct[phase], attr), 50)
            med, lo, hi = _paired(phases[phase], direct[phase], attr)
            w(f"  {label:<19} {_ms(pooled):>8}   paired {_ms(med)} [{_ms(lo)}, {_ms(hi)}]")
        d_rps = statistics.median(r.n / r.elapsed for r in direct["sat"])
        g_rps = statistics.median(r.n / r.elapsed for r in phases["sat"])
        w(f"  throughput at c={plan.sat_concurrency}: {g_rps:.0f} req/s = {g_rps / d_rps * 100:.1f}% of direct; "
          f"gateway CPU {_cpu_ms(phases['sat'], 'cpu_server'):.3f} ms/req")  # fmt: skip
    firsts = [f"{n}/{p}: {r.first_error}" for n, ph in runs.items() for p, rs in ph.items() for r in rs if r.errors]
    if firsts:
        w("")
        w("ERRORS (figures above exclude failed requests):")
        out.extend(f"  {e}" for e in firsts[:10])
    return "\n".join(out)


# ---- processes ----------------------------------------------------------------------------------


def _tls_context(ca: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _key(state_dir: Path) -> str:
    """The API key the gateway process made for the bench (written before it printed its port)."""
    return (state_dir / "bench.key").read_text().strip()


def _run(plan: Plan, tls: bool, json_out: Path | None) -> int:
    info = _procs.machine()
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp, contextlib.ExitStack() as stack:
        d = Path(tmp)
        upstream = _procs.spawn("upstream", "benches.upstream", ["--chunks", str(plan.chunks)], d / "upstream.log")
        stack.callback(upstream.stop)
        _procs.wait_port(upstream, 15.0)
        up = str(upstream.port)
        gateway = _procs.spawn("gateway", "benches._gateway_proc",
                               ["--upstream-port", up, "--state-dir", str(d / "gw")], d / "gateway.log")  # fmt: skip
        stack.callback(gateway.stop)
        gateway_tls = None
        if tls:
            gateway_tls = _procs.spawn("gateway+tls", "benches._gateway_proc",
                                       ["--upstream-port", up, "--state-dir", str(d / "gw-tls"), "--tls"],
                                       d / "gateway-tls.log")  # fmt: skip
            stack.callback(gateway_tls.stop)
        gateway_port = _procs.wait_port(gateway, 60.0)
        targets = [
            Target("direct", Endpoint(upstream.port), upstream),
            Target("gateway", Endpoint(gateway_port, api_key=_key(d / "gw")), gateway),
        ]
        if gateway_tls is not None:
            port = _procs.wait_port(gateway_tls, 60.0)  # the CA exists once the port is printed
            ctx = _tls_context(d / "gw-tls" / "tls" / "ca.pem")
            targets.append(Target("gateway+tls", Endpoint(port, ctx, api_key=_key(d / "gw-tls")), gateway_tls))
        try:
            import uvloop

            runs = uvloop.run(bench(plan, targets, upstream))
        except ImportError:
            runs = asyncio.run(bench(plan, targets, upstream))
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(report(plan, runs, info, load_after))
    if json_out is not None:
        raw = {"machine": info, "plan": asdict(plan),
               "runs": {t: {p: [asdict(r) for r in rs] for p, rs in ph.items()} for t, ph in runs.items()}}  # fmt: skip
        json_out.write_text(json.dumps(raw))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benches.bench_overhead", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run (under ~30 s) for smoke testing")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per target (default 5, quick 3)")
    parser.add_argument("--no-tls", action="store_true", help="skip the gateway+tls target")
    parser.add_argument("--json", type=Path, default=None, help="also write every measurement to this file")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.rounds is not None:
        plan = replace(plan, rounds=max(1, args.rounds))
    # SIGTERM unwinds like Ctrl-C, so the children are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return _run(plan, not args.no_tls, args.json)
    except RuntimeError as exc:
        print(f"bench_overhead: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
