"""Triton Inference Server backend over gRPC (KServe v2 plus Triton's streaming extension).

LLMs are driven through one of the two interfaces people deploy:

- ``ensemble``, TensorRT-LLM's: ``text_input``, ``max_tokens``, ``stream`` and the optional
  ``temperature``, ``top_p``, ``stop_words``, ``random_seed``; output ``text_output``.
- ``vllm``, Triton's vLLM backend: ``text_input``, ``stream``, ``sampling_parameters`` (JSON),
  ``exclude_input_in_output``; output ``text_output``.

A decoupled model is driven with ``ModelStreamInfer`` (also for a non-streaming call, since
Triton refuses unary calls to decoupled models); any other with unary ``ModelInfer``. Inputs the
model does not declare are not sent. Token counts come from the model's ``num_input_tokens`` and
``num_output_tokens`` outputs when it has them (vLLM's ``return_num_*_tokens``); otherwise they
are estimated from UTF-8 length (4 bytes a token) and the docs say so.

Inference calls carry the W3C trace context (``traceparent``) as gRPC metadata: Triton continues the
gateway's trace when its own tracing is in ``opentelemetry`` mode.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import orjson
from google.protobuf import json_format
from tritonclient.grpc import InferResult, service_pb2, service_pb2_grpc

from backends import chat_template
from backends._triton_wire import ModelInfo, build_request, is_final, output_int, output_text
from backends.base import Delta, Embeddings, Generation, Target, Usage
from gateway.errors import InvalidRequest, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from gateway.observability.tracing import backend_headers

log = logging.getLogger(__name__)
_INFO_TTL_S = 30.0
_MAX_MESSAGE = 2**31 - 1


def _estimate_tokens(text: str) -> int:
    return math.ceil(len(text.encode()) / 4)


def translate(exc: grpc.aio.AioRpcError, model: str) -> UpstreamError:
    """Map a gRPC failure to the gateway's upstream errors, most specific first.

    Triton's details can hold a model's traceback: they are logged, never shown to callers.
    """
    code = exc.code()
    log.warning("triton call for model %r failed: %s: %s", model, code.name, exc.details())
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return UpstreamTimeout(f"model {model!r} did not answer in time")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND):
        return UpstreamUnavailable(f"model {model!r} is not available")
    return UpstreamError(f"model {model!r} failed upstream ({code.name})")


def _trace_metadata() -> tuple[tuple[str, str], ...]:
    return tuple(backend_headers().items())


def _model_failed(model: str, detail: str) -> UpstreamError:
    log.warning("triton model %r failed: %s", model, detail)
    return UpstreamError(f"model {model!r} failed upstream")


class TritonBackend:
    """A gRPC channel to one Triton server, shared by all its routes."""

    def __init__(self, name: str, url: str, *, timeout_s: float, connect_timeout_s: float,
                 repository_auth: tuple[str, str] | None = None, load_timeout_s: float = 300.0) -> None:  # fmt: skip
        self.name = name
        self.url = url
        self._repository_auth = () if repository_auth is None else (repository_auth,)
        self._load_timeout = load_timeout_s
        self._timeout = timeout_s
        self._connect_timeout = connect_timeout_s
        self._channel = grpc.aio.insecure_channel(
            url,
            options=[
                ("grpc.max_send_message_length", _MAX_MESSAGE),
                ("grpc.max_receive_message_length", _MAX_MESSAGE),
                ("grpc.keepalive_time_ms", 30_000),
            ],
        )
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self._info: dict[tuple[str, str], tuple[float, ModelInfo]] = {}
        self.streams_open = 0
        """Upstream gRPC streams in flight."""
        self.streams_cancelled = 0
        """Upstream gRPC streams the gateway cancelled before their final response."""

    async def _model_info(self, target: Target) -> ModelInfo:
        key = (target.model, target.version)
        cached = self._info.get(key)
        if cached is not None and time.monotonic() - cached[0] < _INFO_TTL_S:
            return cached[1]
        try:
            resp = await self._stub.ModelConfig(
                service_pb2.ModelConfigRequest(name=target.model, version=target.version),
                timeout=self._connect_timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, target.model) from None
        info = ModelInfo.from_config(resp.config, target.version)
        self._info[key] = (time.monotonic(), info)
        return info

    def _llm_inputs(self, info: ModelInfo, target: Target, gen: Generation, prompt: str) -> dict[str, Any]:
        if gen.stop and "stop_words" not in info.inputs and target.interface == "ensemble":
            raise InvalidRequest(f"model {target.model!r} does not support stop sequences", param="stop")
        values: dict[str, Any] = {
            "text_input": prompt,
            "stream": gen.stream,
            "return_num_input_tokens": True,
            "return_num_output_tokens": True,
        }
        if target.interface == "vllm":
            sampling: dict[str, Any] = {}
            if gen.max_tokens is not None:
                sampling["max_tokens"] = gen.max_tokens
            if gen.temperature is not None:
                sampling["temperature"] = gen.temperature
            if gen.top_p is not None:
                sampling["top_p"] = gen.top_p
            if gen.stop:
                sampling["stop"] = list(gen.stop)
            if gen.seed is not None:
                sampling["seed"] = gen.seed
            values["sampling_parameters"] = orjson.dumps(sampling).decode()
            values["exclude_input_in_output"] = True
            return values
        values["max_tokens"] = gen.max_tokens
        if gen.temperature is not None:
            values["temperature"] = gen.temperature
        if gen.top_p is not None:
            values["top_p"] = gen.top_p
        if gen.stop:
            values["stop_words"] = list(gen.stop)
        if gen.seed is not None:
            values["random_seed"] = gen.seed
        return values

    async def generate(self, target: Target, gen: Generation) -> AsyncIterator[Delta]:
        info = await self._model_info(target)
        prompt = chat_template.render(target.chat_template, gen.messages) if gen.task == "chat" else gen.prompt
        values = self._llm_inputs(info, target, gen, prompt)
        request_id = uuid.uuid4().hex
        counts = _Counts()
        if info.decoupled:
            req = build_request(info, values, request_id=request_id, final_response=True)
            async for text in self._stream(target, req, counts):
                if text:
                    yield Delta(text=text)
        else:
            req = build_request(info, values, request_id=request_id)
            try:
                resp = await self._stub.ModelInfer(req, timeout=self._timeout, metadata=_trace_metadata())
            except grpc.aio.AioRpcError as exc:
                raise translate(exc, target.model) from None
            result = InferResult(resp)
            text = output_text(result)
            counts.add(result, text)
            if text:
                yield Delta(text=text)
        yield Delta(finish_reason=counts.finish_reason(gen.max_tokens), usage=counts.usage(prompt))

    async def _stream(self, target: Target, req: service_pb2.ModelInferRequest, counts: _Counts) -> AsyncIterator[str]:
        done = asyncio.Event()

        async def requests() -> AsyncIterator[service_pb2.ModelInferRequest]:
            yield req
            await done.wait()  # keep the stream open until the final response arrives

        call = self._stub.ModelStreamInfer(requests(), timeout=self._timeout, metadata=_trace_metadata())
        self.streams_open += 1
        finished = False
        try:
            async for msg in call:
                if msg.error_message:
                    raise _model_failed(target.model, msg.error_message)
                result = InferResult(msg.infer_response)
                text = output_text(result)
                counts.add(result, text)
                yield text
                if is_final(msg.infer_response):
                    finished = True
                    return
            raise UpstreamError(f"model {target.model!r} closed the stream before its final response")
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, target.model) from None
        finally:
            done.set()
            if not finished:
                call.cancel()  # a no-op if cancelling our task already cancelled the RPC
                if call.cancelled():
                    self.streams_cancelled += 1
            self.streams_open -= 1

    async def embed(self, target: Target, inputs: list[str]) -> Embeddings:
        info = await self._model_info(target)
        if target.embedding_input not in info.inputs:
            raise UpstreamError(f"model {target.model!r} has no input {target.embedding_input!r}")
        req = build_request(info, {target.embedding_input: inputs}, batch_rows=True)
        try:
            resp = await self._stub.ModelInfer(req, timeout=self._timeout, metadata=_trace_metadata())
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, target.model) from None
        result = InferResult(resp)
        arr = result.as_numpy(target.embedding_output)
        if arr is None or arr.shape[0] != len(inputs):
            raise UpstreamError(f"model {target.model!r} returned no {target.embedding_output!r} per input")
        tokens = output_int(result, "num_input_tokens")
        if tokens is None:
            tokens = sum(_estimate_tokens(t) for t in inputs)
        return Embeddings(vectors=arr.reshape(len(inputs), -1).astype(float).tolist(), prompt_tokens=tokens)

    async def ready(self, target: Target) -> bool:
        try:
            resp = await self._stub.ModelReady(
                service_pb2.ModelReadyRequest(name=target.model, version=target.version),
                timeout=self._connect_timeout,
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(resp.ready)

    async def load_version(self, target: Target) -> None:
        """Load ``target.version`` through Triton's model-repository API, beside the versions loaded now.

        The model's current configuration is reloaded with ``version_policy: specific`` listing both, so
        traffic to the old version goes on while the new one loads (Triton swaps a model's versions
        atomically once the load succeeds). Needs ``--model-control-mode=explicit``, and the repository
        API's token where the server restricts it."""
        if not target.version.isdigit():
            raise InvalidRequest(f"a Triton model version is a number, not {target.version!r}", param="version")
        if await self.ready(target):
            return
        model, version = target.model, int(target.version)
        try:
            index = await self._stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True),
                                                     metadata=self._repository_auth,
                                                     timeout=self._connect_timeout)  # fmt: skip
            loaded = {int(m.version) for m in index.models if m.name == model and m.version.isdigit()}
            reply = await self._stub.ModelConfig(service_pb2.ModelConfigRequest(name=model),
                                                 timeout=self._connect_timeout)  # fmt: skip
            config = json_format.MessageToDict(reply.config, preserving_proto_field_name=True)
            config["version_policy"] = {"specific": {"versions": sorted(loaded | {version})}}
            param = service_pb2.ModelRepositoryParameter(string_param=orjson.dumps(config).decode())
            await self._stub.RepositoryModelLoad(
                service_pb2.RepositoryModelLoadRequest(model_name=model, parameters={"config": param}),
                metadata=self._repository_auth, timeout=self._load_timeout,
            )  # fmt: skip
        except grpc.aio.AioRpcError as exc:
            log.warning("loading version %s of %r failed: %s: %s", version, model, exc.code().name, exc.details())
            raise UpstreamUnavailable(f"version {version} of model {model!r} cannot be loaded on backend "
                                      f"{self.name!r} ({exc.code().name})") from None  # fmt: skip
        if not await self.ready(target):
            raise UpstreamUnavailable(f"version {version} of model {model!r} did not become ready")

    async def server_ready(self) -> bool:
        try:
            resp = await self._stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=self._connect_timeout)
        except grpc.aio.AioRpcError:
            return False
        return bool(resp.ready)

    async def aclose(self) -> None:
        await self._channel.close()


class _Counts:
    """Token counts over a response: the model's own when it reports them, else estimates."""

    __slots__ = ("completion", "prompt", "text_bytes")

    def __init__(self) -> None:
        self.prompt: int | None = None
        self.completion: int | None = None
        self.text_bytes = 0

    def add(self, result: InferResult, text: str) -> None:
        self.text_bytes += len(text.encode())
        n_in = output_int(result, "num_input_tokens")
        if n_in is not None:
            self.prompt = max(self.prompt or 0, n_in)
        n_out = output_int(result, "num_output_tokens")
        if n_out is not None:
            self.completion = (self.completion or 0) + n_out

    def finish_reason(self, max_tokens: int | None) -> str:
        """``length`` only when the model's own count shows the limit was reached."""
        if max_tokens is not None and self.completion is not None and self.completion >= max_tokens:
            return "length"
        return "stop"

    def usage(self, prompt: str) -> Usage:
        p = self.prompt if self.prompt is not None else _estimate_tokens(prompt)
        c = self.completion if self.completion is not None else math.ceil(self.text_bytes / 4)
        return Usage(prompt_tokens=p, completion_tokens=c)
