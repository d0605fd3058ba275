"""One pass over the ledger for a report's period: the gateway's own events, exactly, and the log's extent.

Only events about the gateway itself are kept exactly: policy loads and changes, authentication failures
(no caller is identified), alerts, circuit breaker transitions, model pins, statistics releases, fairness
audits and earlier reports. Callers' traffic (``request.*``, ``authz.*``, ``pii.*``) is skipped here: a
report states it only through the differentially private release path (``gateway.reports.collect``).

An entry is in the period when its ``ts`` (UTC) falls on a day from ``start`` to ``end`` inclusive. ``ts``
is a fixed-width string, so the test is a comparison of bytes, and entries of kinds the report does not list
are never parsed. Both are found from the end of the canonical body: its keys are sorted, so ``data`` (which
may nest keys of those names) comes before them, and a JSON string cannot hold an unescaped quote.
"""

from __future__ import annotations

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

_KEPT_BYTES = frozenset(k.encode() for k in KEPT)
_TS = b'"ts":"'
_KIND = b'"kind":"'


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
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    logs: dict[str, LogExtent] = field(default_factory=dict)
    before: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The newest entry of some kinds before the period (the policy and routes in force when it began)."""


def scan(store: Store, start: date, end: date) -> Scan:
    """Read every log of ``store`` once (see the module docstring)."""
    lo = start.isoformat().encode()
    hi = (end + timedelta(days=1)).isoformat().encode()
    out = Scan()
    for log in store.logs():
        extent = LogExtent()
        for seq, _, body in store.read(log):
            i = body.rfind(_TS) + 6  # keys are sorted: "data" (which may nest a "ts") comes first, "ts" last but "v"
            ts = body[i : i + 10]
            if ts >= hi:
                continue  # ts is not strictly increasing (docs/ledger.md 2.1): keep reading
            in_period = ts >= lo
            k = body.rfind(_KIND) + 8  # likewise the top-level "kind" is the last (only strings and numbers follow)
            kind_bytes = body[k : body.find(b'"', k)]
            if in_period:
                out.entries += 1
                extent.entries += 1
                if extent.first_seq is None:
                    extent.first_seq = seq
                extent.last_seq = seq
            if kind_bytes not in _KEPT_BYTES:
                continue
            entry = orjson.loads(body)
            kind = entry["kind"]
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
                seen = out.before.get(kind)
                if seen is None or entry["ts"] >= seen["ts"]:  # the newest across logs
                    out.before[kind] = {"log": log, "seq": seq, "ts": entry["ts"], "data": entry["data"]}
        if extent.entries:
            out.logs[log] = extent
    return out
