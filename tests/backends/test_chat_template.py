"""Chat templates: ChatML by default, custom Jinja2 per model, sandboxed, clear errors."""

from __future__ import annotations

import pytest

from backends import chat_template
from gateway.errors import InvalidRequest, UnprocessableRequest


def test_chatml_default() -> None:
    """Messages render as ChatML with the assistant turn opened."""
    out = chat_template.render(None, [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])
    assert out == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"


def test_text_parts_are_joined() -> None:
    """Multi-part content with text parts is flattened to its text."""
    msgs = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert "ab<|im_end|>" in chat_template.render(None, msgs)


def test_non_text_part_is_refused() -> None:
    """An image part for a text model is a 422 naming the part type."""
    with pytest.raises(UnprocessableRequest, match="image_url"):
        chat_template.render(None, [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])


def test_custom_template_with_raise_exception() -> None:
    """A model's own template runs, and its raise_exception becomes a 400 for the caller."""
    tpl = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}"
           "{% endif %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}")  # fmt: skip
    assert chat_template.render(tpl, [{"role": "user", "content": "hi"}]) == "[user] hi\n"
    with pytest.raises(InvalidRequest, match="no system role"):
        chat_template.render(tpl, [{"role": "system", "content": "x"}])


def test_sandbox_blocks_python_internals() -> None:
    """A template cannot reach Python internals."""
    tpl = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(InvalidRequest):
        chat_template.render(tpl, [{"role": "user", "content": "x"}])


def test_syntax_error_names_the_line() -> None:
    """A template that does not compile is reported with its line."""
    with pytest.raises(chat_template.TemplateError, match="line 2"):
        chat_template.compile_template("ok\n{% for %}")
