"""Structured logs: one JSON object per line on stderr, carrying the request id of the request being served.

``configure`` is called by ``gateway serve`` (never at import). Each line has ``ts`` (UTC, ISO 8601), ``level``,
``logger``, ``message``, ``request_id`` and ``trace_id`` when a request is being served (the middlewares set
``REQUEST_ID`` and ``tracing.TRACE_ID``; tasks a request starts inherit them), ``exc`` with a traceback, and any
``extra`` fields the call passed (such as ``event`` and ``alert`` for alerts).

No PII in logs: the gateway logs ids, model names, codes and counts, never a prompt, an answer or a header.
tests/gateway/test_logs.py sends requests full of personal data through every error path and checks that no
value of it reaches a log line.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.observability.tracing import TRACE_ID
from gateway.settings import LoggingSettings

REQUEST_ID: ContextVar[str | None] = ContextVar("gateway_request_id", default=None)

# Attributes every LogRecord has; anything else on a record came from ``extra`` and is emitted as a field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_DROP = frozenset({"color_message"})  # uvicorn's colored copy of the message


class JSONFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or REQUEST_ID.get()
        if rid is not None:
            out["request_id"] = rid
        tid = TRACE_ID.get()
        if tid is not None:
            out["trace_id"] = tid
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in _DROP and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = record.stack_info
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    """The plain format, with the request id when there is one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(rid)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        rid = getattr(record, "request_id", None) or REQUEST_ID.get()
        record.rid = f" [{rid}]" if rid else ""
        return super().format(record)


def configure(settings: LoggingSettings) -> None:
    """Send every log record to stderr in the configured format (the root logger's only handler)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if settings.format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level)
    # httpx logs every upstream request at INFO: one line per call, and ~3% of the CPU under load.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # uvicorn's own handlers would print plain text
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
