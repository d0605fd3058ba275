"""Authenticate, then authorize with Casbin, before anything reaches a backend. Deny by default.

Each API route is wrapped by ``Security.guard`` with its canonical object (``route:/v1/...``)
and action, so the object Casbin sees never depends on how the client spelled the path. Model
permissions, per-role limits and rate limits are checked once the body names the model.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from gateway.audit import AuditSink
from gateway.authz.engine import Effective
from gateway.authz.ratelimit import Limiter, LocalLimiter, Windows
from gateway.authz.store import PolicyStore
from gateway.errors import GatewayError, PermissionDenied, RateLimited
from gateway.identity.authenticate import Authenticator
from gateway.identity.principal import Principal
from gateway.observability import tracing

PRINCIPAL = "gateway.principal"
Endpoint = Callable[[Request], Awaitable[Any]]


def guard(obj: str, act: str, endpoint: Endpoint) -> Endpoint:
    """``endpoint`` behind authentication and the route permission ``act`` on ``obj``."""

    async def guarded(request: Request) -> Any:
        await request.app.state.gateway.security.enter(request, obj, act)
        return await endpoint(request)

    guarded.__name__ = getattr(endpoint, "__name__", "guarded")
    return guarded


async def authorize(policy: PolicyStore, audit: AuditSink, principal: Principal, obj: str, act: str) -> None:
    """Decide ``act`` on ``obj`` for ``principal`` and record the decision; PermissionDenied unless allowed.

    Also used by callers inside the gateway that no HTTP request carries (the fairness auditor)."""
    engine = policy.engine
    d = engine.decide(principal, obj, act)
    data = {"object": obj, "action": act, "allowed": d.allowed, "rule": d.rule, "policy_version": engine.version}
    tracing.with_trace_id(data)
    if principal.owner:
        data["owner"] = principal.owner  # the privacy unit of statistics (one owner, several keys)
    if d.allowed:
        audit.record("authz.decision", principal.subject, data)  # durable with the admission entry
        return
    await audit.commit("authz.decision", principal.subject, data)
    raise PermissionDenied(f"permission denied: {act} on {obj}")


@dataclass(frozen=True, slots=True)
class Admission:
    """What a request was admitted with: its limits, and the rate windows to charge tokens to."""

    principal: Principal
    limits: Effective
    windows: Windows


class Security:
    def __init__(self, authenticator: Authenticator, policy: PolicyStore, audit: AuditSink,
                 limiter: Limiter | None = None) -> None:  # fmt: skip
        self.authenticator = authenticator
        self.policy = policy
        self.audit = audit
        self.limiter: Limiter = LocalLimiter() if limiter is None else limiter

    async def _check(self, principal: Principal, obj: str, act: str) -> None:
        # A model object names what the body asked for, which may be anything: only its kind is an attribute.
        what = obj if obj.startswith("route:") else obj.partition(":")[0]
        with tracing.span("gateway.authz", {"gateway.authz.action": act, "gateway.authz.object": what}) as span:
            await authorize(self.policy, self.audit, principal, obj, act)
            span.set_attribute("gateway.authz.allowed", True)

    async def enter(self, request: Request, obj: str, act: str) -> Principal:
        """Authenticate the caller and check the route permission; the principal is kept on the request."""
        with tracing.span("gateway.authn") as span:
            principal = await self.authenticator.authenticate(request.headers)
            span.set_attribute("gateway.authn.kind", principal.kind)
        await self._check(principal, obj, act)
        request.scope[PRINCIPAL] = principal
        return principal

    def role_names(self, principal: Principal) -> frozenset[str]:
        """The caller's roles through the policy's hierarchy, by name (``analyst``, not ``role:analyst``)."""
        return frozenset(r.removeprefix("role:") for r in self.policy.engine.roles(principal))

    def allowed(self, principal: Principal, model: str, act: str) -> bool:
        return self.policy.engine.decide(principal, f"model:{model}", act).allowed

    async def admit(self, request: Request, model: str, act: str, *, max_tokens: int | None = None,
                    stream: bool = False) -> Admission:  # fmt: skip
        """Model permission, per-role limits and rate limits for this request."""
        principal: Principal = request.scope[PRINCIPAL]
        await self._check(principal, f"model:{model}", act)
        limits = self.policy.engine.limits(principal)
        try:
            if stream and not limits.stream:
                raise PermissionDenied("permission denied: streaming is not allowed for your roles", param="stream")
            if max_tokens is not None and limits.max_tokens is not None and max_tokens > limits.max_tokens:
                raise PermissionDenied(f"permission denied: max_tokens above {limits.max_tokens} is not allowed "
                                       "for your roles", param="max_tokens")  # fmt: skip
            with tracing.span("gateway.ratelimit"):
                windows = await self.limiter.admit(principal.subject, model, limits)
        except GatewayError as exc:
            await self.audit.commit("authz.limit", principal.subject, tracing.with_trace_id(
                {"model": model, "refused": exc.message, "reason": _reason(exc)}))  # fmt: skip
            raise
        return Admission(principal, limits, windows)

    async def charge(self, admission: Admission, tokens: int) -> None:
        await self.limiter.add_tokens(admission.windows, tokens)


def _reason(exc: GatewayError) -> str:
    """A stable reason code for a refused admission (statistics count denials by it)."""
    if isinstance(exc, RateLimited):
        return "rate_limit"
    return exc.param if exc.param in ("stream", "max_tokens") else (exc.code or "other")
