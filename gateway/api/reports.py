"""Compliance reports over the API (docs/reports.md), all under the Casbin action ``report`` on
``route:/admin/reports``.

- ``POST /admin/reports`` ``{"period": {"from", "to"}, "sections": [...]}``: queue a report; 202 with its status.
- ``GET /admin/reports``: the newest reports' statuses.
- ``GET /admin/reports/key``: the public key that signs reports.
- ``GET /admin/reports/{id}``: one report's status (``pending``, ``running``, ``done``, ``failed``).
- ``GET /admin/reports/{id}.json|.csv|.pdf``: a finished report's file, with ``ETag`` (its SHA-256) and
  ``Content-Disposition: attachment``; ``If-None-Match`` with that ETag gives 304. 404 ``report_not_found``
  for an unknown id, 409 ``report_not_ready`` before it is done.

Each section is evidence of its own: asking for a report with a section, or downloading one that holds it, also
needs ``report`` on ``route:/admin/reports/sections/<section>`` (``SECTION``). Sections with exact figures
(the policy's changes, the ledger's extent, per-group fairness rates) are thus kept from roles that read only
differentially private numbers. Without ``sections``, a report covers the sections the caller may read.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.api.body import read_json
from gateway.errors import Conflict, NotFound, PermissionDenied
from gateway.identity.principal import Principal
from gateway.reports.controls import SECTIONS
from gateway.reports.service import MEDIA, Format
from gateway.security import PRINCIPAL, authorize
from gateway.state import Gateway, json_response

_ID = re.compile(r"^[0-9a-f]{32}$")
FILE = re.compile(r"^([0-9a-f]{32})\.(json|csv|pdf)$")
_MAX_BODY = 64 * 1024
SECTION = "route:/admin/reports/sections/{}"
"""The Casbin object of one section's evidence (action ``report``)."""


def readable_sections(gw: Gateway, principal: Principal) -> list[str]:
    """The sections ``principal`` may read, by the policy in force (a view; nothing recorded)."""
    engine = gw.security.policy.engine
    return [s for s in SECTIONS if engine.decide(principal, SECTION.format(s), "report").allowed]


async def authorize_sections(gw: Gateway, principal: Principal, sections: object) -> None:
    """Decide, and record, ``report`` on each named section; PermissionDenied at the first one refused.
    Anything that is not a list of section names is left to the request's own validation (400)."""
    if isinstance(sections, list) and all(isinstance(s, str) and s in SECTIONS for s in sections):
        for section in sections:
            await authorize(gw.security.policy, gw.audit, principal, SECTION.format(section), "report")


async def checked_request(gw: Gateway, principal: Principal, body: object) -> object:
    """``body`` with the caller's readable sections when it names none; every section authorized."""
    if isinstance(body, dict) and "sections" not in body:
        readable = readable_sections(gw, principal)
        if not readable:
            raise PermissionDenied("permission denied: your roles may read no section of a report", param="sections")
        body = {**body, "sections": readable}
    if isinstance(body, dict):
        await authorize_sections(gw, principal, body.get("sections"))
    return body


async def create(gw: Gateway, principal: Principal, body: object) -> dict[str, Any]:
    """Queue a report for ``principal`` (the API's and the page's way): sections authorized, then 202's status."""
    body = await checked_request(gw, principal, body)
    return await gw.reports.create(principal, gw.security.role_names(principal), body)


async def create_report(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    principal: Principal = request.scope[PRINCIPAL]
    status = await create(gw, principal, await read_json(request, _MAX_BODY))  # 415, 413, 400, 403
    return json_response(status, status=202, headers={"location": f"/admin/reports/{status['id']}"})


async def list_reports(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    return json_response({"object": "list", "data": await gw.reports.list()})


async def report_key(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    return json_response(gw.reports.signer.public())


async def get_report(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    name = request.path_params["report"]
    match = FILE.match(name)
    if match is not None:
        rid, fmt = match.group(1), match.group(2)
        return await _download(request, gw, rid, fmt)  # type: ignore[arg-type]  # the pattern admits only these
    status = await gw.reports.get(name) if _ID.match(name) else None
    if status is None:
        raise NotFound(f"no report {name[:64]!r}", code="report_not_found")
    return json_response(status)


async def _download(request: Request, gw: Gateway, rid: str, fmt: Format) -> Response:
    status = await gw.reports.get(rid)
    if status is None:
        raise NotFound(f"no report {rid!r}", code="report_not_found")
    await authorize_sections(gw, request.scope[PRINCIPAL], status["sections"])
    found = await gw.reports.file(rid, fmt)
    if found is None:
        raise Conflict(f"report {rid} is {status['status']}, not done", code="report_not_ready")
    content, sha = found
    etag = f'"{sha}"'
    headers = {"etag": etag, "content-disposition": f'attachment; filename="report-{rid}.{fmt}"',
               "cache-control": "private, no-cache", "x-content-type-options": "nosniff"}  # fmt: skip
    wanted = [t.strip().removeprefix("W/") for t in request.headers.get("if-none-match", "").split(",")]
    if etag in wanted or "*" in wanted:
        return Response(status_code=304, headers=headers)
    return Response(content, media_type=MEDIA[fmt], headers=headers)
