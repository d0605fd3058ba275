"""The circuit breaker: its state machine on a fake clock, then end to end in front of the real Triton."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.breaker import Breaker
from gateway.settings import BreakerSettings
from ledger.store import open_store
from tests.conftest import TEST_MODELS, create_app, in_process, make_settings, new_key


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def breaker(**settings: Any) -> tuple[Breaker, Clock, list[tuple[str, str]]]:
    clock, moves = Clock(), []
    b = Breaker("m", BreakerSettings(**settings), lambda _r, old, new, _why: moves.append((old, new)), clock)
    return b, clock, moves


def test_consecutive_failures_open_and_a_probe_closes() -> None:
    b, clock, moves = breaker(consecutive_failures=3, cooldown_s=10)
    for _ in range(2):
        assert b.allow()
        b.failure("boom")
    b.success()  # a success resets the streak
    for _ in range(3):
        assert b.allow()
        b.failure("boom")
    assert b.state == "open" and not b.allow() and b.retry_after_s() == 10
    clock.now = 9.9
    assert not b.allow()
    clock.now = 10
    assert b.allow() and b.state == "half_open"
    assert not b.allow()  # one probe at a time
    b.success()
    assert b.state == "closed" and b.allow()
    assert moves == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_a_failed_probe_opens_again_and_a_probe_without_outcome_frees_the_slot() -> None:
    b, clock, moves = breaker(consecutive_failures=1, cooldown_s=5)
    b.failure("x")
    clock.now = 5
    assert b.allow()
    b.release()  # the caller left before an outcome
    assert b.allow()
    b.failure("still down")
    assert b.state == "open" and b.retry_after_s() == 5
    assert moves == [("closed", "open"), ("open", "half_open"), ("half_open", "open")]


def test_error_rate_over_the_window_opens() -> None:
    b, clock, _ = breaker(consecutive_failures=100, error_rate=0.5, window_s=10, min_requests=10)
    for i in range(9):  # success, failure, success, ...: 4 failures of 9, never two in a row
        if i % 2:
            b.failure("x")
        else:
            b.success()
        clock.now += 0.1
    assert b.state == "closed"  # below min_requests
    b.failure("x")  # 5 failures of 10: 50%
    assert b.state == "open"
    b2, clock2, _ = breaker(consecutive_failures=100, error_rate=0.5, window_s=10, min_requests=4)
    for _ in range(3):
        b2.failure("x")
        b2.success()
        clock2.now += 20  # old outcomes leave the window: never 4 in it
    assert b2.state == "closed"


def test_disabled_breaker_never_opens() -> None:
    b, _, moves = breaker(enabled=False, consecutive_failures=1)
    for _ in range(10):
        b.failure("x")
        assert b.allow()
    assert moves == []


@pytest.fixture
def breaking_settings(triton: Any, tmp_path: Path) -> Any:
    models = [dict(m, breaker={"consecutive_failures": 2, "cooldown_s": 3600}) if m["name"].startswith("broken")
              else m for m in TEST_MODELS]  # fmt: skip
    return make_settings(triton, tmp_path, models=models)


async def test_an_open_circuit_sends_traffic_to_the_fallback_or_fails_fast(breaking_settings: Any) -> None:
    settings = breaking_settings
    app = create_app(settings)
    async with in_process(app, new_key(settings, "admin")) as client:
        body = {"prompt": "hi", "max_tokens": 2}
        for _ in range(2):  # the broken model errors: each request falls back to counter
            r = await client.post("/v1/completions", json={"model": "broken", **body})
            assert r.status_code == 200 and r.headers["x-gateway-fallback"] == "true"
        assert app.state.gateway.router.breakers["broken"].state == "open"
        r = await client.post("/v1/completions", json={"model": "broken", **body})
        assert r.status_code == 200 and r.json()["model"] == "counter"  # skipped: straight to the fallback
        for _ in range(2):
            r = await client.post("/v1/completions", json={"model": "broken-alone", **body})
            assert r.status_code == 502
        r = await client.post("/v1/completions", json={"model": "broken-alone", **body})
        assert r.status_code == 503 and int(r.headers["retry-after"]) > 3000
        assert "circuit is open" in r.json()["error"]["message"]
        scraped = (await client.get("/metrics")).text
        assert 'gateway_model_breaker_state{model="broken"} 2.0' in scraped
        assert 'gateway_model_breaker_state{model="echo"} 0.0' in scraped
        assert 'gateway_model_breaker_transitions_total{model="broken-alone",state="open"} 1.0' in scraped
    store = open_store(settings.ledger_store())
    try:
        entries = [json.loads(b) for log in store.logs() for _, _, b in store.read(log)]
    finally:
        store.close()
    changes = [e["data"] for e in entries if e["kind"] == "breaker.changed"]
    assert [(c["model"], c["from"], c["to"]) for c in changes] == [("broken", "closed", "open"),
                                                                    ("broken-alone", "closed", "open")]  # fmt: skip
    assert "2 consecutive failures" in changes[0]["reason"]
