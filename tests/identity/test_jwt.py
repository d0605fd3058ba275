"""JWT bearer tokens: every way a token can be wrong is refused, and key rotation is picked up."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from joserfc import jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, KeySet, OKPKey, RSAKey

from gateway.identity.jwt import JWTVerifier, TokenError
from gateway.settings import JWTSettings

ISS, AUD = "https://idp.example.test/realms/gw", "llm-gateway"
RSA = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
EC = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
ED = OKPKey.generate_key("Ed25519", parameters={"kid": "ed-1"})
OTHER = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})  # same kid, different key


def _jwks(*keys: Any) -> dict[str, Any]:
    return {"keys": [k.as_dict(private=False) for k in keys]}


def _claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": ISS, "aud": AUD, "sub": "alice", "iat": now, "nbf": now - 5, "exp": now + 300,
              "realm_access": {"roles": ["analyst", "user"]}}  # fmt: skip
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def _token(key: Any = RSA, alg: str = "RS256", **over: Any) -> str:
    with warnings.catch_warnings():  # joserfc warns that EdDSA is deprecated (RFC 9864)
        warnings.simplefilter("ignore", SecurityWarning)
        return jwt.encode({"alg": alg, "kid": key.kid}, _claims(**over), key, algorithms=[alg])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture
def verifier(tmp_path: Path) -> JWTVerifier:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(_jwks(RSA, EC, ED)))
    cfg = JWTSettings(issuer=ISS, audience=AUD, jwks_file=path, roles_claim="realm_access.roles", leeway_s=30)
    return JWTVerifier(cfg, fetch=None)  # type: ignore[arg-type]


@pytest.mark.parametrize(("key", "alg"), [(RSA, "RS256"), (EC, "ES256"), (ED, "EdDSA"), (ED, "Ed25519")])
async def test_valid_tokens(verifier: JWTVerifier, key: Any, alg: str) -> None:
    """RS256, ES256 and EdDSA tokens from the JWKS are accepted; roles come from the configured claim path."""
    p = await verifier.verify(_token(key, alg))
    assert p.subject == "user:alice" and p.kind == "user" and p.roles == {"analyst", "user"}


async def test_audience_list_and_leeway(verifier: JWTVerifier) -> None:
    """An aud list holding ours passes; a token expired 10 s ago is within the 30 s leeway."""
    assert await verifier.verify(_token(aud=[AUD, "other"]))
    assert await verifier.verify(_token(exp=int(time.time()) - 10))


def _alg_none() -> str:
    header = _b64(json.dumps({"alg": "none", "kid": "rsa-1"}).encode())
    return f"{header}.{_b64(json.dumps(_claims()).encode())}."


def _hs256_with_public_key() -> str:
    header = _b64(json.dumps({"alg": "HS256", "kid": "rsa-1"}).encode())
    payload = _b64(json.dumps(_claims()).encode())
    secret = RSA.as_pem(private=False)
    sig = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(sig)}"


def _tampered() -> str:
    h, _, s = _token().split(".")
    return f"{h}.{_b64(json.dumps(_claims(sub='mallory')).encode())}.{s}"


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda: _token(exp=int(time.time()) - 120), "expired"),
        (lambda: _token(nbf=int(time.time()) + 120), "not yet valid"),
        (lambda: _token(iss="https://evil.example"), "wrong issuer"),
        (lambda: _token(aud="someone-else"), "wrong audience"),
        (lambda: _token(exp=None), "no exp"),
        (lambda: _token(sub=None), "no sub"),
        (lambda: _token(OTHER), "signed by another key with the same kid"),
        (_tampered, "payload changed after signing"),
        (lambda: _token(RSAKey.generate_key(2048, parameters={"kid": "nope"})), "unknown kid"),
        (_alg_none, "alg none"),
        (_hs256_with_public_key, "HS256 with the RSA public key as secret"),
        (lambda: _token(RSA, "RS512"), "algorithm not allowed"),
        (lambda: "not.a.jwt", "garbage"),
        (lambda: "a" * 50, "not even three parts"),
    ],
)
async def test_bad_tokens_are_refused(verifier: JWTVerifier, make: Any, why: str) -> None:
    """Every kind of bad token is refused with a TokenError (never accepted, never another exception)."""
    with pytest.raises(TokenError):
        await verifier.verify(make())


async def test_jwks_url_rotation() -> None:
    """Keys come from the IdP's JWKS URL, are cached, and a new key id triggers one refetch."""
    served = {"jwks": _jwks(RSA)}
    fetches = 0

    async def handle(request: web.Request) -> web.Response:
        nonlocal fetches
        fetches += 1
        return web.json_response(served["jwks"])

    app = web.Application()
    app.router.add_get("/jwks", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    import aiohttp

    async with aiohttp.ClientSession() as session:

        async def fetch(url: str) -> bytes:
            async with session.get(url) as r:
                return await r.read()

        cfg = JWTSettings(issuer=ISS, audience=AUD, jwks_url=f"http://127.0.0.1:{port}/jwks", jwks_min_refetch_s=0)
        v = JWTVerifier(cfg, fetch)
        try:
            await v.verify(_token())
            await v.verify(_token())
            assert fetches == 1  # cached
            served["jwks"] = _jwks(RSA, EC)  # the IdP rotates in a new key
            assert (await v.verify(_token(EC, "ES256"))).subject == "user:alice"
            assert fetches == 2
            with pytest.raises(TokenError):  # still unknown after a refetch: refused
                await v.verify(_token(RSAKey.generate_key(2048, parameters={"kid": "ghost"})))
        finally:
            await runner.cleanup()


def test_settings_need_one_jwks_source(tmp_path: Path) -> None:
    """A JWT config needs exactly one of jwks_url and jwks_file."""
    with pytest.raises(ValueError, match="exactly one"):
        JWTSettings(issuer=ISS, audience=AUD)
    KeySet.import_key_set(_jwks(RSA))  # the JWKS we publish in tests is itself valid
