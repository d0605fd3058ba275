"""What the gateway asks of a model server, and what it gets back.

A backend is one connection to one model server (a Triton server, or an OpenAI-compatible
upstream). It knows nothing about HTTP on the caller side, routing or policy: the gateway hands
it a ``Target`` (which upstream model) and a ``Generation`` (what to generate), and reads
``Delta``s back until one carries a ``finish_reason``.

Backends raise only ``gateway.errors.UpstreamError`` and its subclasses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Task = Literal["chat", "completion", "embedding"]


@dataclass(frozen=True, slots=True)
class Target:
    """One upstream model, as a route names it."""

    model: str
    version: str = ""
    """Pinned model version; empty means the server's default policy (usually the latest)."""
    interface: Literal["ensemble", "vllm"] = "ensemble"
    """Triton LLM input interface: TensorRT-LLM's ``ensemble`` or Triton's vLLM backend."""
    chat_template: str | None = None
    """Jinja2 chat template source, for backends that take a prompt rather than messages."""
    embedding_input: str = "text_input"
    embedding_output: str = "embedding"


@dataclass(frozen=True, slots=True)
class Generation:
    """A validated generation request, in the gateway's own terms."""

    task: Literal["chat", "completion"]
    messages: Sequence[dict[str, Any]] = ()
    prompt: str = ""
    stream: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: Sequence[str] = ()
    seed: int | None = None
    passthrough: dict[str, Any] = field(default_factory=dict)
    """Fields the gateway does not interpret, forwarded as-is to OpenAI-compatible upstreams."""


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts for one response."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class Delta:
    """A piece of a response: new text, and at the end a finish reason and usage."""

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    extra: dict[str, Any] | None = None
    """Other delta or message fields from an OpenAI-compatible upstream (e.g. ``tool_calls``)."""


@dataclass(frozen=True, slots=True)
class Embeddings:
    """Vectors for a list of inputs, in input order."""

    vectors: list[list[float]]
    prompt_tokens: int


class Backend(Protocol):
    """A connection to one model server."""

    name: str

    def generate(self, target: Target, gen: Generation) -> AsyncIterator[Delta]:
        """Stream the response to ``gen``; the last delta has ``finish_reason`` set.

        Nothing is sent upstream until the first ``__anext__``; closing the iterator early
        (``aclose()``) cancels the upstream request.
        """
        ...

    async def embed(self, target: Target, inputs: list[str]) -> Embeddings:
        """Embed ``inputs`` with the target model."""
        ...

    async def ready(self, target: Target) -> bool:
        """Whether the server is reachable and reports ``target`` ready to serve."""
        ...

    async def load_version(self, target: Target) -> None:
        """Make ``target.version`` servable, keeping the versions already loaded (Triton: its repository API);
        raise an ``UpstreamError`` saying why it cannot, or ``InvalidRequest`` if the server has no versions."""
        ...

    async def aclose(self) -> None:
        """Release connections. The backend is unusable afterwards."""
        ...
