"""``/admin/ui``: the compliance officers' page, rendered on the server (Jinja2), with plain HTML forms.

- ``GET /admin/ui``: ledger status (checkpoint, anchoring lag, verification), policy status, the latest fairness
  audits, and the reports, with a form to create one and links to download each. Casbin ``report`` on
  ``route:/admin/ui``. Each part needs what the same evidence needs elsewhere, and says so when the caller's
  roles do not cover it: the ledger's status the report section ``integrity``, the policy's the section
  ``access_control`` (both hold exact figures), the audits ``route:/admin/fairness/audits``, the reports
  ``route:/admin/reports``.
- ``GET /admin/ui/login``, ``POST /admin/ui/login`` (an API key), ``GET /admin/ui/login/oidc`` and
  ``GET /admin/ui/callback`` (OpenID Connect), ``POST /admin/ui/logout``.
- ``POST /admin/ui/reports`` creates a report, ``GET /admin/ui/reports/{id}.{json,csv,pdf}`` downloads one (as over
  the API: ``route:/admin/reports`` and each section's object); ``POST /admin/ui/ledger/verify`` verifies the
  ledger now (the ``integrity`` section's object).

Every decision is made by the API's own authenticator and Casbin policy, and recorded in the ledger the same
way, also the ones that only choose what the page shows. Errors are HTML pages with the API's status and
message. Messages shown after a redirect are chosen by code, never taken from the URL.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn
from urllib.parse import parse_qsl, urlencode

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from gateway.api import reports as reports_api
from gateway.api.body import read_body
from gateway.errors import GatewayError, InvalidRequest, PermissionDenied, Unauthenticated
from gateway.identity.oidc import LoginError, Transaction
from gateway.identity.principal import Principal
from gateway.observability.tracing import with_trace_id
from gateway.reports.controls import TITLES
from gateway.security import PRINCIPAL, authorize
from gateway.state import Gateway, request_id
from gateway.ui import session
from gateway.ui.console import Console

UI = "route:/admin/ui"
REPORTS = "route:/admin/reports"
AUDITS = "route:/admin/fairness/audits"
LEDGER = reports_api.SECTION.format("integrity")
POLICY = reports_api.SECTION.format("access_control")
_FORM_LIMIT = 16 * 1024
_REFRESH_FOR_S = 15 * 60
"""The page refreshes itself while a report made in the last 15 minutes is pending or running, no longer."""
_REPORT_ID = re.compile(r"^[0-9a-f]{32}$")
_REASONS = {
    "ended": "Your session has ended; sign in again.",
    "signed_out": "You are signed out.",
    "denied": "Your roles do not include this page.",
}
_NOTICES = {
    "verified": "The ledger verifies.",
    "tampered": "The ledger does NOT verify: see the problems below.",
}
Page = Callable[[Request], Awaitable[Response]]


def _gw(request: Request) -> tuple[Gateway, Console]:
    gw: Gateway = request.app.state.gateway
    assert gw.ui is not None, "the routes exist only when the page is enabled"
    return gw, gw.ui


def _site(request: Request) -> session.Site:
    return session.Site.of(request, _gw(request)[1].cfg.public_url)


def _html(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    _, console = _gw(request)
    body = console.render(name, request_id=request_id(request.scope), **context)
    headers = {"x-request-id": request_id(request.scope), "cache-control": "no-store",
               "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                                          "frame-ancestors 'none'; base-uri 'none'",
               "x-content-type-options": "nosniff", "referrer-policy": "same-origin"}  # fmt: skip
    return HTMLResponse(body, status_code=status, headers=headers)


def _login_page(request: Request, status: int = 200, reason: str | None = None) -> HTMLResponse:
    _, console = _gw(request)
    return _html(request, "login.html", status=status, oidc=console.oidc is not None, reason=reason)


def page(handler: Page) -> Page:
    """``handler`` with the gateway's errors as HTML pages (the API's status and message)."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except GatewayError as exc:
            return _html(request, "error.html", status=exc.status, status_code=exc.status, message=exc.message)

    wrapped.__name__ = handler.__name__
    return wrapped


async def _authenticate(request: Request, credential: str) -> Principal:
    gw, _ = _gw(request)
    return await gw.security.authenticator.authenticate(Headers({"authorization": f"Bearer {credential}"}))


async def _signed_in(request: Request, obj: str) -> tuple[Principal, session.Session]:
    """The session's caller, authenticated as an API call would be and allowed ``report`` on ``obj``."""
    gw, _ = _gw(request)
    current = session.read(request, _site(request))
    if current is None:
        raise Unauthenticated("sign in first", presented=False)
    principal = await _authenticate(request, current.credential)
    await authorize(gw.security.policy, gw.audit, principal, obj, "report")
    request.scope[PRINCIPAL] = principal
    return principal, current


