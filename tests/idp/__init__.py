"""A real OpenID Connect provider (panva's oidc-provider on Node.js) for sign-in tests."""

from tests.idp.provider import IdP, IdPError, start_idp

__all__ = ["IdP", "IdPError", "start_idp"]
