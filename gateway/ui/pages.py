"""``/admin/ui``: the compliance officers' page, rendered on the server (Jinja2), with plain HTML forms.

- ``GET /admin/ui``: ledger status (checkpoint, anchoring lag, verification), policy status, the latest fairness
  audits, and the reports, with a form to create one and links to download each. Casbin ``report`` on
  ``route:/admin/ui``; each part the caller's roles do not cover says so instead: the ledger's status needs
  ``report`` on ``route:/admin/ledger/status`` (its sizes are exact counts of traffic, which roles that read
  only differentially private numbers must not see), the audits on ``route:/admin/fairness/audits``, the
  reports on ``route:/admin/reports``.
- ``GET /admin/ui/login``, ``POST /admin/ui/login`` (an API key), ``GET /admin/ui/login/oidc`` and
  ``GET /admin/ui/callback`` (OpenID Connect), ``POST /admin/ui/logout``.
- ``POST /admin/ui/reports`` creates a report, ``GET /admin/ui/reports/{id}.{json,csv,pdf}`` downloads one (both
  Casbin ``report`` on ``route:/admin/reports``, as over the API); ``POST /admin/ui/ledger/verify`` verifies the
  ledger now (``report`` on ``route:/admin/ledger/status``).

Every decision is made by the API's own authenticator and Casbin policy, and recorded in the ledger the same
way. Errors are HTML pages with the API's status and message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
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
from gateway.reports.controls import SECTIONS, TITLES
from gateway.security import PRINCIPAL, authorize
from gateway.state import Gateway, request_id
from gateway.ui import session
from gateway.ui.console import Console

UI = "route:/admin/ui"
REPORTS = "route:/admin/reports"
AUDITS = "route:/admin/fairness/audits"
LEDGER = "route:/admin/ledger/status"
_FORM_LIMIT = 16 * 1024
Page = Callable[[Request], Awaitable[Response]]


def _gw(request: Request) -> tuple[Gateway, Console]:
    gw: Gateway = request.app.state.gateway
    assert gw.ui is not None, "the routes exist only when the page is enabled"
    return gw, gw.ui


def _html(console: Console, request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    body = console.render(name, request_id=request_id(request.scope), **context)
    headers = {"x-request-id": request_id(request.scope), "cache-control": "no-store",
               "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                                          "frame-ancestors 'none'; base-uri 'none'",
               "x-content-type-options": "nosniff", "referrer-policy": "same-origin"}  # fmt: skip
    return HTMLResponse(body, status_code=status, headers=headers)


def page(handler: Page) -> Page:
    """``handler`` with the gateway's errors as HTML pages (the API's status and message)."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except GatewayError as exc:
            _, console = _gw(request)
            status = exc.status
            return _html(console, request, "error.html", status=status, status_code=status, message=exc.message)

    wrapped.__name__ = handler.__name__
    return wrapped


async def _signed_in(request: Request, obj: str) -> tuple[Principal, session.Session]:
    """The session's caller, authenticated as an API call would be and allowed ``report`` on ``obj``."""
    gw, _ = _gw(request)
    current = session.read(request)
    if current is None:
        raise Unauthenticated("sign in first", presented=False)
    principal = await gw.security.authenticator.authenticate(Headers({"authorization": f"Bearer {current.credential}"}))
    await authorize(gw.security.policy, gw.audit, principal, obj, "report")
    request.scope[PRINCIPAL] = principal
    return principal, current


async def _form(request: Request, current: session.Session | None) -> dict[str, list[str]]:
    """A posted form (urlencoded), from this origin, with the session's CSRF token when signed in."""
    if not session.same_origin(request):
        raise PermissionDenied("this form was posted from another site")
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
        raise PermissionDenied("this form is stale or was not made by this page (CSRF token); reload the page")
    return fields


def _one(fields: dict[str, list[str]], name: str) -> str:
    values = fields.get(name, [])
    return values[0] if len(values) == 1 else ""


def _login_redirect(request: Request, reason: str | None = None) -> Response:
    url = "/admin/ui/login" + (f"?{urlencode({'reason': reason})}" if reason else "")
    response = RedirectResponse(url, status_code=303)
    session.end(response, request)
    return response


@page
async def dashboard(request: Request) -> Response:
    if session.read(request) is None:
        return _login_redirect(request)
    try:
        principal, current = await _signed_in(request, UI)
    except Unauthenticated:  # a revoked key, an expired token: recorded as authn.failed
        return _login_redirect(request, "Your session has ended; sign in again.")
    return await _dashboard(request, principal, current)


async def _dashboard(request: Request, principal: Principal, current: session.Session, *, status: int = 200,
                     error: str | None = None, form: dict[str, Any] | None = None) -> Response:  # fmt: skip
    gw, console = _gw(request)
    engine = gw.security.policy.engine
    ledger = gw.audit.ledger.status()
    anchoring = gw.audit.anchorer.status() if gw.audit.anchorer is not None else None
    can_audits = engine.decide(principal, AUDITS, "report").allowed
    can_ledger = engine.decide(principal, LEDGER, "report").allowed
    can_reports = engine.decide(principal, REPORTS, "report").allowed
    audits = []
    if can_audits:
        records, _ = await asyncio.to_thread(gw.fairness.store.audits, limit=10)
        audits = [r.summary() for r in records]
    reports = await gw.reports.list(limit=20) if can_reports else []
    today = datetime.now(UTC).date()
    form = form or {"from": (today - timedelta(days=29)).isoformat(), "to": today.isoformat(),
                    "sections": list(SECTIONS)}  # fmt: skip
    busy = (can_ledger and console.verifying) or any(r["status"] in ("pending", "running") for r in reports)
    context = {
        "principal": principal, "roles": sorted(r.removeprefix("role:") for r in engine.roles(principal)),
        "csrf": current.csrf(), "can_ledger": can_ledger, "ledger": ledger, "origin": gw.audit.ledger.origin,
        "anchoring": anchoring,
        "chain": gw.settings.ledger.chain, "now": time.time(), "verification": console.verification,
        "verifying": console.verifying, "policy": gw.security.policy.status(), "can_audits": can_audits,
        "audits": audits, "can_reports": can_reports, "reports": reports,
        "sections": [(s, TITLES[s]) for s in SECTIONS],
        "form": form, "error": error, "notice": request.query_params.get("notice"), "refresh": busy,
        "max_days": gw.settings.reports.max_days,
    }  # fmt: skip
    return _html(console, request, "dashboard.html", status=status, **context)


