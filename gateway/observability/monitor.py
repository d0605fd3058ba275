"""What monitoring runs while the gateway serves: Triton's metrics reader, the alert evaluator and the webhook.

``Monitor`` is started and closed by the app's lifespan. It binds the ledger and the Triton reader to the
metrics' scrape-time collector, runs the evaluator every ``alerts.interval_s`` (a task it keeps a reference to
and stops with the lifespan), and turns each alert event into the three things an alert is: a log line, a
durable ledger entry (``alert.fired`` / ``alert.resolved``) and, if configured, a webhook message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from gateway.audit import AuditTrail
from gateway.errors import GatewayError
from gateway.observability.alerts_policy import AlertPolicy
from gateway.observability.evaluator import AlertEvent, Evaluator
from gateway.observability.metrics import Metrics
from gateway.observability.signals import Sources
from gateway.observability.triton import TritonScraper
from gateway.observability.webhook import Webhook, message
from gateway.settings import Settings
from gateway.timefmt import iso

log = logging.getLogger("gateway.alerts")


class Monitor:
    def __init__(self, settings: Settings, metrics: Metrics, audit: AuditTrail,
                 rules: Callable[[], AlertPolicy]) -> None:  # fmt: skip
        self.settings = settings
        self.metrics = metrics
        self.audit = audit
        self.triton = TritonScraper(settings)
        self.webhook = Webhook(settings.alerts, metrics) if settings.alerts.webhook_url else None
        self.evaluator = Evaluator(Sources(metrics, self.triton, audit), rules, self.notify, settings.alerts.interval_s)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.metrics.collector.bind(self.audit, self.triton)
        self.audit.observe = self.metrics.audit_event
        if self.webhook is not None:
            self.webhook.start()
        if self.settings.alerts.enabled:
            self.evaluator.prime()
            self._task = asyncio.create_task(self._run(), name="alert-evaluator")

    async def _run(self) -> None:
        interval = self.settings.alerts.interval_s
        while True:
            try:
                await asyncio.wait_for(self._stop.wait(), interval)
                return
            except TimeoutError:
                pass
            try:
                await self.evaluator.step()
            except Exception:  # a bug in one evaluation must not end alerting for good
                log.exception("alert evaluation failed")

    async def notify(self, event: AlertEvent) -> None:
        """A log line, a durable ledger entry and a webhook message for one firing or resolved alert."""
        rule = event.rule
        kind = "alert.fired" if event.status == "firing" else "alert.resolved"
        data: dict[str, Any] = {"alert": rule.name, "level": rule.level, "severity": rule.severity,
                                "labels": event.labels, "condition": rule.condition(), "value": event.value,
                                "started_at": iso(event.started_at)}  # fmt: skip
        if event.ended_at is not None:
            data["ended_at"] = iso(event.ended_at)
        where = ", ".join(f"{k}={v}" for k, v in event.labels.items())
        fields = {"event": kind, "alert": rule.name, "severity": rule.severity, "labels": event.labels}
        log.log(logging.WARNING if event.status == "firing" else logging.INFO, "alert %s %s%s: %s (value %s)",
                rule.name, event.status, f" ({where})" if where else "", rule.condition(),
                "none" if event.value is None else f"{event.value:.6g}", extra=fields)  # fmt: skip
        try:
            await self.audit.commit(kind, "gateway", data)
        except GatewayError as exc:  # the ledger is down: the log line and the webhook still tell
            log.error("alert %s: the ledger entry could not be written: %s", rule.name, exc.message)
        if self.webhook is not None:
            self.webhook.send(message(event, self.settings.ledger.origin))

    async def aclose(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self.webhook is not None:
            await self.webhook.drain(self.settings.alerts.webhook_timeout_s)
            await self.webhook.aclose()
        self.audit.observe = None
        self.metrics.collector.bind(None, None)
        await self.triton.aclose()