def _may(gw: Gateway, principal: Principal, obj: str) -> bool:
    """Whether the page shows the part guarded by ``obj``; the decision is recorded like any other."""
    d = gw.security.policy.engine.decide(principal, obj, "report")
    gw.audit.record("authz.decision", principal.subject, with_trace_id({
        "object": obj, "action": "report", "allowed": d.allowed, "rule": d.rule,
        "policy_version": gw.security.policy.engine.version, "view": "/admin/ui"}))  # fmt: skip
    return d.allowed


async def _form(request: Request, current: session.Session | None) -> dict[str, list[str]]:
    """A posted form (urlencoded), from this origin, with the session's CSRF token when signed in."""
    if not session.same_origin(request, _site(request)):
        await _refuse(request, "origin", "this form was posted from another site")
    raw = await read_body(request, _FORM_LIMIT, lambda m: m == "application/x-www-form-urlencoded",
                          "application/x-www-form-urlencoded", f"the form exceeds {_FORM_LIMIT} bytes")  # fmt: skip
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=64)
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest("the form is not valid URL-encoded UTF-8") from None
    fields: dict[str, list[str]] = {}
    for key, value in pairs:
        fields.setdefault(key, []).append(value)
    if current is not None and not current.csrf_ok(_one(fields, "csrf")):
        await _refuse(request, "csrf", "this form is stale or was not made by this page (CSRF token); reload the page")
    return fields


async def _refuse(request: Request, reason: str, message: str) -> NoReturn:
    """Refuse a form that this page may not have made: a durable ``ui.refused`` entry, then 403."""
    gw, _ = _gw(request)
    principal: Principal | None = request.scope.get(PRINCIPAL)
    await gw.audit.commit("ui.refused", principal.subject if principal else "anonymous",
                          with_trace_id({"path": request.url.path, "reason": reason}))  # fmt: skip
    raise PermissionDenied(message)


def _one(fields: dict[str, list[str]], name: str) -> str:
    values = fields.get(name, [])
    return values[0] if len(values) == 1 else ""


def _to_login(request: Request, reason: str | None = None) -> Response:
    """To the sign-in page (a message by its code), ending the session."""
    response = RedirectResponse("/admin/ui/login" + (f"?reason={reason}" if reason else ""), status_code=303)
    session.end(response, _site(request))
    return response


@page
async def dashboard(request: Request) -> Response:
    if session.read(request, _site(request)) is None:
        return _to_login(request)
    try:
        principal, current = await _signed_in(request, UI)
    except Unauthenticated:  # a revoked key, an expired token: recorded as authn.failed
        return _to_login(request, "ended")
    except PermissionDenied:  # roles changed since sign-in: recorded; the session ends, so the person can switch
        return _to_login(request, "denied")
    return await _dashboard(request, principal, current)


async def _dashboard(request: Request, principal: Principal, current: session.Session, *, status: int = 200,
                     error: str | None = None, form: dict[str, Any] | None = None) -> Response:  # fmt: skip
    gw, console = _gw(request)
    can_ledger, can_policy = _may(gw, principal, LEDGER), _may(gw, principal, POLICY)
    can_audits, can_reports = _may(gw, principal, AUDITS), _may(gw, principal, REPORTS)
    audits = []
    if can_audits:
        records, _ = await asyncio.to_thread(gw.fairness.store.audits, limit=10)
        audits = [r.summary() for r in records]
    reports = await gw.reports.list(limit=20) if can_reports else []
    readable = reports_api.readable_sections(gw, principal) if can_reports else []
    for r in reports:
        r["readable"] = set(r["sections"]) <= set(readable)
    today = datetime.now(UTC).date()
    form = form or {"from": (today - timedelta(days=29)).isoformat(), "to": today.isoformat(), "sections": readable}
    recent = (datetime.now(UTC) - timedelta(seconds=_REFRESH_FOR_S)).isoformat(timespec="seconds")
    busy = (can_ledger and console.verifying) or any(
        r["status"] in ("pending", "running") and r["created_at"] >= recent for r in reports)  # fmt: skip
    notice = _NOTICES.get(request.query_params.get("notice", ""))
    created = request.query_params.get("created", "")
    if _REPORT_ID.match(created):
        notice = f"Report {created} is being generated; this page refreshes until it is ready."
    context = {
        "principal": principal, "roles": sorted(gw.security.role_names(principal)), "csrf": current.csrf(),
        "can_ledger": can_ledger, "ledger": gw.audit.ledger.status(), "origin": gw.audit.ledger.origin,
        "anchoring": gw.audit.anchorer.status() if gw.audit.anchorer is not None else None,
        "chain": gw.settings.ledger.chain, "now": time.time(), "verification": console.verification,
        "verifying": console.verifying, "can_policy": can_policy, "policy": gw.security.policy.status(),
        "can_audits": can_audits, "audits": audits, "can_reports": can_reports, "reports": reports,
        "sections": [(s, TITLES[s]) for s in readable], "form": form, "error": error, "notice": notice,
        "refresh": busy, "max_days": gw.settings.reports.max_days,
    }  # fmt: skip
    return _html(request, "dashboard.html", status=status, **context)


