"""Run the embedded Triton server in the foreground: ``python -m backends.local --help``.

The gateway starts this as a child process (``backends.local.launcher``), so that llama.cpp and
Triton never share the gateway's event loop or its crash fate.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m backends.local")
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--models", default="demo", help="comma-separated model sets: demo, test")
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--log-file", default="", help="where Triton's own log goes (default: stderr)")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level, format="triton-local %(levelname)s %(name)s: %(message)s")
    # Imported late: pytriton is heavy and the --help above should not pay for it.
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    from backends.local import models

    sets = {s.strip() for s in args.models.split(",") if s.strip()}
    unknown = sets - {"demo", "test"}
    if unknown:
        parser.error(f"unknown model sets: {', '.join(sorted(unknown))}")
    parent = Path(tempfile.mkdtemp(prefix="gwt-", dir=os.environ.get("TMPDIR", "/tmp")))
    workspace = parent / "w"  # PyTriton creates it and removes it on exit
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        metrics_address="127.0.0.1",
        metrics_port=args.metrics_port,
        allow_gpu_metrics=False,
        exit_on_error=True,
        log_file=Path(args.log_file) if args.log_file else None,
    )
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as on Ctrl-C: unload, clean up
    # The launcher passes the token for the restricted APIs (model load/unload) to its child.
    security = TritonSecurityConfig(access_token=os.environ.get("GATEWAY_LOCAL_TRITON_TOKEN") or None)
    with Triton(config=config, workspace=workspace, security_config=security) as triton:
        if "demo" in sets:
            models.bind_demo(triton)
        if "test" in sets:
            models.bind_test(triton)
        with contextlib.suppress(KeyboardInterrupt):
            triton.serve()
    shutil.rmtree(parent, ignore_errors=True)


if __name__ == "__main__":
    main()
