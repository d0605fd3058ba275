"""Run one gateway in front of the bench upstream, in its own process, for ``bench_overhead``.

    python -m benches._gateway_proc --upstream-port P [--port Q] [--tls] [--state-dir DIR]

The listening socket is bound here, before uvicorn starts, so ``--port 0`` works and the parent
learns the port race-free from the line ``PORT <n>`` on stdout. Connections made before uvicorn
is serving wait in the listen backlog. Without ``--state-dir`` a temporary one is used (and
removed at exit); with ``--tls`` the gateway makes its local CA there, at ``tls/ca.pem``.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

from gateway.identity.apikeys import APIKeyStore
from gateway.server import configure_logging, uvicorn_server
from gateway.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def bench_policy(state_dir: Path) -> Path:
    """The shipped policy, plus a rule for the ``bench`` model and rate limits that never bind."""
    folder = state_dir / "policies"
    shutil.copytree(ROOT / "policies", folder, dirs_exist_ok=True)
    with (folder / "policy.csv").open("a") as f:
        f.write("p, role:service, model:bench, infer, allow\n")
    limits = (folder / "limits.yaml").read_text().replace("requests_per_minute: 1200", "requests_per_minute: 100000000")
    (folder / "limits.yaml").write_text(limits.replace("tokens_per_minute: 1200000", "tokens_per_minute: 100000000000"))
    return folder


def settings_for(upstream_port: int, port: int, state_dir: Path, *, tls: bool) -> Settings:
    """Gateway settings with one route, ``bench``, to the upstream on ``upstream_port``."""
    return Settings.load(
        None,
        state_dir=state_dir,
        policy={"dir": bench_policy(state_dir), "watch": False},
        local_triton={"enabled": False},
        tls={"enabled": tls},
        backends={"up": {"kind": "openai", "base_url": f"http://127.0.0.1:{upstream_port}/v1"}},
        models=[{"name": "bench", "backend": "up"}],
        server={"host": "127.0.0.1", "port": port},
        # The ledger writes every request (group commit, fsync) as in production; anchoring is a
        # background task every few seconds and needs a chain node, which this bench does not run.
        ledger={"chain": {"enabled": False}},
    )


def _run(upstream_port: int, port: int, state_dir: Path, tls: bool) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    bound = sock.getsockname()[1]
    settings = settings_for(upstream_port, bound, state_dir, tls=tls)
    store = APIKeyStore(settings.api_keys_db)
    (state_dir / "bench.key").write_text(store.create("bench", ["service"])[1])
    store.close()
    server = uvicorn_server(settings)
    print(f"PORT {bound}", flush=True)
    server.run(sockets=[sock])
    return 0 if server.started else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benches._gateway_proc", description=__doc__.split("\n")[0])
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed as 'PORT <n>')")
    parser.add_argument("--tls", action="store_true", help="terminate TLS with the gateway's local CA")
    parser.add_argument("--state-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    configure_logging()
    # uvicorn shuts down on SIGTERM and then raises it again with the previous handler in place:
    # make that handler an exit, so the temporary state_dir below is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.state_dir is not None:
        return _run(args.upstream_port, args.port, args.state_dir, args.tls)
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        return _run(args.upstream_port, args.port, Path(tmp), args.tls)


if __name__ == "__main__":
    sys.exit(main())
