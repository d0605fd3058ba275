"""Render chat messages into one prompt with a model's Jinja2 chat template.

Triton LLM models take a prompt, not messages, so the gateway applies the model's chat template,
as Triton's own OpenAI frontend and Hugging Face ``apply_chat_template`` do. Templates are
compiled once, in a sandbox (a template is configuration, not code we trust to touch Python).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import jinja2
import orjson
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gateway.errors import InvalidRequest, UnprocessableRequest

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""ChatML, the template of SmolLM2, Qwen and many others; the default when a route sets none."""


class TemplateError(Exception):
    """A chat template does not compile."""


def _raise(message: str) -> None:
    raise InvalidRequest(f"chat template rejected the messages: {message}", param="messages")


def _tojson(value: Any, indent: int | None = None) -> str:
    option = orjson.OPT_INDENT_2 if indent else 0
    return orjson.dumps(value, option=option).decode()


@lru_cache(maxsize=64)
def compile_template(source: str) -> jinja2.Template:
    """Compile ``source``; raises TemplateError with the line on a syntax error."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, autoescape=False)
    env.globals["raise_exception"] = _raise
    env.filters["tojson"] = _tojson
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"line {exc.lineno}: {exc.message}") from None


def _text(content: Any) -> str:
    """Flatten OpenAI message content (a string, or a list of parts) to text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part.get("type") != "text":
            raise UnprocessableRequest(
                f"content part type {part.get('type')!r} is not supported by this model",
                param="messages",
            )
        parts.append(part.get("text", ""))
    return "".join(parts)


def render(source: str | None, messages: Sequence[dict[str, Any]]) -> str:
    """The prompt for ``messages`` under the template ``source`` (ChatML when None)."""
    template = compile_template(source or CHATML)
    flat = [{**m, "content": _text(m.get("content"))} for m in messages]
    try:
        return template.render(messages=flat, add_generation_prompt=True, bos_token="", eos_token="")
    except InvalidRequest:
        raise
    except jinja2.TemplateError as exc:
        raise InvalidRequest(f"chat template failed: {exc}", param="messages") from None
