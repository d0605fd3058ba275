"""KServe v2 gRPC messages for Triton: model facts from its config, requests, and outputs.

Requests are built directly as ``ModelInferRequest`` protobufs (tritonclient's generated
``service_pb2``) rather than through ``tritonclient.grpc.aio``'s wrapper, because the wrapper
cannot set ``triton_enable_empty_final_response`` on a stream; without it a decoupled model's
end of stream is invisible to the client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from tritonclient.grpc import InferResult, model_config_pb2, service_pb2
from tritonclient.utils import serialize_byte_tensor

_DTYPES = {
    model_config_pb2.TYPE_STRING: ("BYTES", np.object_),
    model_config_pb2.TYPE_BOOL: ("BOOL", np.bool_),
    model_config_pb2.TYPE_INT32: ("INT32", np.int32),
    model_config_pb2.TYPE_INT64: ("INT64", np.int64),
    model_config_pb2.TYPE_UINT32: ("UINT32", np.uint32),
    model_config_pb2.TYPE_UINT64: ("UINT64", np.uint64),
    model_config_pb2.TYPE_FP16: ("FP16", np.float16),
    model_config_pb2.TYPE_FP32: ("FP32", np.float32),
    model_config_pb2.TYPE_FP64: ("FP64", np.float64),
}


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str
    np_dtype: Any
    dims: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the gateway needs to know of one Triton model, read from its config."""

    name: str
    version: str
    decoupled: bool
    batched: bool
    inputs: dict[str, TensorSpec]
    outputs: frozenset[str]

    @classmethod
    def from_config(cls, cfg: model_config_pb2.ModelConfig, version: str) -> ModelInfo:
        inputs = {}
        for t in cfg.input:
            datatype, np_dtype = _DTYPES.get(t.data_type, ("BYTES", np.object_))
            inputs[t.name] = TensorSpec(t.name, datatype, np_dtype, tuple(t.dims))
        return cls(
            name=cfg.name,
            version=version,
            decoupled=cfg.model_transaction_policy.decoupled,
            batched=cfg.max_batch_size > 0,
            inputs=inputs,
            outputs=frozenset(o.name for o in cfg.output),
        )


def _shape(spec: TensorSpec, n: int, batched: bool) -> list[int]:
    """Shape for ``n`` elements: a batch of one row when batched, else the model's own dims."""
    if batched:
        return [1, n]
    if len(spec.dims) == 2 and spec.dims[0] in (1, -1):
        return [1, n]
    return [n]


def build_request(
    info: ModelInfo,
    values: dict[str, Any],
    *,
    request_id: str = "",
    final_response: bool = False,
    batch_rows: bool = False,
) -> service_pb2.ModelInferRequest:
    """A request with one tensor per entry of ``values`` that the model declares as an input.

    Each value is a scalar or a list; ``batch_rows`` sends a list as N rows of one element
    (a batch), for example several texts to embed.
    """
    req = service_pb2.ModelInferRequest(model_name=info.name, model_version=info.version, id=request_id)
    for name, value in values.items():
        spec = info.inputs.get(name)
        if spec is None:
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        if spec.datatype == "BYTES":
            arr = np.array([v if isinstance(v, bytes) else str(v).encode() for v in items], dtype=np.object_)
            raw = serialize_byte_tensor(arr).item()
        else:
            raw = np.asarray(items, dtype=spec.np_dtype).tobytes()
        if batch_rows and info.batched:
            shape = [len(items), 1]
        elif batch_rows:
            shape = [len(items)]
        else:
            shape = _shape(spec, len(items), info.batched)
        req.inputs.append(
            service_pb2.ModelInferRequest.InferInputTensor(name=name, datatype=spec.datatype, shape=shape)
        )
        req.raw_input_contents.append(raw)
    if final_response:
        req.parameters["triton_enable_empty_final_response"].bool_param = True
    return req


def is_final(resp: service_pb2.ModelInferResponse) -> bool:
    param = resp.parameters.get("triton_final_response")
    return bool(param is not None and param.bool_param)


def output_text(result: InferResult, name: str = "text_output") -> str:
    arr = result.as_numpy(name)
    if arr is None or arr.size == 0:
        return ""
    return "".join((v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v)) for v in arr.reshape(-1))


def output_int(result: InferResult, name: str) -> int | None:
    if name not in {o.name for o in result.get_response().outputs}:
        return None
    arr = result.as_numpy(name)
    if arr is None or arr.size == 0:
        return None
    return int(arr.reshape(-1).sum())
