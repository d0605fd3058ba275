"""The ``tritonserver`` binary bundled in the nvidia-pytriton wheel, run over a file model repository.

PyTriton serves one version of each model name, so tests that need two live versions of one model (a
version switch) run the raw server instead, with Python-backend models written to disk. The environment is
the one PyTriton itself gives the server, and each part matters:

- the Python-backend stub for this interpreter's version is copied into a private backend directory
  (``backends/python/triton_python_backend_stub``), as PyTriton does: the wheel ships it apart;
- ``PATH`` starts with this interpreter's ``bin`` directory: the stub's embedded Python takes its
  ``site-packages`` from the ``python`` it finds there. With the pyenv base interpreter first instead, the
  models get numpy 2 and the stub dies on the first BYTES input (``unpack_from requires a buffer of at least
  50529031 bytes``); with Debian's, the models cannot import numpy at all;
- ``LD_LIBRARY_PATH`` holds this interpreter's ``LIBDIR`` (see ``backends.local.launcher``) and the wheel's
  ``nvidia_pytriton.libs`` (libcudart and the rest, which the stub needs even on a CPU).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from backends.local import launcher
from backends.local.launcher import free_port

_SITE = Path(sysconfig.get_paths()["purelib"])
WHEEL = _SITE / "pytriton" / "tritonserver"
BINARY = WHEEL / "bin" / "tritonserver"
STUB = WHEEL / "python_backend_stubs" / f"{sys.version_info[0]}.{sys.version_info[1]}" / "triton_python_backend_stub"
LIBS = _SITE / "nvidia_pytriton.libs"

MISSING = next((f"{p} is missing (nvidia-pytriton: scripts/bootstrap)" for p in (BINARY, STUB) if not p.exists()), None)
"""Why the server cannot run here, or None."""

_CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: 0
version_policy: {{ specific: {{ versions: [{versions}] }} }}
input [
  {{ name: "text_input", data_type: TYPE_STRING, dims: [1] }},
  {{ name: "max_tokens", data_type: TYPE_INT32, dims: [1], optional: true }}
]
output [
  {{ name: "text_output", data_type: TYPE_STRING, dims: [-1] }},
  {{ name: "num_input_tokens", data_type: TYPE_INT32, dims: [1] }},
  {{ name: "num_output_tokens", data_type: TYPE_INT32, dims: [1] }}
]
instance_group [{{ kind: KIND_CPU, count: 1 }}]
"""

_MODEL = '''\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Answers "v<version>: <prompt>", so that a caller sees which version served it."""

    def initialize(self, args):
        self.version = args["model_version"]

    def execute(self, requests):
        responses = []
        for request in requests:
            prompt = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy().reshape(-1)[0].decode()
            text = f"v{self.version}: {prompt}"
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("text_output", np.array([text.encode()], dtype=np.object_)),
                pb_utils.Tensor("num_input_tokens", np.array([len(prompt.split())], dtype=np.int32)),
                pb_utils.Tensor("num_output_tokens", np.array([len(text.split())], dtype=np.int32)),
            ]))
        return responses
'''


def write_versioned_model(repository: Path, name: str, versions: tuple[int, ...], loaded: tuple[int, ...]) -> None:
    """A Python-backend model with TensorRT-LLM's ``ensemble`` inputs, unary, in ``versions``; each answers
    with its own version. The configuration loads only ``loaded``: the others wait for a repository call."""
    root = repository / name
    for v in versions:
        (root / str(v)).mkdir(parents=True, exist_ok=True)
        (root / str(v) / "model.py").write_text(_MODEL)
    (root / "config.pbtxt").write_text(_CONFIG.format(name=name, versions=", ".join(map(str, loaded))))


def _env(backends: Path) -> dict[str, str]:
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR")
    env["LD_LIBRARY_PATH"] = os.pathsep.join(str(p) for p in (libdir, LIBS, env.get("LD_LIBRARY_PATH")) if p)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    return env


@dataclass
class RepositoryTriton:
    """A running ``tritonserver --model-control-mode=explicit`` over a file model repository."""

    process: subprocess.Popen[bytes]
    grpc_port: int

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @classmethod
    def start(cls, repository: Path, workdir: Path, models: tuple[str, ...], log_file: Path) -> RepositoryTriton:
        """Start the server with ``models`` loaded; ``workdir`` receives the backend directory."""
        if MISSING is not None:
            raise RuntimeError(MISSING)
        backends = workdir / "backends"
        shutil.copytree(WHEEL / "backends", backends, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(STUB, backends / "python" / "triton_python_backend_stub")
        grpc_port, http_port = free_port(), free_port()
        cmd = [
            str(BINARY), f"--model-repository={repository}", "--model-control-mode=explicit",
            *(f"--load-model={m}" for m in models),
            f"--backend-directory={backends}", f"--cache-directory={WHEEL / 'caches'}",
            # a prefix of its own: the session's PyTriton server may run beside it, sharing /dev/shm
            f"--backend-config=python,shm-region-prefix-name=gwtest{secrets.token_hex(4)}",
            "--grpc-address=127.0.0.1", f"--grpc-port={grpc_port}",
            "--http-address=127.0.0.1", f"--http-port={http_port}",
            "--allow-metrics=false", "--exit-timeout-secs=10", f"--log-file={log_file}",
        ]  # fmt: skip
        return cls(subprocess.Popen(cmd, env=_env(backends)), grpc_port)

    def wait_ready(self, models: tuple[str, ...], timeout_s: float) -> None:
        """Wait until the server and ``models`` are ready; raise RuntimeError at the deadline."""
        asyncio.run(launcher.wait_ready(self.process, self.grpc_url, models, timeout_s, "tritonserver"))

    def stop(self, timeout_s: float = 20.0) -> None:
        launcher.stop(self.process, timeout_s)
