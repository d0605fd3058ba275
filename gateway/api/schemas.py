"""Request bodies of the OpenAI-compatible API, validated with pydantic.

Unknown fields are kept (``extra="allow"``) and forwarded to OpenAI-compatible upstreams, as a
drop-in proxy must; backends that cannot use them ignore them, as OpenAI ignores fields it does
not know.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from backends.base import Generation
from gateway.errors import UnprocessableRequest

_Stop = Annotated[list[str], Field(max_length=4)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    model: str = Field(min_length=1)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    include_usage: bool = False


class _Sampling(_Body):
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1, le=2**31 - 1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | _Stop | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    n: int = Field(1, ge=1, le=128)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def generation(self, task: Literal["chat", "completion"], max_tokens: int | None, **fields: Any) -> Generation:
        """The backend's view of this request; ``fields`` are the task's own (messages or prompt)."""
        if self.n != 1:
            raise UnprocessableRequest("only n=1 is supported", param="n")
        stop = () if self.stop is None else (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        return Generation(
            task=task,
            stream=self.stream,
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=stop,
            seed=self.seed,
            passthrough=dict(self.model_extra or {}),
            **fields,
        )


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=2**31 - 1)

    def effective_max_tokens(self) -> int | None:
        """``max_completion_tokens`` is the current name; ``max_tokens`` the deprecated one."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _nonempty_list(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not v:
            raise ValueError("prompt must not be an empty list")
        return v


class EmbeddingRequest(_Body):
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)

    @field_validator("input")
    @classmethod
    def _nonempty(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not v:
            raise ValueError("input must not be an empty list")
        if isinstance(v, list) and len(v) > 2048:
            raise ValueError("input may hold at most 2048 items")
        return v
