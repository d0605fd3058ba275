"""Fairness audits over the API (docs/fairness.md).

- ``GET /admin/fairness/audits`` (Casbin ``report`` on ``route:/admin/fairness/audits``): finished audits,
  probe and outcome, newest first; filters ``name``, ``model``, ``kind``; pages of ``limit`` (1-200, default
  20) continued with ``after=<the last id>``.
- ``GET /admin/fairness/audits/{audit_id}``: one audit with its whole report; 404 ``audit_not_found``.
- ``POST /admin/fairness/outcomes`` (``label`` on ``route:/admin/fairness/outcomes``, and on each model whose
  decisions the file labels): a CSV of ground-truth outcomes, ``Content-Type: text/csv``
  (``gateway.fairness.upload`` for the format and its errors).
"""

from __future__ import annotations

import asyncio
import re

from starlette.requests import Request
from starlette.responses import Response

from gateway.api.body import read_body
from gateway.errors import InvalidRequest, NotFound
from gateway.identity.principal import Principal
from gateway.security import PRINCIPAL
from gateway.state import Gateway, json_response

_KINDS = ("probe", "outcome")
_ID = re.compile(r"^[0-9a-f]{32}$")
_FILTERS = {"name", "model", "kind", "limit", "after"}


async def list_audits(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    items = request.query_params.multi_items()
    params = dict(items)
    if len(params) != len(items):
        raise InvalidRequest("a parameter is given twice")
    unknown = sorted(set(params) - _FILTERS)
    if unknown:
        raise InvalidRequest(f"unknown parameter {unknown[0]!r} (one of {', '.join(sorted(_FILTERS))})",
                             param=unknown[0])  # fmt: skip
    kind = params.get("kind")
    if kind is not None and kind not in _KINDS:
        raise InvalidRequest(f"kind must be probe or outcome, not {kind[:20]!r}", param="kind")
    raw = params.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= 200:
        raise InvalidRequest("limit must be a whole number from 1 to 200", param="limit")
    after = params.get("after")
    if after is not None and not _ID.match(after):
        raise InvalidRequest("after must be the id of an audit", param="after")
    records, more = await asyncio.to_thread(gw.fairness.store.audits, name=params.get("name"),
                                            model=params.get("model"), kind=kind, limit=int(raw),
                                            after=after)  # fmt: skip
    data = [r.summary() for r in records]
    return json_response({"object": "list", "data": data, "has_more": more,
                          "last_id": data[-1]["id"] if data else None})  # fmt: skip


async def get_audit(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    audit_id = request.path_params["audit_id"]
    record = await asyncio.to_thread(gw.fairness.store.audit, audit_id) if _ID.match(audit_id) else None
    if record is None:
        raise NotFound(f"no fairness audit {audit_id[:64]!r}", code="audit_not_found")
    return json_response(record.to_dict())


async def upload_outcomes(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    principal: Principal = request.scope[PRINCIPAL]
    limit = gw.settings.fairness.max_upload_bytes
    raw = await read_body(request, limit, lambda media: media == "text/csv", "text/csv",
                          f"the file exceeds {limit} bytes (fairness.max_upload_bytes)")  # fmt: skip
    entry = await gw.fairness.upload(principal, raw)
    return json_response({"object": "fairness.outcomes_upload", "id": entry["upload_id"], "rows": entry["rows"],
                          "positives": entry["positives"], "models": entry["models"], "sha256": entry["sha256"],
                          "ledger": {"log": gw.settings.ledger.origin, "seq": entry["seq"]}})  # fmt: skip
