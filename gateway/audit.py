"""The audit path: every security decision and every request becomes a ledger entry.

``AuditSink`` is the small interface the rest of the gateway sees. ``AuditTrail`` implements it
over the tamper-evident ledger (``ledger/``): ``record`` queues an entry for the next group
commit, ``commit`` waits until the entry is durable. A request reaches a backend only after its
admission entry is durable; if the ledger cannot write, the request is refused with 503.

Entries carry who, what and why, never credentials, prompts or PII values: bodies are kept as
keyed HMAC digests only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from gateway.errors import AuditUnavailable, InternalError
from gateway.observability.tracing import span
from gateway.settings import Settings
from ledger.anchorer import Anchorer
from ledger.digest import BodyDigester, load_or_create_key
from ledger.entry import EntryError
from ledger.log import Ledger, LedgerConfig, LedgerUnavailable
from ledger.proof import build_proof

log = logging.getLogger(__name__)


class AuditSink(Protocol):
    def record(self, kind: str, actor: str, data: dict[str, Any]) -> None:
        """Queue an event; durable at the next group commit. Never blocks; raises AuditUnavailable if full."""
        ...

    async def commit(self, kind: str, actor: str, data: dict[str, Any]) -> int:
        """Append an event and wait until it is durable; its seq. Raises AuditUnavailable (fail closed)."""
        ...


def ledger_config(settings: Settings) -> LedgerConfig:
    """The ledger's configuration from the gateway's settings."""
    s = settings.ledger
    return LedgerConfig(
        store_url=settings.ledger_store(),
        origin=s.origin,
        signing_key=s.signing_key or settings.ledger_dir() / "checkpoint.key",
        checkpoint_every=s.checkpoint_every,
        checkpoint_interval_s=s.checkpoint_interval_s,
    )


class AuditTrail:
    """The gateway's ``AuditSink``: the ledger, the body digester and the background anchorer."""

    def __init__(self, settings: Settings, ledger: Ledger, anchorer: Anchorer | None = None) -> None:
        self.settings = settings
        self.ledger = ledger
        self.anchorer = anchorer
        key_path = settings.ledger.body_key or settings.ledger_dir() / "body-hmac.key"
        self.digester = BodyDigester(load_or_create_key(key_path))
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.observe: Callable[[str, str, dict[str, Any], float | None], None] | None = None
        """Told of every entry appended (kind, actor, data, seconds waited until durable): the metrics."""

    @classmethod
    async def open(cls, settings: Settings, anchorer_factory: Any = None) -> AuditTrail:
        """Open the ledger (rebuilding its tree) and start anchoring when a chain is configured."""
        ledger = Ledger(ledger_config(settings))
        await asyncio.to_thread(ledger.start)
        anchorer = None
        try:
            if anchorer_factory is not None:
                anchorer = await asyncio.to_thread(anchorer_factory, settings)
            trail = cls(settings, ledger, anchorer)
        except BaseException:
            await ledger.aclose()
            raise
        if anchorer is not None:
            trail._task = asyncio.create_task(anchorer.run(trail._stop), name="ledger-anchorer")
        return trail

    async def aclose(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        await self.ledger.aclose()
        if self.anchorer is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.anchorer.store.close)

    def record(self, kind: str, actor: str, data: dict[str, Any]) -> None:
        try:
            self.ledger.record(kind, actor, data)
            if self.observe is not None:
                self.observe(kind, actor, data, None)
        except LedgerUnavailable as exc:
            raise AuditUnavailable(f"the audit ledger cannot record: {exc}") from None
        except EntryError:
            log.exception("an audit event of kind %s cannot be encoded", kind)
            raise InternalError("internal error: an audit event could not be recorded") from None

    async def commit(self, kind: str, actor: str, data: dict[str, Any]) -> int:
        with span("gateway.ledger.commit", {"gateway.ledger.kind": kind}) as s:  # the wait for the group commit
            try:
                started = time.perf_counter()
                seq = await self.ledger.commit(kind, actor, data)
                if self.observe is not None:
                    self.observe(kind, actor, data, time.perf_counter() - started)
                s.set_attribute("gateway.ledger.seq", seq)
                return seq
            except LedgerUnavailable as exc:
                raise AuditUnavailable(f"the audit ledger cannot record: {exc}") from None
            except EntryError:
                log.exception("an audit event of kind %s cannot be encoded", kind)
                raise InternalError("internal error: an audit event could not be recorded") from None

    def digest(self, body: bytes) -> str:
        return self.digester.digest(body)

    def status(self) -> dict[str, Any]:
        """For ``/readyz``, which anyone can read: whether the ledger writes and anchoring works, and how long
        anchoring lags. No sizes: they count the traffic exactly (``/metrics`` has them, for its role)."""
        s = self.ledger.status()
        out: dict[str, Any] = {"ok": s.ok}
        if s.error:
            out["error"] = s.error
        if self.anchorer is not None:
            a = self.anchorer.status()
            out["anchoring"] = {"ok": a.error is None, "error": a.error, "lag_s": round(a.lag_s, 1)}
        return out

    async def verify(self) -> dict[str, Any]:
        """Verify this replica's log now, as ``gateway ledger verify`` does (every hash, link, Merkle root and
        checkpoint signature, and the anchors on the chain when the anchorer is connected); the report, with
        ``checked_at``. Reads its own store connection in a worker thread."""

        def run() -> dict[str, Any]:
            from ledger.store import open_store
            from ledger.verifier import verify_log

            chain = self.anchorer.chain if self.anchorer is not None else None
            store = open_store(self.settings.ledger_store())
            try:
                return verify_log(store, self.ledger.origin, self.ledger.verifier_key, chain=chain).to_dict()
            finally:
                store.close()

        started = time.time()
        report = await asyncio.to_thread(run)
        return report | {"checked_at": started, "took_s": round(time.time() - started, 3)}

    async def proof(self, seq: int) -> dict[str, Any]:
        """The proof bundle of entry ``seq`` (raises ``ledger.proof.ProofUnavailable``)."""

        def build() -> dict[str, Any]:
            from ledger.store import open_store

            store = open_store(self.settings.ledger_store())
            try:
                return build_proof(store, self.ledger.origin, seq, self.ledger.verifier_key, self.ledger)
            finally:
                store.close()

        return await asyncio.to_thread(build)
