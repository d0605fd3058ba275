"""``GET /admin/ledger/entries/{seq}/proof``: one entry with everything an auditor needs to check it.

The bundle holds the entry, its RFC 9162 inclusion proof, the signed checkpoint, the log's
verifier key and the anchor receipt; ``python -m ledger.verify`` checks it offline.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import InvalidRequest, NotFound, NotYetCheckpointed
from gateway.state import Gateway, json_response
from ledger.proof import ProofUnavailable


async def entry_proof(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    raw = request.path_params["seq"]
    if not raw.isdigit() or len(raw) > 18:
        raise InvalidRequest(f"entry number must be a non-negative integer, not {raw!r}", param="seq")
    try:
        bundle = await gw.audit.proof(int(raw))
    except ProofUnavailable as exc:
        if exc.missing:
            raise NotFound(str(exc), code="entry_not_found") from None
        interval = gw.settings.ledger.checkpoint_interval_s
        raise NotYetCheckpointed(f"{exc}; checkpoints are signed every {interval:g} s",
                                 headers={"Retry-After": str(max(1, round(interval)))}) from None  # fmt: skip
    return json_response(bundle)
