"""The page's browser session: a cookie that carries the caller's own credential, and the checks on every form.

The cookie holds the API key or the provider's access token that signed in, with its expiry: each page request
presents it to the same ``Authenticator`` as an API call, so a revoked key or an expired token ends the session
at once, and every refusal is an ``authn.failed`` entry. It is ``HttpOnly`` (no script reads it), ``Secure`` and
``__Host-`` prefixed over TLS (only this origin sets or gets it), and ``SameSite=Lax``: it travels on the
top-level navigation back from the identity provider, and never on a cross-site form post.

Every form that changes something carries a CSRF token, an HMAC of the session under its own credential (an
attacker who cannot read the cookie cannot make it), and every POST must come from this origin (``Origin``).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

_VERSION = "v1"


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def cookie_name(request: Request, base: str = "gateway-ui", *, whole_site: bool = True) -> str:
    """Over TLS, ``__Host-`` (this origin only, ``Path=/``), or ``__Secure-`` for a cookie of one path."""
    if not _secure(request):
        return base
    return f"__Host-{base}" if whole_site else f"__Secure-{base}"


@dataclass(frozen=True, slots=True)
class Session:
    credential: str
    expires: float

    def csrf(self) -> str:
        """The token each form of this session carries."""
        return hmac.new(self.credential.encode(), b"gateway-ui csrf " + str(int(self.expires)).encode(),
                        hashlib.sha256).hexdigest()  # fmt: skip

    def csrf_ok(self, token: str) -> bool:
        return hmac.compare_digest(self.csrf(), token)


def read(request: Request) -> Session | None:
    """The session the browser presents, unless absent, malformed or past its expiry."""
    raw = request.cookies.get(cookie_name(request))
    if not raw:
        return None
    version, _, rest = raw.partition(".")
    expires, _, credential = rest.partition(".")
    if version != _VERSION or not expires.isdigit() or not credential:
        return None
    if int(expires) <= time.time():
        return None
    return Session(credential, float(expires))


def start(response: Response, request: Request, credential: str, expires: float) -> None:
    max_age = max(1, int(expires - time.time()))
    response.set_cookie(cookie_name(request), f"{_VERSION}.{int(expires)}.{credential}", max_age=max_age, path="/",
                        secure=_secure(request), httponly=True, samesite="lax")  # fmt: skip


def end(response: Response, request: Request) -> None:
    response.delete_cookie(cookie_name(request), path="/", secure=_secure(request), httponly=True, samesite="lax")


_LOGIN = "gateway-ui-login"
_LOGIN_PATH = "/admin/ui/callback"


def keep_login(response: Response, request: Request, transaction: str, max_age_s: int) -> None:
    """Keep an OIDC sign-in's transaction until the provider sends the browser back (to the callback only)."""
    response.set_cookie(cookie_name(request, _LOGIN, whole_site=False), transaction, max_age=max_age_s,
                        path=_LOGIN_PATH, secure=_secure(request), httponly=True, samesite="lax")  # fmt: skip


def login(request: Request) -> str | None:
    return request.cookies.get(cookie_name(request, _LOGIN, whole_site=False))


def forget_login(response: Response, request: Request) -> None:
    response.delete_cookie(cookie_name(request, _LOGIN, whole_site=False), path=_LOGIN_PATH, secure=_secure(request),
                           httponly=True, samesite="lax")  # fmt: skip


def same_origin(request: Request) -> bool:
    """A POST made by this page: its ``Origin`` (sent by every current browser on a POST) is this origin.

    Without an ``Origin`` the ``Referer`` decides; with neither (a non-browser client) the CSRF token alone
    guards the signed-in forms."""
    own = f"{request.url.scheme}://{request.url.netloc}"
    origin = request.headers.get("origin")
    if origin is not None:
        return origin == own
    referer = request.headers.get("referer")
    return referer is None or referer == own or referer.startswith(own + "/")