@page
async def login_form(request: Request) -> Response:
    if session.read(request, _site(request)) is not None:
        return RedirectResponse("/admin/ui", status_code=303)
    return _login_page(request, reason=_REASONS.get(request.query_params.get("reason", "")))


@page
async def login_key(request: Request) -> Response:
    """Sign in with an API key: it must authenticate and be allowed the page, or the form says why."""
    gw, console = _gw(request)
    fields = await _form(request, None)
    key = _one(fields, "api_key").strip()
    if not key:
        return _login_page(request, 400, "Enter an API key.")
    try:
        principal = await _authenticate(request, key)
        await authorize(gw.security.policy, gw.audit, principal, UI, "report")
    except (Unauthenticated, PermissionDenied) as exc:
        return _login_page(request, exc.status, exc.message)
    response = RedirectResponse("/admin/ui", status_code=303)
    session.start(response, _site(request), key, time.time() + console.cfg.session_max_age_s)
    return response


def _redirect_uri(request: Request, console: Console) -> str:
    assert console.cfg.oidc is not None
    if console.cfg.oidc.redirect_uri is not None:
        return console.cfg.oidc.redirect_uri
    return _site(request).origin + "/admin/ui/callback"


@page
async def login_oidc(request: Request) -> Response:
    _, console = _gw(request)
    if console.oidc is None:
        raise InvalidRequest("sign-in with an identity provider is not configured (ui.oidc)", code="oidc_disabled")
    try:
        url, tx = await console.oidc.begin(_redirect_uri(request, console))
    except LoginError as exc:
        return _login_page(request, 502, str(exc))
    response = RedirectResponse(url, status_code=303)
    session.keep_login(response, _site(request), tx.dumps(), console.oidc.TRANSACTION_MAX_AGE_S)
    return response


@page
async def callback(request: Request) -> Response:
    """Back from the provider: the code becomes a session, if the provider's token is one the gateway accepts."""
    gw, console = _gw(request)
    if console.oidc is None:
        raise InvalidRequest("sign-in with an identity provider is not configured (ui.oidc)", code="oidc_disabled")
    site = _site(request)
    raw = session.login(request, site)
    try:
        if raw is None:
            raise LoginError("this browser did not start a sign-in (or took too long); start again")
        signed_in = await console.oidc.finish(Transaction.loads(raw), dict(request.query_params))
        principal = await _authenticate(request, signed_in.access_token)
        if principal.owner != signed_in.subject:
            raise LoginError("the access token and the ID token name different people")
        await authorize(gw.security.policy, gw.audit, principal, UI, "report")
    except LoginError as exc:
        await gw.audit.commit("authn.failed", "anonymous", with_trace_id({"reason": f"ui sign-in: {exc}"}))
        response = _login_page(request, 401, str(exc))
    except (Unauthenticated, PermissionDenied) as exc:
        response = _login_page(request, exc.status, exc.message)
    else:
        expires = time.time() + console.cfg.session_max_age_s
        if signed_in.expires_at is not None:
            expires = min(expires, signed_in.expires_at)
        # a page, not a 303: some browsers withhold even Lax cookies set on a redirect reached from another site
        response = _html(request, "signed_in.html")
        session.start(response, site, signed_in.access_token, expires)
    session.forget_login(response, site)
    return response


@page
async def logout(request: Request) -> Response:
    await _form(request, session.read(request, _site(request)))
    return _to_login(request, "signed_out")


@page
async def create_report(request: Request) -> Response:
    gw, _ = _gw(request)
    principal, current = await _signed_in(request, REPORTS)
    fields = await _form(request, current)
    form = {"from": _one(fields, "from"), "to": _one(fields, "to"), "sections": fields.get("sections", [])}
    body = {"period": {"from": form["from"], "to": form["to"]}, "sections": form["sections"]}
    try:
        status = await reports_api.create(gw, principal, body)
    except GatewayError as exc:
        return await _dashboard(request, principal, current, status=exc.status, error=exc.message, form=form)
    return RedirectResponse(f"/admin/ui?{urlencode({'created': status['id']})}", status_code=303)


@page
async def download_report(request: Request) -> Response:
    await _signed_in(request, REPORTS)
    if reports_api.FILE.match(request.path_params["report"]) is None:
        raise InvalidRequest("download a report as .json, .csv or .pdf", code="report_not_found")
    return await reports_api.get_report(request)


@page
async def verify_ledger(request: Request) -> Response:
    _, console = _gw(request)
    _, current = await _signed_in(request, LEDGER)
    await _form(request, current)
    result = await console.verify()
    return RedirectResponse(f"/admin/ui?notice={'verified' if result['ok'] else 'tampered'}", status_code=303)
