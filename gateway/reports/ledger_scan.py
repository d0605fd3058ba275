"""One pass over the ledger for a report's period: the gateway's own events, exactly, and the log's extent.

Only events about the gateway itself are kept exactly: policy loads and changes, authentication failures
(no caller is identified), alerts, circuit breaker transitions, model pins, statistics releases, fairness
audits and earlier reports. Callers' traffic (``request.*``, ``authz.*``, ``pii.*``) is skipped here: a
report states it only through the differentially private release path (``gateway.reports.collect``).

An entry is in the period when its ``ts`` (UTC) falls on a day from ``start`` to ``end`` inclusive. ``ts``
is a fixed-width string, so the test is a comparison of bytes, and entries of kinds the report does not list
are never parsed: a scan reads about a million entries in a few seconds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import orjson

from ledger.store import Store

KEPT = (
    "policy.loaded", "policy.accepted", "policy.rejected", "authn.failed", "alert.fired", "alert.resolved",
    "breaker.changed", "model.pinned", "stats.released", "stats.refused", "fairness.audit", "routes.loaded",
    "report.created",
)  # fmt: skip
"""The kinds whose entries a report lists (each with its log, seq, time, actor and data)."""

_KEPT_BYTES = tuple(f'"kind":"{k}"'.encode() for k in KEPT)
_TS = b'"ts":"'


@dataclass
class LogExtent:
    """The part of one log that falls in the period."""

    first_seq: int | None = None
    last_seq: int | None = None
    entries: int = 0


@dataclass
class Scan:
    """What the pass found."""

    entries: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    logs: dict[str, LogExtent] = field(default_factory=dict)
    before: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The newest entry of some kinds before the period (the policy and routes in force when it began)."""


def _kind(body: bytes) -> str:
    i = body.find(b'"kind":"')
    j = body.find(b'"', i + 8)
    return body[i + 8 : j].decode()


def scan(store: Store, start: date, end: date) -> Scan:
    """Read every log of ``store`` once (see the module docstring)."""
    lo = start.isoformat().encode()
    hi = (end + timedelta(days=1)).isoformat().encode()
    out = Scan()
    for log in store.logs():
        extent = LogExtent()
        for seq, _, body in store.read(log):
            i = body.find(_TS) + 6
            ts = body[i : i + 10]
            if ts >= hi:
                continue  # ts is not strictly increasing (docs/ledger.md 2.1): keep reading
            in_period = ts >= lo
            kept = any(k in body for k in _KEPT_BYTES)
            if in_period:
                out.entries += 1
                extent.entries += 1
                if extent.first_seq is None:
                    extent.first_seq = seq
                extent.last_seq = seq
                out.kinds[_kind(body)] += 1
            if not kept:
                continue
            entry = orjson.loads(body)
            kind = entry["kind"]
            if kind not in KEPT:  # the bytes matched inside data, not the kind
                continue
            if in_period:
                out.events.setdefault(kind, []).append(
                    {
                        "log": log,
                        "seq": seq,
                        "kind": kind,
                        "ts": entry["ts"],
                        "actor": entry["actor"],
                        "data": entry["data"],
                    }
                )
            elif kind in ("policy.loaded", "policy.accepted", "routes.loaded"):
                out.before[kind] = {"log": log, "seq": seq, "ts": entry["ts"], "data": entry["data"]}
        if extent.entries:
            out.logs[log] = extent
    return out
