"""Gather a report's sections: the ledger (one scan, then verification), the statistics service (every number
about callers' traffic, with noise, spent from the requester's budget), the fairness results store, the
settings and the policy in force.

The body is plain JSON (``docs/report.schema.json``). Numbers about callers' traffic (requests, errors,
fallbacks, denials by reason, personal data by kind) come only from ``StatsService.release``, each carrying
its epsilon, mechanism, accuracy and the requester's budget after it. Exact numbers are only about the
gateway's own events (policy changes, authentication failures, alerts, circuit breaker transitions, ledger
extent), in sections ``policies/controls.yaml`` marks ``security``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import orjson

import gateway
from gateway.errors import BudgetExhausted, InvalidRequest
from gateway.fairness.store import AuditRecord, FairnessStore
from gateway.reports.controls import SECTIONS, TITLES, Controls
from gateway.reports.ledger_scan import Scan, scan
from gateway.settings import Settings
from ledger.store import Store, open_store
from ledger.verifier import AnchorSource, verify_log

FORMAT = "llm-gateway-report/1"

Release = Callable[[dict[str, str]], Awaitable[dict[str, Any]]]
"""The release path bound to the requester: ``StatsService.release(principal, roles, params)``."""

_RELEASES = {  # (section, name): the statistics query
    ("operations", "requests"): {"metric": "requests", "group_by": "model"},
    ("operations", "errors"): {"metric": "errors", "group_by": "model"},
    ("operations", "fallbacks"): {"metric": "fallbacks", "group_by": "model"},
    ("access_control", "denials"): {"metric": "denials", "group_by": "reason"},
    ("privacy", "pii_detections"): {"metric": "pii_detections", "group_by": "entity"},
}


@dataclass(frozen=True)
class Sources:
    """Where a report's evidence comes from."""

    settings: Settings
    origin: str
    verifier_key: str
    fairness: FairnessStore
    policy_status: Callable[[], dict[str, Any]]
    release: Release
    chain: AnchorSource | None = None
    """The chain connection, when there is one: the verification then checks every anchor on it too."""


