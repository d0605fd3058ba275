"""The page's browser session: a cookie that carries the caller's own credential, and the checks on every form.

The cookie holds the API key or the provider's access token that signed in, with the session's expiry: each
page request presents it to the same ``Authenticator`` as an API call, so a revoked key or an expired token
ends the session at once, and every refusal is an ``authn.failed`` entry. It is a browser-session cookie (no
``Max-Age``: not kept once the browser closes), ``HttpOnly`` (no script reads it), and over TLS ``Secure`` and
``__Host-`` prefixed (only this origin sets or gets it), ``SameSite=Lax``: it travels on the top-level
navigation back from the identity provider, and never on a cross-site form post. The API never reads it.

Every form that changes something carries a CSRF token, an HMAC of the session under its own credential (an
attacker who cannot read the cookie cannot make it), and every POST must come from this origin (``Origin``).

The origin is the one the browser uses: ``ui.public_url`` when the gateway sits behind a TLS-terminating proxy,
else the request's own.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

_VERSION = "v1"
_SESSION = "gateway-ui"
_LOGIN = "gateway-ui-login"


@dataclass(frozen=True, slots=True)
class Site:
    """Where the browser sees the page: its origin, and whether cookies must be ``Secure``."""

    origin: str

    @classmethod
    def of(cls, request: Request, public_url: str | None) -> Site:
        if public_url is not None:
            parts = urlsplit(public_url)
            return cls(f"{parts.scheme}://{parts.netloc}")
        return cls(f"{request.url.scheme}://{request.url.netloc}")

    @property
    def secure(self) -> bool:
        return self.origin.startswith("https://")

    def cookie(self, base: str) -> str:
        return f"__Host-{base}" if self.secure else base


@dataclass(frozen=True, slots=True)
class Session:
    credential: str
    expires: float

    def csrf(self) -> str:
        """The token each form of this session carries."""
        return hmac.new(self.credential.encode(), b"gateway-ui csrf " + str(int(self.expires)).encode(),
                        hashlib.sha256).hexdigest()  # fmt: skip

    def csrf_ok(self, token: str) -> bool:
        return hmac.compare_digest(self.csrf().encode(), token.encode())  # bytes: any text compares, none raises


def read(request: Request, site: Site) -> Session | None:
    """The session the browser presents, unless absent, malformed or past its expiry."""
    raw = request.cookies.get(site.cookie(_SESSION))
    if not raw:
        return None
    version, _, rest = raw.partition(".")
    expires, _, credential = rest.partition(".")
    if version != _VERSION or not expires.isdigit() or not credential:
        return None
    if int(expires) <= time.time():
        return None
    return Session(credential, float(expires))


def _set(response: Response, site: Site, base: str, value: str, max_age: int | None = None) -> None:
    response.set_cookie(site.cookie(base), value, max_age=max_age, path="/", secure=site.secure, httponly=True,
                        samesite="lax")  # fmt: skip


def _delete(response: Response, site: Site, base: str) -> None:
    response.delete_cookie(site.cookie(base), path="/", secure=site.secure, httponly=True, samesite="lax")


def start(response: Response, site: Site, credential: str, expires: float) -> None:
    _set(response, site, _SESSION, f"{_VERSION}.{int(expires)}.{credential}")


def end(response: Response, site: Site) -> None:
    _delete(response, site, _SESSION)


def keep_login(response: Response, site: Site, transaction: str, max_age_s: int) -> None:
    """Keep an OIDC sign-in's transaction until the provider sends the browser back."""
    _set(response, site, _LOGIN, transaction, max_age_s)


def login(request: Request, site: Site) -> str | None:
    return request.cookies.get(site.cookie(_LOGIN))


def forget_login(response: Response, site: Site) -> None:
    _delete(response, site, _LOGIN)


def same_origin(request: Request, site: Site) -> bool:
    """A POST made by this page: its ``Origin`` (sent by every current browser on a POST) is the page's.

    Without an ``Origin`` the ``Referer`` decides; with neither (a non-browser client) the CSRF token alone
    guards the signed-in forms."""
    origin = request.headers.get("origin")
    if origin is not None:
        return origin == site.origin
    referer = request.headers.get("referer")
    return referer is None or referer == site.origin or referer.startswith(site.origin + "/")
