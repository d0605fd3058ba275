"""The container health check (Docker ``HEALTHCHECK``): ``GET /healthz`` on the gateway's own port.

Exits 0 when the gateway answers 200, else 1. It reads the same settings as ``gateway serve``
(``GATEWAY_CONFIG`` and the ``GATEWAY_*`` environment), so a changed port or ``tls.enabled:
false`` needs no second edit. Kubernetes does not use it: its probes are ``httpGet``.

The certificate is not verified: the check goes over loopback, where nobody can stand in for the
gateway, and the certificate may be an operator's for a public name that ``localhost`` does not
match. A gateway that demands client certificates (``tls.client_auth: required``) fails it.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request
from pathlib import Path

from gateway.settings import Settings

_WILDCARDS = {"0.0.0.0", "::", ""}


def url(settings: Settings) -> str:
    host = settings.server.host
    host = "127.0.0.1" if host in _WILDCARDS else host
    host = f"[{host}]" if ":" in host else host
    scheme = "https" if settings.tls.enabled else "http"
    return f"{scheme}://{host}:{settings.server.port}/healthz"


def main() -> int:
    config = os.environ.get("GATEWAY_CONFIG")
    settings = Settings.load(Path(config) if config else None)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    # No proxy: a stray HTTPS_PROXY must not send the check elsewhere.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(url(settings), timeout=4) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:  # URLError and HTTPError (a 503) are OSErrors
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
