"""Browser sign-in with an OpenID Connect provider: the authorization code flow with PKCE (RFC 7636).

``OIDCLogin.begin`` makes the provider's authorization URL and the transaction a browser must bring back
(state, nonce and code verifier, kept by the caller in a short-lived cookie). ``OIDCLogin.finish`` checks the
state and the answer's issuer (RFC 9207), exchanges the code (authlib's OAuth 2 client over httpx2, the HTTP
client authlib is built on), and verifies the ID token (joserfc, against the provider's JWKS): its issuer,
audience and authorized party (our client id), expiry and nonce. What it returns is the provider's access token,
which the gateway then verifies like any API bearer token (``gateway.identity.jwt``): a browser session has
exactly the identity and the roles an API call with that token would have.

The provider's discovery document and keys are read on first use and kept; keys are read again when an ID token
names a key id the cached set lacks (rotation).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
import time
import warnings
from dataclasses import dataclass
from typing import Any

import httpx2
import orjson
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

from gateway.settings import OIDCLoginSettings

log = logging.getLogger(__name__)

_KEYS_MIN_REFETCH_S = 30.0
_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA", "Ed25519"]


class LoginError(Exception):
    """The sign-in cannot complete; the message is safe to show to the person signing in and to log."""


@dataclass(frozen=True, slots=True)
class Transaction:
    """What the browser keeps between leaving for the provider and coming back (never the tokens)."""

    state: str
    nonce: str
    verifier: str
    redirect_uri: str
    started_at: float

    def dumps(self) -> str:
        return orjson.dumps([self.state, self.nonce, self.verifier, self.redirect_uri, self.started_at]).decode()

    @classmethod
    def loads(cls, raw: str) -> Transaction:
        try:
            state, nonce, verifier, redirect_uri, started_at = orjson.loads(raw)
            return cls(str(state), str(nonce), str(verifier), str(redirect_uri), float(started_at))
        except (orjson.JSONDecodeError, ValueError, TypeError):
            raise LoginError("the sign-in transaction is unreadable; start again") from None


@dataclass(frozen=True, slots=True)
class SignedIn:
    access_token: str
    subject: str
    expires_at: float | None
    """When the access token expires, as the token response says (``expires_in``), if it says."""


class OIDCLogin:
    """One provider, one client. Safe to share between requests; ``aclose`` when done."""

    TRANSACTION_MAX_AGE_S = 600

    def __init__(self, cfg: OIDCLoginSettings) -> None:
        self._cfg = cfg
        verify: ssl.SSLContext | bool = True
        if cfg.ca_file is not None:
            verify = ssl.create_default_context(cafile=str(cfg.ca_file))
        self._http = httpx2.AsyncClient(trust_env=False, verify=verify, timeout=cfg.timeout_s)
        self._verify = verify
        self._meta: dict[str, Any] | None = None
        self._keys: KeySet | None = None
        self._keys_at = 0.0
        self._lock = asyncio.Lock()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _get_json(self, url: str, what: str) -> Any:
        try:
            resp = await self._http.get(url, headers={"accept": "application/json"})
            resp.raise_for_status()
            return resp.json()
        except (httpx2.HTTPError, ValueError) as exc:
            log.warning("the identity provider's %s at %s cannot be read: %r", what, url, exc)
            raise LoginError(f"the identity provider's {what} cannot be read; try again later") from None

    async def metadata(self) -> dict[str, Any]:
        """The provider's discovery document (read once), checked to name our issuer and the endpoints we use."""
        async with self._lock:
            if self._meta is None:
                url = self._cfg.issuer.rstrip("/") + "/.well-known/openid-configuration"
                meta = await self._get_json(url, "discovery document")
                if not isinstance(meta, dict) or meta.get("issuer") != self._cfg.issuer:
                    raise LoginError(f"the discovery document at {url} is for issuer "
                                     f"{meta.get('issuer') if isinstance(meta, dict) else None!r}, "
                                     f"not {self._cfg.issuer!r}")  # fmt: skip
                for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                    if not isinstance(meta.get(name), str):
                        raise LoginError(f"the identity provider's discovery document has no {name}")
                self._meta = meta
            return self._meta

    def _client(self, redirect_uri: str) -> AsyncOAuth2Client:
        secret = self._cfg.client_secret
        return AsyncOAuth2Client(
            client_id=self._cfg.client_id,
            client_secret=secret.get_secret_value() if secret is not None else None,
            token_endpoint_auth_method="client_secret_basic" if secret is not None else "none",
            scope=" ".join(self._cfg.scopes),
            redirect_uri=redirect_uri,
            trust_env=False,
            verify=self._verify,
            timeout=self._cfg.timeout_s,
        )

    async def begin(self, redirect_uri: str) -> tuple[str, Transaction]:
        """The provider's authorization URL to send the browser to, and the transaction to keep until it returns."""
        meta = await self.metadata()
        tx = Transaction(secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(48),
                         redirect_uri, time.time())  # fmt: skip
        extra = {"nonce": tx.nonce, "code_challenge": create_s256_code_challenge(tx.verifier),
                 "code_challenge_method": "S256"}  # fmt: skip
        if self._cfg.audience is not None:
            extra |= {"audience": self._cfg.audience, "resource": self._cfg.audience}
        url = prepare_grant_uri(meta["authorization_endpoint"], self._cfg.client_id, "code", redirect_uri=redirect_uri,
                                scope=" ".join(self._cfg.scopes), state=tx.state, **extra)  # fmt: skip
        return url, tx

    async def finish(self, tx: Transaction, params: dict[str, str]) -> SignedIn:
        """Check the provider's answer (``code`` and ``state``, or ``error``) and exchange the code."""
        if time.time() - tx.started_at > self.TRANSACTION_MAX_AGE_S:
            raise LoginError("the sign-in took too long; start again")
        if not secrets.compare_digest(params.get("state", "").encode(), tx.state.encode()):
            raise LoginError("the sign-in answer does not match this browser's sign-in (state); start again")
        if "iss" in params and params["iss"] != self._cfg.issuer:  # RFC 9207: an answer from another provider
            raise LoginError("the sign-in answer comes from another identity provider (iss)")
        if "error" in params:
            detail = params.get("error_description") or params["error"]
            raise LoginError(f"the identity provider refused the sign-in: {detail[:200]}")
        code = params.get("code")
        if not code:
            raise LoginError("the identity provider's answer has no code")
        meta = await self.metadata()
        async with self._client(tx.redirect_uri) as client:
            try:
                token = await client.fetch_token(meta["token_endpoint"], grant_type="authorization_code", code=code,
                                                 code_verifier=tx.verifier)  # fmt: skip
            except AuthlibBaseError as exc:  # the provider's OAuth error answer
                raise LoginError(f"the identity provider refused the code: {exc.error}: "
                                 f"{exc.description or ''}".rstrip(": ")) from None  # fmt: skip
            except (httpx2.HTTPError, ValueError) as exc:  # the transport's errors, an answer that is not JSON
                log.warning("the identity provider's token endpoint failed: %r", exc)
                raise LoginError("the identity provider's token endpoint did not answer; try again later") from None
        id_token, access_token = token.get("id_token"), token.get("access_token")
        if not isinstance(id_token, str) or not isinstance(access_token, str):
            raise LoginError("the identity provider's token response lacks an id_token or an access_token")
        claims = await self._verify_id_token(id_token, tx.nonce)
        expires_at = token.get("expires_at")
        if expires_at is not None and not isinstance(expires_at, int | float):
            raise LoginError("the identity provider's token response has an invalid expiry")
        return SignedIn(access_token, str(claims["sub"]), float(expires_at) if expires_at is not None else None)

    async def _keyset(self, force: bool) -> KeySet:
        meta = await self.metadata()
        if self._keys is None or (force and time.monotonic() - self._keys_at >= _KEYS_MIN_REFETCH_S):
            raw = await self._get_json(meta["jwks_uri"], "keys (JWKS)")
            try:
                self._keys = KeySet.import_key_set(raw)
            except (JoseError, ValueError, TypeError) as exc:
                raise LoginError(f"the identity provider's keys are invalid: {exc}") from None
            self._keys_at = time.monotonic()
        return self._keys

    async def _verify_id_token(self, token: str, nonce: str) -> dict[str, Any]:
        registry = JWTClaimsRegistry(leeway=30, iss={"essential": True, "value": self._cfg.issuer},
                                     aud={"essential": True, "value": self._cfg.client_id}, exp={"essential": True},
                                     sub={"essential": True}, nonce={"essential": True, "value": nonce})  # fmt: skip
        try:
            with warnings.catch_warnings():  # EdDSA, see gateway.identity.jwt
                warnings.simplefilter("ignore", SecurityWarning)
                try:
                    decoded = jwt.decode(token, await self._keyset(False), algorithms=_ALGORITHMS)
                except JoseError as exc:
                    if exc.error != "invalid_key_id":
                        raise
                    decoded = jwt.decode(token, await self._keyset(True), algorithms=_ALGORITHMS)
            registry.validate(decoded.claims)
        except JoseError as exc:
            raise LoginError(f"the ID token is not valid: {exc.error}: {exc.description or ''}".rstrip(": ")) from None
        except (ValueError, KeyError, TypeError):
            raise LoginError("the ID token is malformed") from None
        claims = dict(decoded.claims)
        aud, azp = claims["aud"], claims.get("azp")
        if (azp is not None and azp != self._cfg.client_id) or (isinstance(aud, list) and len(aud) > 1 and azp is None):
            raise LoginError("the ID token was issued to another client (azp)")  # OpenID Connect Core 3.1.3.7
        return claims
