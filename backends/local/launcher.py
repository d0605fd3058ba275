"""Start and stop the embedded Triton server as a child process.

PyTriton's Python-backend stub links against the system's ``libpython``. On a pyenv (or any
non-system) Python that library is the wrong one and model loading fails with
``'_thread.RLock' object has no attribute '_recursion_count'``, so the child gets
``LD_LIBRARY_PATH`` pointing at this interpreter's own ``LIBDIR`` first.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterable
from dataclasses import dataclass

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

TOKEN_ENV = "GATEWAY_LOCAL_TRITON_TOKEN"


def free_port() -> int:
    """A TCP port on loopback that is free now (Triton cannot bind port 0 and report it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
    # One thread: llama.cpp and OpenMP runtimes are many times slower with two on two cores.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@dataclass
class LocalTriton:
    """A running ``python -m backends.local`` child."""

    process: subprocess.Popen[bytes]
    grpc_port: int
    http_port: int
    metrics_port: int
    admin_token: str
    """Token for Triton's restricted model-repository and admin APIs (PyTriton protects them)."""

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @classmethod
    def start(
        cls,
        *,
        models: Iterable[str],
        grpc_port: int = 0,
        http_port: int = 0,
        metrics_port: int = 0,
        env: dict[str, str] | None = None,
        log_level: str = "WARNING",
        log_file: os.PathLike[str] | str | None = None,
    ) -> LocalTriton:
        ports = [p or free_port() for p in (grpc_port, http_port, metrics_port)]
        cmd = [
            sys.executable, "-m", "backends.local",
            "--grpc-port", str(ports[0]), "--http-port", str(ports[1]), "--metrics-port", str(ports[2]),
            "--models", ",".join(models), "--log-level", log_level,
        ]  # fmt: skip
        if log_file is not None:
            cmd += ["--log-file", str(log_file)]
        token = secrets.token_urlsafe(32)
        child = child_env(dict(os.environ) if env is None else env)
        child[TOKEN_ENV] = token
        proc = subprocess.Popen(cmd, env=child)
        return cls(proc, ports[0], ports[1], ports[2], token)

    async def set_loaded(self, model: str, loaded: bool) -> None:
        """Load or unload ``model`` through Triton's model-repository API."""
        metadata = (("triton-grpc-protocol-triton-access-token", self.admin_token),)
        async with grpc.aio.insecure_channel(self.grpc_url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            if loaded:
                await stub.RepositoryModelLoad(
                    service_pb2.RepositoryModelLoadRequest(model_name=model), metadata=metadata
                )
            else:
                await stub.RepositoryModelUnload(
                    service_pb2.RepositoryModelUnloadRequest(model_name=model), metadata=metadata
                )

    async def wait_ready(self, models: Iterable[str], timeout_s: float) -> None:
        await wait_ready(self.process, self.grpc_url, models, timeout_s, "local Triton")

    def stop(self, timeout_s: float = 20.0) -> None:
        stop(self.process, timeout_s)


async def wait_ready(process: subprocess.Popen[bytes], grpc_url: str, models: Iterable[str], timeout_s: float,
                     what: str = "Triton") -> None:  # fmt: skip
    """Wait until the Triton server of ``process`` and ``models`` are ready; RuntimeError if it exits or at the
    deadline."""
    deadline = time.monotonic() + timeout_s
    names = list(models)
    async with grpc.aio.insecure_channel(grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{what} exited with status {process.returncode}")
            try:
                if (await stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=2)).ready and all(
                    [(await stub.ModelReady(service_pb2.ModelReadyRequest(name=n), timeout=2)).ready for n in names]
                ):
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready after {timeout_s:.0f} s")
            await asyncio.sleep(0.2)


def stop(process: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout_s``."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


MODEL_SETS = {
    "demo": ("smollm2-135m-instruct", "e5-small"),
    "test": ("echo", "counter", "counter-spare", "broken", "vllm-echo", "biased-screener"),
}
