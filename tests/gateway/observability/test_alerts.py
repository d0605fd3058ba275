"""Alert rules: the evaluator's windows, conditions and episodes, the webhook, and a real alert end to end."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from gateway.observability.alerts_policy import AlertPolicy, AlertRule
from gateway.observability.evaluator import AlertEvent, Evaluator
from gateway.observability.metrics import Metrics
from gateway.observability.signals import Sources
from gateway.observability.webhook import Webhook, message
from gateway.settings import AlertSettings, ModelRoute
from ledger.store import open_store
from tests.conftest import POLICIES, create_app, in_process, make_settings, new_key, wait_for
from tests.serving import serve

CHAT = "/v1/chat/completions"


def _rule(**fields: Any) -> AlertRule:
    base = {"name": "TestAlert", "level": "system", "signal": "error_rate", "window": "60s", "above": 0.01,
            "severity": "warning", "description": "d", "runbook": "r"}  # fmt: skip
    return AlertRule.model_validate({**base, **fields})


class Recorder:
    def __init__(self, metrics: Metrics, *rules: AlertRule) -> None:
        self.policy = AlertPolicy(rules=rules)
        self.events: list[AlertEvent] = []
        self.evaluator = Evaluator(Sources(metrics), lambda: self.policy, self._notify, interval_s=10)

    async def _notify(self, event: AlertEvent) -> None:
        self.events.append(event)

    async def at(self, t: float) -> list[tuple[str, dict[str, str]]]:
        """Evaluate at time ``t``; the (status, labels) of the events it produced."""
        return [(e.status, e.labels) for e in await self.evaluator.step(now=t)]


async def test_threshold_waits_for_its_duration_fires_once_and_resolves_when_the_window_empties() -> None:
    """A 5xx share above 1% fires after 'for', once; with no requests in the window it resolves."""
    m = Metrics([])
    r = Recorder(m, _rule(**{"for": "30s"}))
    assert await r.at(0) == []
    for status in [502] * 2 + [200] * 8:
        m.http_done(CHAT, status, None, 0.01)
    m.http_done("/metrics", 500, None, 0.01)  # not an API route: not in the error rate
    assert await r.at(10) == []  # pending: 20% of API answers failed, not yet for 30 s
    assert await r.at(40) == [("firing", {})]
    assert await r.at(50) == []  # still firing: no second event
    assert r.evaluator.firing() == [("TestAlert", {})]
    assert await r.at(130) == [("resolved", {})]  # the last minute holds no request: no value, no alert
    assert await r.at(140) == []
    assert r.events[0].value == pytest.approx(0.2) and r.events[1].ended_at is not None


async def test_a_brief_spike_shorter_than_for_never_fires() -> None:
    """The condition must hold for the whole 'for' duration."""
    m = Metrics([])
    r = Recorder(m, _rule(**{"for": "60s", "window": "10s"}))
    await r.at(0)
    m.http_done(CHAT, 503, None, 0.01)
    assert await r.at(10) == []
    assert await r.at(30) == []  # the window no longer holds the error: the pending episode ends
    m.http_done(CHAT, 503, None, 0.01)
    assert await r.at(40) == [] and await r.at(80) == []
    assert r.events == []


def _answer(m: Metrics, tokens: int, model: str = "m") -> None:
    from backends.base import Usage

    m.model_done(model, model, "ok", fallback=False, usage=Usage(10, tokens), ttft_s=0.1)


async def test_deviation_from_the_rolling_baseline_fires_per_model() -> None:
    """Output length more than 2 sigma from its baseline fires for that model only, then resolves."""
    m = Metrics([ModelRoute(name="m", backend="b", version="2"), ModelRoute(name="other", backend="b")])
    r = Recorder(m, _rule(level="model", signal="output_tokens", window="60s", above=None,
                          deviation={"sigmas": 2, "baseline": "1h", "min_samples": 10}))  # fmt: skip
    t = 0.0
    await r.at(t)
    for i in range(12):  # the baseline: about 100 tokens per answer
        t += 60
        _answer(m, 95 if i % 2 else 105)
        _answer(m, 50, "other")
        assert await r.at(t) == []
    t += 60
    _answer(m, 400)
    _answer(m, 50, "other")
    assert await r.at(t) == [("firing", {"model": "m", "version": "2"})]
    t += 60
    _answer(m, 100)
    assert await r.at(t) == [("resolved", {"model": "m", "version": "2"})]


async def test_deviation_needs_its_minimum_samples() -> None:
    """Until the baseline holds min_samples evaluations, no deviation fires."""
    m = Metrics([ModelRoute(name="m", backend="b")])
    r = Recorder(m, _rule(level="model", signal="output_tokens", window="10s", above=None,
                          deviation={"sigmas": 2, "baseline": "1h", "min_samples": 10}))  # fmt: skip
    await r.at(0)
    for i, tokens in enumerate([100, 100, 100, 5000]):
        _answer(m, tokens)
        assert await r.at(10 * (i + 1)) == []


async def test_accuracy_drop_against_its_baseline() -> None:
    """Accuracy more than 3 points below its baseline mean fires; a recovery resolves it."""
    m = Metrics([ModelRoute(name="credit", backend="b")])
    r = Recorder(m, _rule(level="business", signal="accuracy", window="1s", above=None,
                          drop={"by": 0.03, "baseline": "30d"}))  # fmt: skip
    gauge = m.accuracy.labels("credit", "")
    t = 0.0
    step = 30 * 86400 / 120  # the baseline keeps one sample per 1/120 of its span
    for _ in range(5):
        gauge.set(0.9)
        t += step
        assert await r.at(t) == []
    gauge.set(0.85)
    assert await r.at(t + step) == [("firing", {"model": "credit", "version": ""})]
    gauge.set(0.9)
    assert await r.at(t + 2 * step) == [("resolved", {"model": "credit", "version": ""})]


async def test_a_removed_rule_resolves_its_alerts_and_the_firing_gauge() -> None:
    """Rules reload with the policy: a firing alert whose rule is gone resolves; its gauge series goes."""
    m = Metrics([])
    rule = _rule(window="10s")
    r = Recorder(m, rule)
    await r.at(0)
    m.http_done(CHAT, 500, None, 0.01)
    assert await r.at(10) == [("firing", {})]
    assert m.alerts_firing.labels("TestAlert", "warning")._value.get() == 1
    r.policy = AlertPolicy(rules=())
    assert await r.at(20) == [("resolved", {})]
    assert "TestAlert" not in str(next(iter(m.alerts_firing.collect())).samples)


async def test_a_failing_notification_does_not_stop_the_others() -> None:
    """If notifying one alert raises, the next alert is still notified."""
    m = Metrics([])
    seen: list[str] = []

    async def notify(event: AlertEvent) -> None:
        seen.append(event.rule.name)
        if event.rule.name == "A":
            raise RuntimeError("channel down")

    policy = AlertPolicy(rules=(_rule(name="A", window="10s"), _rule(name="B", window="10s")))
    evaluator = Evaluator(Sources(m), lambda: policy, notify, interval_s=10)
    await evaluator.step(now=0)
    m.http_done(CHAT, 500, None, 0.01)
    await evaluator.step(now=10)
    assert seen == ["A", "B"]


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[dict[str, Any]], list[dict[str, str]]]]:
    """A real webhook receiver on a loopback port: it answers 503 to the first POST, 200 to the others."""
    bodies: list[dict[str, Any]] = []
    attempts: list[dict[str, str]] = []

    async def hook(request: web.Request) -> web.Response:
        attempts.append(dict(request.headers))
        if len(attempts) == 1:
            return web.Response(status=503)
        bodies.append(await request.json())
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    async with serve(app) as port:
        yield f"http://127.0.0.1:{port}/hook", bodies, attempts


async def test_api_error_rate_alert_end_to_end(triton: Any, tmp_path: Path, receiver: Any,
                                               caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    """Failing requests to a broken model fire the error-rate alert exactly once: a ledger entry, a log line and a
    webhook message (delivered after a 503 and a retry); with no more failures in the window it resolves."""
    url, bodies, attempts = receiver
    folder = tmp_path / "policies"
    shutil.copytree(POLICIES, folder)
    rules = yaml.safe_load((folder / "alerts.yaml").read_text())
    (rule,) = [r for r in rules["rules"] if r["name"] == "APIErrorRateHigh"]
    rule.update({"window": "5s", "for": "0s"})  # failures a few seconds apart stay in one episode
    (folder / "alerts.yaml").write_text(yaml.safe_dump({"rules": [rule]}))
    settings = make_settings(triton, tmp_path, policy={"dir": folder, "watch": False},
                             alerts={"interval_s": 0.2, "webhook_url": url, "webhook_token": "hook-secret",
                                     "webhook_backoff_s": 0.05})  # fmt: skip
    caplog.set_level(logging.INFO, logger="gateway.alerts")
    async with in_process(create_app(settings), new_key(settings, "admin")) as c:
        for _ in range(5):
            r = await c.post(CHAT, json={"model": "broken-alone", "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 502
        await wait_for(lambda: len(bodies) >= 1, 30, "the firing message")
        await wait_for(lambda: len(bodies) >= 2, 30, "the resolved message")
        metrics = (await c.get("/metrics")).text
    assert [b["status"] for b in bodies] == ["firing", "resolved"]
    assert len(attempts) == 3 and all(a["Authorization"] == "Bearer hook-secret" for a in attempts)
    alert = bodies[0]["alerts"][0]
    assert alert["labels"]["alertname"] == "APIErrorRateHigh" and alert["labels"]["severity"] == "critical"
    assert alert["annotations"]["runbook_url"] == "docs/operations.md#apierrorratehigh"
    assert bodies[1]["alerts"][0]["endsAt"] != "0001-01-01T00:00:00Z"
    store = open_store(settings.ledger_store())
    try:
        entries = [json.loads(b) for log in store.logs() for _, _, b in store.read(log)]
    finally:
        store.close()
    fired = [e for e in entries if e["kind"] == "alert.fired"]
    resolved = [e for e in entries if e["kind"] == "alert.resolved"]
    assert len(fired) == len(resolved) == 1
    assert fired[0]["data"]["alert"] == "APIErrorRateHigh" and fired[0]["data"]["value"] == 1.0
    assert fired[0]["actor"] == "gateway" and "ended_at" in resolved[0]["data"]
    events = [getattr(rec, "event", None) for rec in caplog.records if rec.name == "gateway.alerts"]
    assert events == ["alert.fired", "alert.resolved"]
    assert 'gateway_alerts_firing{alert="APIErrorRateHigh",severity="critical"} 0.0' in metrics
    assert 'gateway_audit_events_total{kind="alert.fired"} 1.0' in metrics


async def test_webhook_never_blocks_and_gives_up_after_its_retries() -> None:
    """An unreachable webhook: send returns at once; after the retries the message is counted as failed."""
    m = Metrics([])
    hook = Webhook(AlertSettings(webhook_url="http://127.0.0.1:9/hook", webhook_retries=2, webhook_backoff_s=0.01), m)
    hook.start()
    try:
        event = AlertEvent("firing", _rule(), {}, 0.5, 0.0)
        hook.send(message(event, "test/origin"))
        await wait_for(lambda: m.webhook_failures._value.get() == 1, 30, "the delivery to be given up")
    finally:
        await hook.aclose()


def test_webhook_message_is_alertmanager_shaped() -> None:
    """The message carries Alertmanager's version-4 fields, the rule's labels and annotations."""
    event = AlertEvent("resolved", _rule(level="model", signal="refusal_rate", above=0.1), {"model": "m"}, 0.25,
                       1_700_000_000.0, 1_700_000_060.0)  # fmt: skip
    msg = message(event, "llm-gateway.local/default")
    assert msg["version"] == "4" and msg["status"] == "resolved"
    (alert,) = msg["alerts"]
    assert alert["labels"] == {"alertname": "TestAlert", "severity": "warning", "level": "model",
                               "gateway": "llm-gateway.local/default", "model": "m"}  # fmt: skip
    assert alert["startsAt"] == "2023-11-14T22:13:20+00:00" and alert["endsAt"] == "2023-11-14T22:14:20+00:00"
    assert alert["annotations"]["value"] == "0.25" and alert["annotations"]["runbook_url"] == "r"
