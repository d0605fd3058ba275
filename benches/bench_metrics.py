"""CPU cost of the monitoring on the request path, per request, in isolation.

    python -m benches.bench_metrics [--requests N] [--deltas N]

A chat request costs the gateway ~0.65 ms of CPU (benches/bench_overhead.py); the monitoring's budget is 50 us
of it. This replays exactly what the instrumentation does for one request, N times, and reports CPU time per
request (``time.process_time``, best of 5 runs):

- ``middleware``: the ASGI middleware (request id, logging context, status capture, HTTP counters and latency
  histogram, in-flight gauge) around an app that answers at once, minus that app called directly;
- ``ledger hooks``: the four ledger entries of a request (two route/model decisions, the admission, the
  completion) told to the metrics;
- ``model``: the ticket noting the deltas of a streamed answer and the model metrics at its end;
- ``scrape``: one ``GET /metrics`` body of an app that served every test model (not per request).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from prometheus_client import generate_latest

from backends.base import Delta, Usage
from benches._procs import best_cpu
from gateway.api.ticket import Ticket
from gateway.observability.metrics import Metrics
from gateway.observability.middleware import Instrumented
from gateway.settings import ModelRoute

MODELS = [ModelRoute(name=f"model-{i}", backend="b") for i in range(8)]


async def _answer(scope: Any, receive: Any, send: Any) -> None:
    scope["route"] = ROUTE
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}", "more_body": False})


ROUTE = SimpleNamespace(path="/v1/chat/completions")


async def _sink(message: Any) -> None:
    return None


async def _receive() -> Any:
    return {"type": "http.request", "body": b"", "more_body": False}


def _asgi(n: int, app: Any) -> Callable[[], None]:
    async def many() -> None:
        for _ in range(n):
            await app({"type": "http", "method": "POST", "path": "/v1/chat/completions"}, _receive, _sink)

    return lambda: asyncio.run(many())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--deltas", type=int, default=64, help="deltas of each streamed answer")
    args = parser.parse_args()
    n, k = args.requests, args.deltas
    metrics = Metrics(MODELS)

    bare = best_cpu(_asgi(n, _answer))
    wrapped = best_cpu(_asgi(n, Instrumented(_answer, metrics)))

    decision = {"object": "route:/v1/chat/completions", "action": "infer", "allowed": True, "rule": "r",
                "policy_version": 1}  # fmt: skip

    def hooks() -> None:
        for _ in range(n):
            metrics.audit_event("authz.decision", "apikey:x", decision, None)
            metrics.audit_event("authz.decision", "apikey:x", decision, None)
            metrics.audit_event("request.admitted", "apikey:x", decision, 0.002)
            metrics.audit_event("request.completed", "apikey:x", decision, None)

    gw = SimpleNamespace(metrics=metrics, audit=SimpleNamespace(record=lambda *a: None))
    deltas = [Delta(text="tok ") for _ in range(k)]
    usage = Usage(300, k)

    def model() -> None:
        for _ in range(n):
            t = Ticket(gw, "apikey:x", "rid", 1, "model-1", time.perf_counter())  # type: ignore[arg-type]
            for d in deltas:
                t.delta(d)
            t.close("ok", model="model-1", usage=usage)

    def model_ticket_only() -> None:
        for _ in range(n):
            t = Ticket(gw, "apikey:x", "rid", 1, "model-1", None)  # type: ignore[arg-type]
            for _d in deltas:  # the request path iterates over the deltas anyway
                pass
            t.closed = True  # close() returns at once: the ticket's own cost, without deltas or metrics
            t.close("ok")

    hooks_s = best_cpu(hooks)
    model_s = best_cpu(model) - best_cpu(model_ticket_only)
    for m in MODELS:
        for outcome in ("ok", "error", "cancelled"):
            metrics.model_done(m.name, m.name, outcome, fallback=False, usage=usage, ttft_s=0.1, itl_s=0.01)
    scrape_s = best_cpu(lambda: [generate_latest(metrics.registry) for _ in range(100)]) / 100

    per = 1e6 / n
    rows = [
        ("middleware", (wrapped - bare) * per),
        ("ledger hooks (4 entries)", hooks_s * per),
        (f"model ({k} deltas noted, metrics at the end)", model_s * per),
    ]
    for name, us in rows:
        print(f"{name:<45} {us:7.2f} us/request")
    print(f"{'total':<45} {sum(us for _, us in rows):7.2f} us/request")
    if k:
        print(f"{'of which per delta (with the metrics at the end)':<45} {model_s * per / k:7.3f} us")
    print(f"{'GET /metrics body (8 models)':<45} {scrape_s * 1e3:7.2f} ms/scrape")


if __name__ == "__main__":
    main()
