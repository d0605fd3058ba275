"""The audit path: every security decision is handed to an ``AuditSink``.

The tamper-evident ledger (issue 5) implements this interface. Until then ``LogAuditSink``
writes each event as one JSON line to the ``gateway.audit`` logger. Events carry who, what and
why, never credentials, prompts or PII values.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

import orjson

_log = logging.getLogger("gateway.audit")


class AuditSink(Protocol):
    def record(self, kind: str, actor: str, data: dict[str, Any]) -> None:
        """Record one event. Must not block the event loop for long; must not raise."""
        ...


class LogAuditSink:
    """Structured log lines, until the ledger exists."""

    def record(self, kind: str, actor: str, data: dict[str, Any]) -> None:
        line = {"ts": round(time.time(), 3), "kind": kind, "actor": actor, **data}
        _log.info("%s", orjson.dumps(line, default=str).decode())
