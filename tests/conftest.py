"""Shared fixtures: one real Triton server per session, gateways in-process and over real TLS."""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from backends.local.launcher import MODEL_SETS, LocalTriton
from gateway import app as _app
from gateway.identity.apikeys import APIKeyStore
from gateway.server import uvicorn_server
from gateway.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"

TEST_MODELS: list[dict[str, Any]] = [
    {"name": "echo", "backend": "triton"},
    {"name": "counter", "backend": "triton"},
    {"name": "counter-spare", "backend": "triton", "fallback": "counter"},
    {"name": "broken", "backend": "triton", "fallback": "counter"},
    {"name": "broken-alone", "backend": "triton", "model": "broken"},
    {"name": "vllm-echo", "backend": "triton", "interface": "vllm"},
    {"name": "smollm2-135m-instruct", "backend": "triton"},
    {"name": "e5-small", "backend": "triton", "kind": "embedding"},
    {"name": "echo-v1", "backend": "triton", "model": "echo", "version": "1"},
    {"name": "echo-v7", "backend": "triton", "model": "echo", "version": "7"},
    {"name": "gone", "backend": "nowhere", "model": "echo", "fallback": "echo"},
    {"name": "gone-alone", "backend": "nowhere", "model": "echo"},
    {"name": "gone-to-vllm", "backend": "nowhere", "model": "echo", "fallback": "vllm-echo"},
    {"name": "biased-screener", "backend": "triton", "version": "1"},
]


_SHARED: dict[str, Any] = {}


@pytest.fixture(scope="session", autouse=True)
async def shared_pii_analyzer() -> AsyncIterator[Any]:
    """One real PII analyzer (Presidio in a worker process, ``full`` profile) for every in-process app."""
    from gateway.pii.pool import AnalyzerPool

    pool = AnalyzerPool("full", workers=1)
    await pool.start()
    _SHARED["pii"] = pool
    try:
        yield pool
    finally:
        _SHARED.clear()
        await pool.aclose()


def create_app(settings: Settings, **kwargs: Any) -> Starlette:
    """``gateway.app.create_app`` sharing the session's PII analyzer (apps in this event loop only)."""
    kwargs.setdefault("analyzer", _SHARED.get("pii"))
    return _app.create_app(settings, **kwargs)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh database on the machine's real PostgreSQL server, dropped after the session."""
    from benches.bench_ledger import PG_ADMIN, postgres_db

    with postgres_db(PG_ADMIN, "gateway_test") as url:
        yield url


@pytest.fixture(scope="session")
async def triton(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalTriton]:
    """The real local Triton server with the demo and test models, started once per session."""
    log = tmp_path_factory.mktemp("triton") / "triton.log"
    server = LocalTriton.start(models=["demo", "test"], log_file=log)
    try:
        await server.wait_ready(MODEL_SETS["demo"] + MODEL_SETS["test"], timeout_s=300)
        yield server
    finally:
        server.stop()


def make_settings(triton: LocalTriton, tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for a gateway in front of the session's Triton (and an unreachable one)."""
    values: dict[str, Any] = {
        "state_dir": tmp_path,
        "local_triton": {"enabled": False},
        "backends": {
            "triton": {"kind": "triton", "url": triton.grpc_url, "timeout_s": 60},
            "nowhere": {"kind": "triton", "url": "127.0.0.1:9", "connect_timeout_s": 1, "timeout_s": 2},
        },
        "models": TEST_MODELS,
        "server": {"host": "127.0.0.1", "port": 0},
        "policy": {"dir": POLICIES, "watch": False},
        "ledger": {"chain": {"enabled": False}},  # the chain is tested in tests/ledger, with the session's anvil
        "pii": {"workers": 1},  # live servers (own event loop) start their own analyzer: one process each
    }
    values.update(overrides)
    return Settings.load(None, **values)


def new_key(settings: Settings, *roles: str, owner: str = "tests") -> str:
    """A fresh API key with ``roles`` in the key store of ``settings``."""
    store = APIKeyStore(settings.api_keys_db)
    try:
        return store.create(owner, list(roles or ("admin",)))[1]
    finally:
        store.close()


@pytest.fixture
async def settings(triton: LocalTriton, tmp_path: Path) -> Settings:
    return make_settings(triton, tmp_path)


@asynccontextmanager
async def in_process(app: Starlette, key: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client calling ``app`` in-process (with ``key`` as its bearer), lifespan entered."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", headers=headers) as client:
            yield client


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client holding an admin API key."""
    async with in_process(create_app(settings), new_key(settings, "admin")) as c:
        yield c


class LiveServer:
    """A real uvicorn gateway on a loopback port, in a thread with its own event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.api_key = new_key(settings, "admin")
        self.server: uvicorn.Server = uvicorn_server(settings)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def app(self) -> Starlette:
        app: Starlette = self.server.config.loaded_app
        while not isinstance(app, Starlette):  # unwrap uvicorn's middleware
            app = app.app
        return app

    @property
    def port(self) -> int:
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        scheme = "https" if self.settings.tls.enabled else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.settings.state_dir / "tls" / "ca.pem"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        """An httpx client trusting this server's CA, for its URL, with an admin key unless ``key``."""
        headers = {"authorization": f"Bearer {key or self.api_key}"}
        return httpx.AsyncClient(verify=self.ssl_context(), base_url=self.url, headers=headers, **kwargs)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("gateway did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def live(triton: LocalTriton, tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Factory: ``live(**settings_overrides)`` starts a real TLS gateway; all are stopped after the test."""
    servers: list[LiveServer] = []

    def start(**overrides: Any) -> LiveServer:
        server = LiveServer(make_settings(triton, tmp_path, **overrides)).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__()


async def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Wait on a condition with a deadline (never a bare sleep to synchronize)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)
