"""A local anvil node: the embedded chain for development and the ledger tests.

anvil comes from npm (``@foundry-rs/anvil``, pinned in ``ledger/anchor/js``): the package's
platform dependency ships the binary itself. The node listens on loopback only, and with a state
file it reloads its chain on restart. It dumps state every ``state_interval_s`` seconds and on
SIGTERM; a SIGKILL loses the blocks mined since the last dump, which ``ChainAnchor.latest`` and
``ChainAnchor.verify_anchor`` then report.
"""

from __future__ import annotations

import json
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from .errors import ChainError

JS_DIR = Path(__file__).resolve().parent / "js"
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
# No proxy: a stray HTTP_PROXY must not reroute calls to a loopback node.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def find_anvil(binary: str | Path | None = None) -> Path:
    """The anvil binary: ``binary`` if given, else the npm package's, else ``anvil`` on PATH."""
    if binary is not None:
        path = Path(binary)
        if not path.is_file():
            raise ChainError(f"anvil binary not found at {path}; install it with: npm ci --prefix ledger/anchor/js")
        return path
    arch = _ARCH.get(platform.machine().lower(), platform.machine().lower())
    bundled = JS_DIR / "node_modules" / "@foundry-rs" / f"anvil-{sys.platform}-{arch}" / "bin" / "anvil"
    if bundled.is_file():
        return bundled
    found = shutil.which("anvil")
    if found:
        return Path(found)
    raise ChainError(
        f"anvil binary not found (looked for {bundled} and for anvil on PATH); "
        "install it with: npm ci --prefix ledger/anchor/js"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Anvil:
    """One anvil process on 127.0.0.1; ``start()`` returns once it answers JSON-RPC."""

    def __init__(
        self,
        *,
        binary: str | Path | None = None,
        port: int | None = None,
        chain_id: int = 31337,
        state_path: Path | None = None,
        state_interval_s: int = 1,
    ) -> None:
        self.binary = find_anvil(binary)
        self.port = port if port is not None else free_port()
        self.chain_id = chain_id
        self.state_path = state_path
        self.state_interval_s = state_interval_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """The node's JSON-RPC endpoint."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The running process's id, or None."""
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout_s: float = 15.0) -> Anvil:
        """Start the node and wait (up to ``timeout_s``) until it answers ``eth_chainId``."""
        if self._proc is not None:
            raise ChainError(f"anvil is already running (pid {self._proc.pid})")
        args = [str(self.binary), "--host", "127.0.0.1", "--port", str(self.port)]
        args += ["--chain-id", str(self.chain_id), "--silent"]
        if self.state_path is not None:
            args += ["--state", str(self.state_path), "--state-interval", str(self.state_interval_s)]
        # Kept open while the node runs (closed by stop/kill), to report why a start failed.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        # Own session: a terminal's Ctrl-C reaches the test runner, which then stops the node.
        self._proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                answer = self.rpc("eth_chainId", timeout_s=0.5)
            except (OSError, ValueError, ChainError):
                answer = None
            if answer is not None:
                if int(answer, 16) != self.chain_id:
                    self.stop()
                    raise ChainError(f"port {self.port} answers with chain id {int(answer, 16)}: another node?")
                return self
            try:
                # Waits on the process, not a fixed sleep: returns early if anvil dies.
                code = self._proc.wait(timeout=0.02)
            except subprocess.TimeoutExpired:
                code = None
            if code is not None:
                message = self._stderr_tail()
                self._proc = None
                raise ChainError(f"anvil exited with status {code} while starting: {message}")
            if time.monotonic() > deadline:
                self.kill()
                raise ChainError(f"anvil did not answer on {self.url} within {timeout_s} s")

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM (anvil then writes its state file), SIGKILL if it has not exited in time."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._close_stderr()

    def kill(self) -> None:
        """SIGKILL, as in a crash: blocks mined since the last state dump are lost."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        self._close_stderr()

    def rpc(self, method: str, *params: Any, timeout_s: float = 10.0) -> Any:
        """One JSON-RPC call to this node; returns ``result`` or raises ``ChainError``."""
        return rpc(self.url, method, *params, timeout_s=timeout_s)

    def fund(self, address: str, wei: int = 10**21) -> None:
        """Set ``address``'s balance (``anvil_setBalance``) so a fresh key can pay gas."""
        self.rpc("anvil_setBalance", address, hex(wei))

    def __enter__(self) -> Anvil:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        text = str(self._stderr.read()[-2000:].decode(errors="replace")).strip()
        self._close_stderr()
        return text or "(no output)"

    def _close_stderr(self) -> None:
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


def rpc(url: str, method: str, *params: Any, timeout_s: float = 10.0) -> Any:
    """One JSON-RPC call to the node at ``url`` (no proxy); returns ``result`` or raises ``ChainError``."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            answer = json.loads(response.read())
    except (OSError, ValueError) as exc:
        raise ChainError(f"{method} at {url} failed: {exc}") from None
    if "error" in answer:
        raise ChainError(f"{method} failed: {answer['error']}")
    return answer["result"]
