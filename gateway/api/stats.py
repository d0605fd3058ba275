"""``GET /admin/stats`` (Casbin action ``report``): differentially private statistics over the ledger.

Every number in the answer is released through ``gateway.stats`` with noise, under the consumer's privacy
budget; there is no exact variant of this endpoint. See ``docs/privacy.md``.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.authz.engine import PolicyEngine
from gateway.errors import InvalidRequest
from gateway.identity.principal import Principal
from gateway.security import PRINCIPAL
from gateway.settings import Settings
from gateway.state import Gateway, json_response
from gateway.stats.compute import PublicKeys


def public_keys(settings: Settings, engine: PolicyEngine) -> PublicKeys:
    """Group keys public by construction: the configured model names and the roles the policy names."""
    roles = {s.removeprefix("role:") for rule in engine.files.rules for s in rule[:1] if s.startswith("role:")}
    roles |= {m.removeprefix("role:") for link in engine.files.groupings for m in link if m.startswith("role:")}
    return PublicKeys(models=tuple(sorted(m.name for m in settings.models)), roles=frozenset(roles))


async def stats(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    principal: Principal = request.scope[PRINCIPAL]
    roles = gw.security.role_names(principal)
    items = request.query_params.multi_items()
    params = dict(items)
    if len(params) != len(items):
        raise InvalidRequest("a parameter is given twice")
    answer = await gw.stats.release(principal, roles, params)
    gw.metrics.dp_answered(principal.subject, answer["budget"], cached=bool(answer.get("cached")))
    return json_response({"object": "stats.release", **answer})