def config_digest(settings: Settings) -> str:
    """SHA-256 of the canonical JSON of the settings in force (secrets appear masked, never in clear)."""
    dumped = orjson.loads(orjson.dumps(settings.model_dump(mode="json"), default=str))
    return hashlib.sha256(orjson.dumps(dumped, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _window(start: date, end: date) -> tuple[float, float]:
    lo = datetime.combine(start, time(), UTC).timestamp()
    return lo, datetime.combine(end + timedelta(days=1), time(), UTC).timestamp()


async def _released(release: Release, query: dict[str, str], start: date, end: date, epsilon: float) -> dict[str, Any]:
    """One release for the report, or why there is none (the budget is spent: no number, never an exact one)."""
    params = {**query, "from": start.isoformat(), "to": end.isoformat(), "epsilon": repr(epsilon)}
    try:
        answer = await release(params)
    except BudgetExhausted as exc:
        return {"released": False, "reason": exc.message, "query": query}
    except InvalidRequest as exc:
        return {"released": False, "reason": exc.message, "query": query}
    privacy, budget = answer["privacy"], answer["budget"]
    return {
        "released": True, "query": query, "groups": answer["groups"],
        "privacy": {"epsilon": privacy["epsilon"], "delta": privacy["delta"], "mechanism": privacy["mechanism"],
                    "accuracy": privacy["accuracy"], "unit": privacy["unit"]},
        "budget": {"consumer": budget["consumer"], "period": budget["period"], "remaining": budget["remaining"]},
        "cached": bool(answer.get("cached")),
    }  # fmt: skip


def _events(found: Scan, *kinds: str) -> list[dict[str, Any]]:
    out = [e for k in kinds for e in found.events.get(k, [])]
    return sorted(out, key=lambda e: (e["ts"], e["log"], e["seq"]))


def _inventory(src: Sources, found: Scan) -> dict[str, Any]:
    s = src.settings
    return {
        "gateway": {"version": gateway.__version__, "origin": src.origin, "config_sha256": config_digest(s)},
        "models": [{"name": m.name, "backend": m.backend, "backend_model": m.upstream_model, "version": m.version,
                    "kind": m.kind, "fallback": m.fallback} for m in s.models],
        "backends": [{"name": n, "kind": b.kind} for n, b in sorted(s.backends.items())],
        "pins": [{"ts": e["ts"], "actor": e["actor"], **e["data"]} for e in _events(found, "model.pinned")],
    }  # fmt: skip


def _access(src: Sources, found: Scan) -> dict[str, Any]:
    changes = [{"ts": e["ts"], "actor": e["actor"], "outcome": e["kind"].split(".", 1)[1],
                "version": e["data"].get("version", e["data"].get("keeps_version")),
                "digest": e["data"].get("digest"), "reason": e["data"].get("reason"),
                "files": e["data"].get("files", {})}
               for e in _events(found, "policy.loaded", "policy.accepted", "policy.rejected")]  # fmt: skip
    failures = _events(found, "authn.failed")
    reasons = Counter(str(e["data"].get("reason", "unknown")) for e in failures)
    start = found.before.get("policy.accepted") or found.before.get("policy.loaded")
    return {
        "policy_in_force": src.policy_status(),
        "policy_at_start": None if start is None else {"ts": start["ts"], **start["data"]},
        "policy_changes": changes,
        "authentication_failures": {"count": len(failures), "by_reason": dict(sorted(reasons.items()))},
    }


def _privacy(found: Scan) -> dict[str, Any]:
    releases = [{"ts": e["ts"], "consumer": e["actor"], "query": e["data"].get("query"),
                 "epsilon": e["data"].get("epsilon"), "delta": e["data"].get("delta"),
                 "mechanism": e["data"].get("mechanism")} for e in _events(found, "stats.released")]  # fmt: skip
    spent: dict[str, float] = {}
    for r in releases:
        spent[r["consumer"]] = round(spent.get(r["consumer"], 0.0) + float(r["epsilon"] or 0.0), 6)
    return {"statistics_released": releases, "epsilon_by_consumer": spent,
            "statistics_refused": len(found.events.get("stats.refused", []))}  # fmt: skip


_CHECK_FIELDS = ("metric", "status", "threshold", "bound", "value", "low", "high", "reason")


def _checks(value: Any, out: list[dict[str, Any]], groups: list[dict[str, Any]], attribute: str | None) -> None:
    """Every check and every group's selection rate, wherever the audit's result nests them."""
    if isinstance(value, dict):
        attribute = value.get("attribute", attribute) if isinstance(value.get("attribute"), str) else attribute
        for key, item in value.items():
            if key == "checks" and isinstance(item, list):
                out.extend({"attribute": attribute, **{k: c.get(k) for k in _CHECK_FIELDS}}
                           for c in item if isinstance(c, dict))  # fmt: skip
            elif key == "groups" and isinstance(item, list):
                for g in item:
                    rate = g.get("selection_rate") if isinstance(g, dict) else None
                    if isinstance(rate, dict) and rate.get("kind") == "estimate":
                        groups.append({"attribute": attribute, "group": g.get("group"), "value": rate["value"],
                                       "low": rate["low"], "high": rate["high"]})  # fmt: skip
            else:
                _checks(item, out, groups, attribute)
    elif isinstance(value, list):
        for item in value:
            _checks(item, out, groups, attribute)


def _fairness(records: list[AuditRecord]) -> dict[str, Any]:
    audits = []
    for r in records:
        checks: list[dict[str, Any]] = []
        groups: list[dict[str, Any]] = []
        _checks(r.result, checks, groups, None)
        audits.append({**r.summary(), "thresholds": r.result.get("thresholds", {}), "checks": checks,
                       "selection_rates": groups})  # fmt: skip
    trends: dict[str, list[dict[str, Any]]] = {}
    for a in audits:
        for c in a["checks"]:
            if c["value"] is not None:
                key = f"{a['name']} / {a['model']} / {c['attribute']} / {c['metric']}"
                point = {"version": a["version"], "finished_at": a["finished_at"], "value": c["value"],
                         "low": c["low"], "high": c["high"]}  # fmt: skip
                trends.setdefault(key, []).append(point)
    passed = sum(1 for a in audits if a["status"] == "pass")
    return {"audits": audits, "trends": [{"series": k, "points": v} for k, v in sorted(trends.items())],
            "summary": {"audits": len(audits), "passed": passed, "not_passed": len(audits) - passed}}  # fmt: skip


def _operations(found: Scan) -> dict[str, Any]:
    fired = _events(found, "alert.fired")
    resolved = _events(found, "alert.resolved")
    incidents = [{"ts": e["ts"], "event": e["kind"].split(".", 1)[1], **e["data"]} for e in _events(
        found, "alert.fired", "alert.resolved")]  # fmt: skip
    breaker = [{"ts": e["ts"], **e["data"]} for e in _events(found, "breaker.changed")]
    return {"incidents": incidents, "alerts_fired": len(fired), "alerts_resolved": len(resolved),
            "breaker_transitions": breaker}  # fmt: skip


def _error_rate(ops: dict[str, Any]) -> float | None:
    """Noisy errors over noisy requests: post-processing of two releases, which costs no privacy. None when
    either was not released or no request was counted."""
    errors, requests = ops.get("errors", {}), ops.get("requests", {})
    if not (errors.get("released") and requests.get("released")):
        return None
    total = sum(g["value"] for g in requests["groups"])
    return round(min(1.0, sum(g["value"] for g in errors["groups"]) / total), 4) if total > 0 else None


def _integrity(src: Sources, store: Store, found: Scan) -> dict[str, Any]:
    result = verify_log(store, src.origin, src.verifier_key, chain=src.chain)
    logs = []
    for name, extent in sorted(found.logs.items()):
        last = extent.last_seq if extent.last_seq is not None else -1
        cps = [c for c in store.checkpoints(name) if c.tree_size > last]
        anchors = [a for a in store.anchors(name) if int(a.get("tree_size", 0)) > last and not a.get("lost")]
        covering = cps[0] if cps else None
        logs.append({
            "log": name, "first_seq": extent.first_seq, "last_seq": extent.last_seq, "entries": extent.entries,
            "checkpoint": None if covering is None else {"tree_size": covering.tree_size, "root": covering.root.hex(),
                                                         "timestamp": covering.timestamp, "note": covering.note},
            "anchor": anchors[0] if anchors else None,
        })  # fmt: skip
    return {
        "verification": result.to_dict() | {
            "checked_at": datetime.now(UTC).isoformat(timespec="seconds"), "verifier_key": src.verifier_key},
        "logs": logs,
        "entries_in_period": found.entries,
        "how_to_verify": [
            "gateway report verify REPORT.json --pdf REPORT.pdf  (signature, digests and the report.created entry)",
            "gateway ledger verify --chain  (every hash, link, checkpoint signature and anchor of the log)",
            "python -m ledger.verify proof.json --key VERIFIER_KEY --rpc URL  (one entry, offline)",
        ],
    }  # fmt: skip


async def collect(src: Sources, controls: Controls, start: date, end: date, sections: tuple[str, ...],
                  progress: Callable[[str], None]) -> tuple[dict[str, Any], int]:  # fmt: skip
    """The report's sections (see the module docstring), and how many ledger entries the period holds (which
    says whether it is empty, whatever the sections); ``progress`` is told each step."""
    epsilon = src.settings.reports.epsilon_per_statistic

    def ledger_part() -> tuple[Scan, dict[str, Any] | None]:
        store = open_store(src.settings.ledger_store())
        try:
            found = scan(store, start, end)
            progress("verifying the ledger")
            integrity = _integrity(src, store, found) if "integrity" in sections else None
            return found, integrity
        finally:
            store.close()

    progress("reading the ledger")
    found, integrity = await asyncio.to_thread(ledger_part)
    body: dict[str, Any] = {}
    if "inventory" in sections:
        body["inventory"] = _inventory(src, found)
    if "access_control" in sections:
        body["access_control"] = _access(src, found)
    if "privacy" in sections:
        body["privacy"] = _privacy(found)
    if "fairness" in sections:
        progress("reading fairness audits")
        body["fairness"] = _fairness(await asyncio.to_thread(src.fairness.finished_between, *_window(start, end)))
    if "operations" in sections:
        body["operations"] = _operations(found)
    if integrity is not None:
        body["integrity"] = integrity
    for (section, name), query in _RELEASES.items():
        if section in body:
            progress(f"releasing {name} (differential privacy)")
            body[section][name] = await _released(src.release, query, start, end, epsilon)
    if "operations" in body:
        body["operations"]["error_rate"] = _error_rate(body["operations"])
    for section in body:
        body[section] = {"title": TITLES[section], "audience": controls.audience(section), **body[section]}
    return {name: body[name] for name in SECTIONS if name in body}, found.entries
