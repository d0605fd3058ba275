"""The gateway's one error hierarchy.

Every error a caller can see is a ``GatewayError``. Each class carries its HTTP status and the
OpenAI error ``type``; the one handler in ``gateway.app`` renders it as
``{"error": {"message", "type", "param", "code"}}``. The status is the contract: the openai SDK
picks its exception class from it and retries 408/409/429/5xx, so a caller mistake is never a
5xx and an upstream failure is never a 4xx.

Add a class only when a caller's handling or the status differs.
"""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """Base of every error rendered to a caller; subclasses set status and type."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The OpenAI error object for this error."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(GatewayError):
    """The request body or parameters are malformed or out of range (400)."""

    status = 400
    type = "invalid_request_error"


class UnprocessableRequest(InvalidRequest):
    """The JSON is well formed but a field fails validation (422)."""

    status = 422


class NotFound(InvalidRequest):
    """The model or route does not exist (404)."""

    status = 404
    code = "model_not_found"


class Conflict(InvalidRequest):
    """The request conflicts with the current state, which it leaves unchanged (409)."""

    status = 409


class NotYetCheckpointed(InvalidRequest):
    """The entry exists but no signed checkpoint covers it yet; retry after the checkpoint interval."""

    status = 409
    code = "not_yet_checkpointed"


class MethodNotAllowed(InvalidRequest):
    """The route exists but not for this HTTP method (405)."""

    status = 405
    code = "method_not_allowed"


class PayloadTooLarge(InvalidRequest):
    """The request body exceeds the configured limit (413)."""

    status = 413
    code = "request_too_large"


class UnsupportedMediaType(InvalidRequest):
    """The request body is not ``application/json`` (415)."""

    status = 415
    code = "unsupported_media_type"


class UpstreamError(GatewayError):
    """A model server failed or answered with something unusable (502)."""

    status = 502
    type = "upstream_error"
    code = "bad_gateway"


class UpstreamUnavailable(UpstreamError):
    """No backend for the model is reachable or ready (503)."""

    status = 503
    code = "backend_unavailable"


class UpstreamTimeout(UpstreamError):
    """The model server did not answer within the configured deadline (504)."""

    status = 504
    code = "upstream_timeout"


class InternalError(GatewayError):
    """An unexpected fault inside the gateway; the message names only the request id (500)."""

    status = 500
    type = "server_error"
    code = "internal_error"


class AuditUnavailable(GatewayError):
    """The audit ledger cannot make an entry durable, so nothing is served (fail closed)."""

    status = 503
    type = "server_error"
    code = "audit_unavailable"


class RateLimiterUnavailable(GatewayError):
    """The shared rate-limit store cannot be reached, so nothing is admitted (fail closed, 503)."""

    status = 503
    type = "server_error"
    code = "rate_limiter_unavailable"


class RedactionUnavailable(GatewayError):
    """Personal-data screening cannot run (analyzer down or too slow), so nothing is served (fail closed)."""

    status = 503
    type = "server_error"
    code = "pii_unavailable"


class ConfigError(Exception):
    """A configuration file or value is invalid. Raised at start or reload, never per request."""


class Unauthenticated(GatewayError):
    """No credential, or one that is malformed, unknown, revoked, expired or badly signed (401)."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"

    def __init__(self, message: str, *, presented: bool) -> None:
        challenge = 'Bearer realm="llm-gateway"' + (', error="invalid_token"' if presented else "")
        super().__init__(message, headers={"www-authenticate": challenge})


class PermissionDenied(GatewayError):
    """The caller is known but policy does not allow this; the message names the permission (403)."""

    status = 403
    type = "invalid_request_error"
    code = "permission_denied"


class RateLimited(GatewayError):
    """A per-role rate limit is exhausted; ``Retry-After`` says when to try again (429)."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: float, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"retry-after": str(max(1, int(retry_after_s + 0.999)))})


class BudgetExhausted(GatewayError):
    """A statistics query would overspend the consumer's privacy budget; nothing was spent (429)."""

    status = 429
    type = "rate_limit_error"
    code = "privacy_budget_exhausted"

    def __init__(self, message: str, *, remaining: dict[str, float], retry_after_s: float) -> None:
        super().__init__(message, headers={"retry-after": str(max(1, int(retry_after_s + 0.999)))})
        self.remaining = remaining

    def body(self) -> dict[str, Any]:
        body = super().body()
        body["error"]["remaining_budget"] = self.remaining
        return body


class PolicyError(Exception):
    """A policy file is invalid: the message names the file, the line and the reason."""
