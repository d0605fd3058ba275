"""Alert messages to an optional webhook: queued, sent by one background task, retried with backoff.

The message is the JSON of Alertmanager's webhook (version 4), so receivers written for Alertmanager (chat
bridges, paging services) take it as it is. ``send`` never blocks and never fails: the queue is bounded (the
oldest message gives way) and delivery happens in the task, which retries a connection error, 408, 429 or 5xx
``alerts.webhook_retries`` times, the wait doubling from ``alerts.webhook_backoff_s``. Another 4xx is not
retried. What is given up on is logged and counted (``gateway_alert_webhook_failures_total``). The HTTP client
ignores proxy variables (``trust_env=False``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import TYPE_CHECKING, Any

import aiohttp

from gateway.settings import AlertSettings
from gateway.timefmt import iso

if TYPE_CHECKING:
    from gateway.observability.evaluator import AlertEvent
    from gateway.observability.metrics import Metrics

log = logging.getLogger(__name__)

QUEUE = 256
_NEVER = "0001-01-01T00:00:00Z"  # Alertmanager's "not ended"


def _iso(ts: float | None) -> str:
    return _NEVER if ts is None else iso(ts)


def message(event: AlertEvent, origin: str) -> dict[str, Any]:
    """The Alertmanager-style webhook message for one alert event."""
    rule = event.rule
    labels = {"alertname": rule.name, "severity": rule.severity, "level": rule.level, "gateway": origin,
              **event.labels}  # fmt: skip
    annotations = {"description": rule.description, "runbook_url": rule.runbook, "condition": rule.condition(),
                   "value": "" if event.value is None else f"{event.value:.6g}"}  # fmt: skip
    fingerprint = hashlib.sha256(repr(sorted(labels.items())).encode()).hexdigest()[:16]
    alert = {"status": event.status, "labels": labels, "annotations": annotations, "startsAt": _iso(event.started_at),
             "endsAt": _iso(event.ended_at), "fingerprint": fingerprint}  # fmt: skip
    return {"version": "4", "status": event.status, "receiver": "llm-gateway", "groupKey": f"{{}}:{rule.name}",
            "groupLabels": {"alertname": rule.name}, "commonLabels": labels, "commonAnnotations": annotations,
            "externalURL": "", "truncatedAlerts": 0, "alerts": [alert]}  # fmt: skip


class Webhook:
    def __init__(self, settings: AlertSettings, metrics: Metrics) -> None:
        assert settings.webhook_url is not None
        self.url = settings.webhook_url
        self.settings = settings
        self.metrics = metrics
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE)
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        headers: dict[str, str] = {}
        if self.settings.webhook_token is not None:
            headers["authorization"] = f"Bearer {self.settings.webhook_token.get_secret_value()}"
        timeout = aiohttp.ClientTimeout(total=self.settings.webhook_timeout_s)
        self._session = aiohttp.ClientSession(trust_env=False, headers=headers, timeout=timeout)
        self._task = asyncio.create_task(self._run(), name="alert-webhook")

    def send(self, msg: dict[str, Any]) -> None:
        """Queue ``msg`` for delivery; returns at once."""
        if self._queue.full():
            dropped = self._queue.get_nowait()
            log.error("alert webhook queue full: dropped a %s message of %s", dropped["status"],
                      dropped["groupLabels"]["alertname"])  # fmt: skip
            self.metrics.webhook_failures.inc()
        self._queue.put_nowait(msg)

    async def _run(self) -> None:
        while True:
            msg = await self._queue.get()
            try:
                await self._deliver(msg)
            finally:
                self._queue.task_done()

    async def _deliver(self, msg: dict[str, Any]) -> None:
        assert self._session is not None
        s = self.settings
        name = msg["groupLabels"]["alertname"]
        why = ""
        for attempt in range(s.webhook_retries + 1):
            if attempt:
                await asyncio.sleep(min(s.webhook_backoff_s * 2 ** (attempt - 1), 60.0))
            try:
                async with self._session.post(self.url, json=msg) as resp:
                    if resp.status < 300:
                        return
                    why = f"HTTP {resp.status}"
                    if resp.status < 500 and resp.status not in (408, 429):
                        break
            except (aiohttp.ClientError, TimeoutError) as exc:
                why = repr(exc)
        log.error("alert %s (%s) not delivered to the webhook: %s", name, msg["status"], why,
                  extra={"event": "alert.webhook_failed", "alert": name})  # fmt: skip
        self.metrics.webhook_failures.inc()

    async def drain(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) until every queued message is delivered or given up on."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout_s)
        except TimeoutError:
            log.warning("%d alert messages not sent to the webhook at shutdown", self._queue.qsize())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
