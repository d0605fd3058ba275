"""Every text field of a request that reaches a backend, found and replaced in place.

Chat: each message's ``content`` (a string, or the ``text`` of each text part), the
``arguments`` of assistant ``tool_calls`` and of the legacy ``function_call``. Legacy completions:
the prompt. Embeddings: each input string. Other fields (tool schemas, sampling parameters) carry
no user data and are left alone.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from typing import Any

import orjson

Slot = tuple[MutableMapping[str, Any] | list[Any], Any]
"""A place that holds a text: a container and its key or index."""


def message_slots(messages: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Slot]]:
    """A deep copy of ``messages`` and the slots of every text in it."""
    copied: list[dict[str, Any]] = orjson.loads(orjson.dumps(list(messages)))
    slots: list[Slot] = []
    for m in copied:
        content = m.get("content")
        if isinstance(content, str):
            slots.append((m, "content"))
        elif isinstance(content, list):
            slots += [(part, "text") for part in content
                      if isinstance(part, dict) and isinstance(part.get("text"), str)]  # fmt: skip
        for call in m.get("tool_calls") or ():
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                slots.append((fn, "arguments"))
        fc = m.get("function_call")
        if isinstance(fc, dict) and isinstance(fc.get("arguments"), str):
            slots.append((fc, "arguments"))
    return copied, slots


def read(slots: Sequence[Slot]) -> list[str]:
    return [str(container[key]) for container, key in slots]


def write(slots: Sequence[Slot], texts: Sequence[str]) -> None:
    for (container, key), text in zip(slots, texts, strict=True):
        container[key] = text
