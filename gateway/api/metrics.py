"""``GET /metrics``: the gateway's metrics in Prometheus text format (Casbin action ``read`` on ``route:/metrics``).

Like every route but the probes it needs a credential: a Prometheus server scrapes it with an API key of a role
that may read ``route:/metrics`` and nothing else (``role:metrics`` in the shipped policy). Triton's own metrics
are read first (within ``metrics.triton_timeout_s``) so that the answer carries current GPU and queue values. The
format follows the scraper's ``Accept`` header: Prometheus text 0.0.4, or OpenMetrics.
"""

from __future__ import annotations

from prometheus_client.exposition import choose_encoder
from starlette.requests import Request
from starlette.responses import Response

from gateway.state import Gateway


async def metrics(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    triton = gw.metrics.collector.triton
    if triton is not None:
        await triton.refresh()
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(gw.metrics.registry), headers={"content-type": content_type})
