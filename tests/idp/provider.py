"""Start the test OpenID Connect provider (``server.mjs``, panva's oidc-provider) for as long as a test needs it.

The provider binds port 0 itself and reports the issuer it then has, so no free port is guessed and raced for.
Its sign-in page has a ``login`` and a ``password`` field (any password) and a "Sign-in" button; a login not in
``accounts`` is sent back to the client with ``error=access_denied``. With ``consent="prompt"`` a page with a
"Continue" button follows; with ``"auto"`` (the default) consent is granted without a page.
"""

from __future__ import annotations

import json
import selectors
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

HERE = Path(__file__).resolve().parent
READY_TIMEOUT_S = 30.0


class IdPError(RuntimeError):
    """The provider could not be started; the message carries its stderr."""


@dataclass(frozen=True, slots=True)
class IdP:
    """A running provider: where a client finds it."""

    issuer: str

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/jwks"


def _stderr(path: Path) -> str:
    text = path.read_text(errors="replace").strip() if path.exists() else ""
    return f"\n--- provider stderr ---\n{text}" if text else " (no stderr)"


def _wait_ready(proc: subprocess.Popen[bytes], err_log: Path) -> str:
    """The issuer from the ``READY <issuer>`` line, or ``IdPError`` if the process dies or is too slow."""
    assert proc.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT_S
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise IdPError(f"the provider was not READY within {READY_TIMEOUT_S:.0f} s{_stderr(err_log)}")
            if sel.select(left):
                chunk = proc.stdout.read1(4096)
                if not chunk:
                    proc.wait(timeout=5)
                    raise IdPError(f"the provider exited with {proc.returncode} before READY{_stderr(err_log)}")
                buf += chunk
    line = buf.split(b"\n", 1)[0].decode().strip()
    if not line.startswith("READY "):
        raise IdPError(f"unexpected first line from the provider: {line!r}{_stderr(err_log)}")
    return line.removeprefix("READY ")


@contextmanager
def start_idp(
    tmp_path: Path,
    *,
    client_id: str,
    redirect_uris: Sequence[str],
    audience: str,
    accounts: Mapping[str, Sequence[str]],
    client_secret: str | None = None,
    consent: Literal["auto", "prompt"] = "auto",
    access_token_ttl: int = 3600,
) -> Iterator[IdP]:
    """Run the provider with one client and these accounts (login -> roles) until the block exits.

    ``client_secret=None`` registers a public client (PKCE only, no client authentication); otherwise the
    client authenticates with HTTP Basic. PKCE (S256) is required either way. Access tokens are RS256 JWTs
    with ``aud`` = ``audience`` and ``roles`` = the account's roles, issued without a ``resource`` parameter.
    """
    if not (HERE / "node_modules" / "oidc-provider").is_dir():
        raise IdPError(f"{HERE / 'node_modules'} is missing: run scripts/bootstrap (it runs npm ci in tests/idp)")
    node = shutil.which("node")
    if node is None:
        raise IdPError("node (Node.js 20+) is not on PATH: install it, then run scripts/bootstrap")
    client: dict[str, object] = {"client_id": client_id, "redirect_uris": list(redirect_uris)}
    if client_secret is not None:
        client["client_secret"] = client_secret
    config = {
        "port": 0,
        "client": client,
        "audience": audience,
        "accounts": {login: list(roles) for login, roles in accounts.items()},
        "consent": consent,
        "access_token_ttl": access_token_ttl,
    }
    config_path = tmp_path / "idp.json"
    config_path.write_text(json.dumps(config))
    err_log = tmp_path / "idp.stderr.log"
    with err_log.open("wb") as err:
        proc = subprocess.Popen(
            [node, str(HERE / "server.mjs"), str(config_path)],
            cwd=HERE,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    try:
        yield IdP(_wait_ready(proc, err_log))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
