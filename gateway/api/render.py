"""OpenAI response objects, built from backend deltas.

Chat and legacy completions share one shape of logic and differ only in field names, so one
``Shape`` per endpoint names those fields and the functions below build both.
"""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from backends.base import Delta, Embeddings, Usage


@dataclass(frozen=True, slots=True)
class Shape:
    id_prefix: str
    object: str
    chunk_object: str
    chat: bool


CHAT = Shape("chatcmpl-", "chat.completion", "chat.completion.chunk", chat=True)
COMPLETION = Shape("cmpl-", "text_completion", "text_completion", chat=False)


def new_id(shape: Shape) -> str:
    return shape.id_prefix + uuid.uuid4().hex


def usage_obj(u: Usage | None) -> dict[str, int] | None:
    if u is None:
        return None
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.total_tokens}


def response(shape: Shape, rid: str, model: str, text: str, finish: str | None, usage: Usage | None,
             extra: dict[str, Any] | None) -> dict[str, Any]:  # fmt: skip
    """A whole non-streamed response."""
    if shape.chat:
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        if extra:
            message.update(extra)
        choice: dict[str, Any] = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    return {
        "id": rid,
        "object": shape.object,
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage_obj(usage),
        "system_fingerprint": None,
    }


def chunk(shape: Shape, rid: str, created: int, model: str, delta: Delta | None, *, first: bool = False,
          usage_only: Usage | None = None) -> dict[str, Any]:  # fmt: skip
    """One streamed chunk. ``usage_only`` makes the final usage chunk (no choices)."""
    body: dict[str, Any] = {"id": rid, "object": shape.chunk_object, "created": created, "model": model}
    if usage_only is not None:
        body["choices"] = []
        body["usage"] = usage_obj(usage_only)
        return body
    text = delta.text if delta is not None else ""
    finish = delta.finish_reason if delta is not None else None
    if shape.chat:
        d: dict[str, Any] = {"role": "assistant", "content": text} if first else {}
        if text and not first:
            d["content"] = text
        if delta is not None and delta.extra:
            d.update(delta.extra)
        choice: dict[str, Any] = {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    body["choices"] = [choice]
    return body


def embeddings(model: str, result: Embeddings, encoding: str) -> dict[str, Any]:
    data = []
    for i, vec in enumerate(result.vectors):
        value: Any = vec
        if encoding == "base64":
            value = base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode()
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }
