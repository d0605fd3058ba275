"""Turn the ``Authorization`` header into a Principal, or a 401.

``Bearer gk_...`` is an API key; any other bearer token is a JWT (when JWT is configured).
Nothing of the credential is logged or audited except the key id or the token's subject.
"""

from __future__ import annotations

from starlette.datastructures import Headers

from gateway.audit import AuditSink
from gateway.errors import Unauthenticated
from gateway.identity import apikeys
from gateway.identity.apikeys import APIKeyStore
from gateway.identity.jwt import JWTVerifier, TokenError
from gateway.identity.principal import Principal
from gateway.observability.tracing import with_trace_id


class Authenticator:
    def __init__(self, keys: APIKeyStore, jwt: JWTVerifier | None, audit: AuditSink) -> None:
        self._keys = keys
        self._jwt = jwt
        self._audit = audit

    async def authenticate(self, headers: Headers) -> Principal:
        """The caller, or Unauthenticated; every refusal is an audit entry, durable before the 401."""
        try:
            return await self._authenticate(headers)
        except Unauthenticated as exc:
            await self._audit.commit("authn.failed", "anonymous", with_trace_id({"reason": exc.message}))
            raise

    async def _authenticate(self, headers: Headers) -> Principal:
        value = headers.get("authorization")
        if not value:
            raise Unauthenticated(
                "missing credential: send 'Authorization: Bearer <API key or token>'", presented=False
            )
        scheme, _, token = value.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("the Authorization header must be 'Bearer <API key or token>'", presented=True)
        try:
            if token.startswith(apikeys.PREFIX):
                return await self._keys.verify(token)
            if self._jwt is None:
                raise TokenError("not an API key, and JWT authentication is not configured")
            return await self._jwt.verify(token)
        except (apikeys.KeyError_, TokenError) as exc:
            raise Unauthenticated(f"invalid credential: {exc}", presented=True) from None
