"""Read a request body: content type, size limit, JSON, then schema validation.

Each failure is a ``GatewayError`` with the status a caller can act on: 415 for a body that is
not JSON by its content type, 413 for one over the limit, 400 for malformed JSON or invalid
fields, with ``param`` naming the first offending field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from gateway.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType

M = TypeVar("M", bound=BaseModel)
RAW_BODY = "gateway.raw_body"
"""Scope key of the raw body bytes, kept for the ledger's keyed digest of the request."""


async def read_body(request: Request, limit: int, media_ok: Callable[[str], bool], expected: str,
                    too_large: str) -> bytes:  # fmt: skip
    """The raw body: 415 unless ``media_ok`` takes its media type (``expected`` names it), 413 with ``too_large``
    once it is over ``limit`` bytes (by its declared length, or as it streams in)."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if not media_ok(media):
        raise UnsupportedMediaType(f"Content-Type must be {expected}, not {media or 'missing'!r}", param="Content-Type")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(too_large)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(too_large)
        chunks.append(chunk)
    return b"".join(chunks)


def _json_media(media: str) -> bool:
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def read_json(request: Request, limit: int) -> object:
    raw = await read_body(request, limit, _json_media, "application/json", f"request body exceeds {limit} bytes")
    request.scope[RAW_BODY] = raw
    if not raw:
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None


def validate(model: type[M], data: object) -> M:
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = [p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in {"str", "list"}))]
        param = ".".join(str(p) for p in loc) or None
        if err["type"] == "missing":
            raise InvalidRequest(f"missing required parameter: {param!r}", param=param) from None
        raise InvalidRequest(f"invalid value for {param!r}: {err['msg']}", param=param) from None
