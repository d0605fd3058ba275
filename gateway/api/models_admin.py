"""``/admin/models/{name}/pin``, ``/rollback`` and ``/pins`` (Casbin action ``admin``): model version pins.

A pin is checked before it takes effect: the backend loads the version beside the one serving
(``Backend.load_version``: Triton's model-repository API) and only once it reports it ready does the route
switch. A version that cannot be loaded is refused (409) and changes nothing. Each change is recorded in
``model_pins`` (shared by the replicas) and as a ``model.pinned`` ledger entry with who made it.
"""

from __future__ import annotations

from dataclasses import replace

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from gateway.api.body import read_json, validate
from gateway.errors import Conflict, NotFound, UpstreamError, UpstreamUnavailable
from gateway.identity.principal import Principal
from gateway.routing import Resolved
from gateway.security import PRINCIPAL
from gateway.state import Gateway, json_response


class PinBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(pattern=r"^[0-9]{1,9}$")
    """The model version to serve (Triton versions are numbers)."""


def _route(gw: Gateway, request: Request) -> Resolved:
    name = request.path_params["model"]
    for r in gw.router.routes:
        if r.route.name == name:
            return r
    raise NotFound(f"no model route {name!r}", param="model", code="model_not_found")


async def _switch(gw: Gateway, principal: Principal, r: Resolved, version: str, how: str) -> Response:
    name, previous = r.route.name, r.target.version
    target = replace(r.target, version=version or gw.router.configured_version(name))
    try:
        if target.version:
            await r.backend.load_version(target)
        elif not await r.backend.ready(target):
            raise UpstreamUnavailable(f"model {name!r} is not ready at its default version")
    except UpstreamError as exc:
        await gw.audit.commit("model.pin_refused", principal.subject, {"model": name, "version": target.version,
                              "how": how, "reason": exc.message})  # fmt: skip
        raise Conflict(f"{exc.message}: model {name!r} keeps version {previous or 'default'}",
                       code="version_unavailable") from None  # fmt: skip
    pin = gw.pins.set(name, version, previous, principal.subject)
    gw.router.pin(name, version)
    await gw.audit.commit("model.pinned", principal.subject, {"model": name, "from": previous,
                          "to": target.version, "how": how, "pin_id": pin.id})  # fmt: skip
    return json_response({"model": name, "version": target.version, "previous": previous, "how": how,
                          "pinned_by": principal.subject, "at": pin.at})  # fmt: skip


async def pin(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    r = _route(gw, request)
    body = validate(PinBody, await read_json(request, 4096))
    return await _switch(gw, request.scope[PRINCIPAL], r, body.version, "pin")


async def rollback(request: Request) -> Response:
    """Back to the version the route used before its last change."""
    gw: Gateway = request.app.state.gateway
    r = _route(gw, request)
    history = gw.pins.history(r.route.name)
    if not history:
        raise Conflict(f"model {r.route.name!r} was never pinned: there is no earlier version to roll back to",
                       code="nothing_to_roll_back")  # fmt: skip
    return await _switch(gw, request.scope[PRINCIPAL], r, history[-1].previous, "rollback")


async def pins(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    r = _route(gw, request)
    return json_response({"model": r.route.name, "version": r.target.version,
                          "configured": gw.router.configured_version(r.route.name),
                          "history": [vars(p) for p in gw.pins.history(r.route.name)]})  # fmt: skip
