"""Every text of a request or an answer, found and replaced in place.

A drop-in proxy forwards fields it does not interpret (``user``, ``tools``, ``prediction``,
``reasoning_content``, ``refusal``, ...), so the gateway cannot list the fields that may carry
personal data: it redacts every string leaf of the JSON it forwards, and leaves alone only the
structural ones that must stay exact for the API to work (roles, types, ids, function names,
JSON-schema keywords).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

Slot = tuple[Any, Any]
"""A place that holds a text: a container (dict or list) and its key or index."""

STRUCTURAL = frozenset({
    "role", "type", "id", "tool_call_id", "object", "finish_reason", "model", "index",
    "$ref", "$schema", "format", "pattern", "required", "strict", "additionalProperties",
})  # fmt: skip
"""Keys whose string values are never redacted: changing them would break the request, not hide data."""

_NAMED = frozenset({"function", "function_call", "tool_choice"})
"""Containers whose ``name`` is an identifier (a function's), not a person's."""


def slots(value: Any) -> list[Slot]:
    """The slots of every redactable string leaf in ``value``."""
    out: list[Slot] = []
    _walk(value, out, parent=None)
    return out


def _walk(value: Any, out: list[Slot], parent: str | None) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if key in STRUCTURAL or (key == "name" and parent in _NAMED):
                continue
            if isinstance(item, str):
                out.append((value, key))
            else:
                _walk(item, out, key if isinstance(key, str) else None)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, str):
                out.append((value, i))
            else:
                _walk(item, out, parent)


def copy(value: Any) -> Any:
    """A deep copy of JSON-shaped ``value``, so that redaction never changes the caller's objects."""
    return orjson.loads(orjson.dumps(value))


def message_slots(messages: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Slot]]:
    """A deep copy of ``messages`` and the slots of every text in it."""
    copied: list[dict[str, Any]] = copy(list(messages))
    return copied, slots(copied)


def read(found: Sequence[Slot]) -> list[str]:
    return [str(container[key]) for container, key in found]


def write(found: Sequence[Slot], texts: Sequence[str]) -> None:
    for (container, key), text in zip(found, texts, strict=True):
        container[key] = text
