"""``/admin/policy/status`` and ``POST /admin/policy/reload`` (Casbin action ``admin``)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.identity.principal import Principal
from gateway.security import PRINCIPAL
from gateway.state import Gateway, json_response


async def policy_status(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    return json_response(gw.security.policy.status())


async def policy_reload(request: Request) -> Response:
    """Reload now; 409 (with the reason) when the files on disk are rejected and the old policy serves."""
    gw: Gateway = request.app.state.gateway
    principal: Principal = request.scope[PRINCIPAL]
    store = gw.security.policy
    changed = store.reload(actor=principal.subject)
    return json_response({"reloaded": changed, **store.status()}, status=409 if store.last_rejection else 200)