@page
async def login_form(request: Request) -> Response:
    _, console = _gw(request)
    if session.read(request) is not None:
        return RedirectResponse("/admin/ui", status_code=303)
    return _html(console, request, "login.html", oidc=console.oidc is not None,
                 reason=request.query_params.get("reason"))  # fmt: skip


@page
async def login_key(request: Request) -> Response:
    """Sign in with an API key: it must authenticate and be allowed the page, or the form says why."""
    gw, console = _gw(request)
    fields = await _form(request, None)
    key = _one(fields, "api_key").strip()
    if not key:
        return _html(console, request, "login.html", status=400, oidc=console.oidc is not None,
                     reason="Enter an API key.")  # fmt: skip
    try:
        principal = await gw.security.authenticator.authenticate(Headers({"authorization": f"Bearer {key}"}))
        await authorize(gw.security.policy, gw.audit, principal, UI, "report")
    except (Unauthenticated, PermissionDenied) as exc:
        return _html(console, request, "login.html", status=exc.status, oidc=console.oidc is not None,
                     reason=exc.message)  # fmt: skip
    response = RedirectResponse("/admin/ui", status_code=303)
    session.start(response, request, key, time.time() + console.cfg.session_max_age_s)
    return response


def _redirect_uri(request: Request, console: Console) -> str:
    assert console.cfg.oidc is not None
    return console.cfg.oidc.redirect_uri or str(request.url_for("ui_callback"))


@page
async def login_oidc(request: Request) -> Response:
    _, console = _gw(request)
    if console.oidc is None:
        raise InvalidRequest("sign-in with an identity provider is not configured (ui.oidc)", code="oidc_disabled")
    try:
        url, tx = await console.oidc.begin(_redirect_uri(request, console))
    except LoginError as exc:
        return _html(console, request, "login.html", status=502, oidc=True, reason=str(exc))
    response = RedirectResponse(url, status_code=303)
    session.keep_login(response, request, tx.dumps(), console.oidc.TRANSACTION_MAX_AGE_S)
    return response


@page
async def callback(request: Request) -> Response:
    """Back from the provider: the code becomes a session, if the provider's token is one the gateway accepts."""
    gw, console = _gw(request)
    if console.oidc is None:
        raise InvalidRequest("sign-in with an identity provider is not configured (ui.oidc)", code="oidc_disabled")
    raw = session.login(request)
    try:
        if raw is None:
            raise LoginError("this browser did not start a sign-in (or took too long); start again")
        signed_in = await console.oidc.finish(Transaction.loads(raw), dict(request.query_params))
        principal = await gw.security.authenticator.authenticate(
            Headers({"authorization": f"Bearer {signed_in.access_token}"}))  # fmt: skip
        if principal.owner != signed_in.subject:
            raise LoginError("the access token and the ID token name different people")
        await authorize(gw.security.policy, gw.audit, principal, UI, "report")
    except LoginError as exc:
        await gw.audit.commit("authn.failed", "anonymous", with_trace_id({"reason": f"ui sign-in: {exc}"}))
        response = _html(console, request, "login.html", status=401, oidc=True, reason=str(exc))
    except (Unauthenticated, PermissionDenied) as exc:
        response = _html(console, request, "login.html", status=exc.status, oidc=True, reason=exc.message)
    else:
        expires = time.time() + console.cfg.session_max_age_s
        if signed_in.expires_at is not None:
            expires = min(expires, signed_in.expires_at)
        # a page, not a 303: some browsers withhold even Lax cookies set on a redirect reached from another site
        response = _html(console, request, "signed_in.html")
        session.start(response, request, signed_in.access_token, expires)
    session.forget_login(response, request)
    return response


@page
async def logout(request: Request) -> Response:
    await _form(request, session.read(request))
    return _login_redirect(request, "You are signed out.")


@page
async def create_report(request: Request) -> Response:
    gw, _ = _gw(request)
    principal, current = await _signed_in(request, REPORTS)
    fields = await _form(request, current)
    form = {"from": _one(fields, "from"), "to": _one(fields, "to"), "sections": fields.get("sections", [])}
    body = {"period": {"from": form["from"], "to": form["to"]}, "sections": form["sections"]}
    roles = frozenset(r.removeprefix("role:") for r in gw.security.policy.engine.roles(principal))
    try:
        status = await gw.reports.create(principal, roles, body)
    except GatewayError as exc:
        return await _dashboard(request, principal, current, status=exc.status, error=exc.message, form=form)
    notice = f"Report {status['id']} is being generated; this page refreshes until it is ready."
    return RedirectResponse(f"/admin/ui?{urlencode({'notice': notice})}", status_code=303)


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
    notice = "The ledger verifies." if result["ok"] else "The ledger does NOT verify: see the problems below."
    return RedirectResponse(f"/admin/ui?{urlencode({'notice': notice})}", status_code=303)
