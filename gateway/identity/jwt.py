"""OIDC / JWT bearer tokens, verified with joserfc against the identity provider's JWKS.

The JWKS comes from a local file or from a URL (fetched with the gateway's own HTTP client,
cached for ``jwks_cache_s``, and fetched again, at most every 30 s, when a token names a key id
the cached set lacks: that is how key rotation is picked up). Only the configured algorithms are
accepted, so ``alg: none`` and HS256-with-the-RSA-public-key confusion are refused by joserfc
before any signature check. ``exp``, ``nbf``, ``iss``, ``aud`` and ``sub`` are required and
checked with ``leeway_s`` of clock skew.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from joserfc import jwt
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

from gateway.identity.principal import Principal
from gateway.settings import JWTSettings

Fetch = Callable[[str], Awaitable[bytes]]


class TokenError(Exception):
    """The token is malformed, badly signed, expired, or for someone else. Safe to log."""


def _claim(claims: dict[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _decode(token: str, keys: KeySet, algorithms: list[str]) -> jwt.Token:
    # joserfc warns on every EdDSA token (RFC 9864 prefers the name Ed25519); identity providers
    # still issue EdDSA, which the configuration allows on purpose.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)
        return jwt.decode(token, keys, algorithms=algorithms)


class JWTVerifier:
    def __init__(self, cfg: JWTSettings, fetch: Fetch) -> None:
        self._cfg = cfg
        self._fetch = fetch
        self._keys: KeySet | None = None
        self._fetched_at = 0.0
        self._registry = JWTClaimsRegistry(
            leeway=int(cfg.leeway_s),
            iss={"essential": True, "value": cfg.issuer},
            aud={"essential": True, "value": cfg.audience},
            exp={"essential": True},
            nbf={"essential": cfg.require_nbf},
            sub={"essential": True},
        )
        if cfg.jwks_file is not None:
            self._keys = self._parse(cfg.jwks_file.read_bytes())

    @staticmethod
    def _parse(raw: bytes) -> KeySet:
        try:
            return KeySet.import_key_set(orjson.loads(raw))
        except (orjson.JSONDecodeError, JoseError, ValueError, TypeError) as exc:
            raise TokenError(f"the JWKS is invalid: {exc}") from None

    async def _keyset(self, force: bool = False) -> KeySet:
        if self._cfg.jwks_url is None:
            assert self._keys is not None
            return self._keys
        age = time.monotonic() - self._fetched_at
        if self._keys is None or age > self._cfg.jwks_cache_s or (force and age >= self._cfg.jwks_min_refetch_s):
            self._keys = self._parse(await self._fetch(self._cfg.jwks_url))
            self._fetched_at = time.monotonic()
        return self._keys

    async def verify(self, token: str) -> Principal:
        algorithms: list[str] = list(self._cfg.algorithms)
        try:
            try:
                decoded = _decode(token, await self._keyset(), algorithms)
            except JoseError as exc:
                if exc.error != "invalid_key_id" or self._cfg.jwks_url is None:
                    raise
                decoded = _decode(token, await self._keyset(force=True), algorithms)
            self._registry.validate(decoded.claims)
        except JoseError as exc:
            raise TokenError(f"{exc.error}: {exc.description or ''}".rstrip(": ")) from None
        except (ValueError, KeyError, TypeError):
            raise TokenError("malformed token") from None
        claims = decoded.claims
        raw_roles = _claim(claims, self._cfg.roles_claim)
        if isinstance(raw_roles, str):
            raw_roles = raw_roles.split()
        roles = frozenset(str(r) for r in raw_roles or () if isinstance(r, str))
        sub = str(claims["sub"])
        return Principal(f"user:{sub}", "user", roles, sub)
