"""Decision records on the request path: the sensitive attribute before the model is called, the decision after.

``expect`` runs before the request is redacted and admitted. For a model of an outcome audit
(``gateway.fairness.decisions``) it takes the sensitive attribute from the header or body field the policy
names: the field is removed from the body, so the model, the upstream and the PII screening never see it. A
missing or unknown value is refused with 400 when the attribute is ``required`` (no decision escapes its
audit); otherwise the request is served unrecorded and counted (``no_attribute``). The value is never echoed
in an error, a log line or a ledger entry.

``record`` runs once the answer is complete. It reads the decision from the answer the caller received
(``prediction``: 1, 0, or unreadable) and queues one row: request id, audit, model and version that answered,
decision, group, time and expiry. Never the prompt or the answer. One background task writes the queue in
batches (a transaction per batch, off the event loop). What a failed write does is the audit's
``on_record_error``:

- ``fail_closed`` (default): the request waits for its row to be durable (at most ``fairness.record_timeout_s``)
  and fails with 503 ``audit_unavailable`` if it is not: a final error event in a stream, whose text has
  already been sent, which the caller must then treat as failed.
- ``log``: the request does not wait. A failed batch (or a full queue) is logged, counted
  (``gateway_fairness_decisions_total{result="failed"}``) and recorded in the ledger
  (``fairness.unrecorded``: audit, model, count, request ids, reason), so the audit's gap is on the record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from backends.base import Generation
from gateway.audit import AuditSink
from gateway.errors import AuditUnavailable, GatewayError, InvalidRequest
from gateway.fairness.decisions import DecisionAudit, DecisionAuditFile
from gateway.fairness.store import DecisionRow, FairnessStore

if TYPE_CHECKING:
    from gateway.observability.metrics import Metrics

log = logging.getLogger(__name__)

BATCH = 256
"""Rows written in one transaction at most."""


@dataclass(frozen=True, slots=True)
class Pending:
    """A request to a decision model that will be recorded when its answer is complete."""

    audit: DecisionAudit
    group: str


def take(body: dict[str, Any], path: str) -> tuple[object | None, dict[str, Any]]:
    """(the value at dotted ``path`` or None, a copy of ``body`` without it); an object left empty goes too."""
    head, _, rest = path.partition(".")
    if head not in body:
        return None, body
    out = dict(body)
    if not rest:
        return out.pop(head), out
    child = body[head]
    if not isinstance(child, dict):
        return None, body
    value, left = take(child, rest)
    if left:
        out[head] = left
    else:
        del out[head]
    return value, out


class DecisionRecorder:
    def __init__(self, store: FairnessStore, audits: Callable[[], tuple[DecisionAuditFile, ...]], ledger: AuditSink,
                 metrics: Metrics, *, queue: int, timeout_s: float) -> None:  # fmt: skip
        self._store = store
        self._audits = audits
        self._ledger = ledger
        self._metrics = metrics
        self._timeout_s = timeout_s
        self._queue: asyncio.Queue[tuple[DecisionRow, asyncio.Future[bool] | None]] = asyncio.Queue(queue)
        self._indexed: tuple[DecisionAuditFile, ...] | None = None
        self._by_model: dict[str, DecisionAudit] = {}
        self._task: asyncio.Task[None] | None = None

    def audit_for(self, model: str) -> DecisionAudit | None:
        """The outcome audit that records ``model``'s decisions, if any (policy reloads are picked up)."""
        files = self._audits()
        if files is not self._indexed:
            self._by_model = {m: f.audit for f in files for m in f.audit.models}
            self._indexed = files
        return self._by_model.get(model)

    def expect(self, model: str, headers: Mapping[str, str], gen: Generation) -> tuple[Generation, Pending | None]:
        """The generation to send (the attribute's body field removed) and the pending record, if ``model`` is a
        decision model. InvalidRequest (400) when a required attribute is missing or not an allowed group."""
        audit = self.audit_for(model)
        if audit is None:
            return gen, None
        attr = audit.attribute
        value: object | None
        if attr.header is not None:
            value, where = headers.get(attr.header), f"header {attr.header}"
        else:
            assert attr.field is not None
            value, passthrough = take(gen.passthrough, attr.field)
            gen, where = replace(gen, passthrough=passthrough), f"body field {attr.field}"
        if isinstance(value, str) and value in attr.groups:
            return gen, Pending(audit, value)
        if attr.required:
            what = "is missing" if value is None else "is not one of the groups the policy allows"
            code = "audit_attribute_missing" if value is None else "audit_attribute_invalid"
            raise InvalidRequest(f"model {model!r} is audited for fairness ({audit.name}): requests to it must give "
                                 f"the {attr.name} in the {where}, one of {', '.join(attr.groups)}; it {what}",
                                 param=attr.header or attr.field, code=code)  # fmt: skip
        self._metrics.decision(model, "no_attribute")
        return gen, None

    async def record(self, pending: Pending, request_id: str, model: str, version: str, answer: str) -> None:
        """Record the decision in ``answer`` (by ``model`` at ``version``); see the module docstring for failures."""
        audit = pending.audit
        now = time.time()
        row = DecisionRow(request_id, audit.name, model, version, audit.prediction.read(answer).outcome, pending.group,
                          now, now + audit.retention_days * 86400)  # fmt: skip
        if audit.on_record_error == "log":
            self._put(row, None)
            return
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        ok = False
        if self._put(row, done):
            try:
                ok = await asyncio.wait_for(asyncio.shield(done), self._timeout_s)
            except TimeoutError:
                log.error("decision %s of %s not durable within %.1f s", request_id, model, self._timeout_s)
        if not ok:
            raise AuditUnavailable(f"the decision could not be recorded for the fairness audit {audit.name!r}; "
                                   "the answer is withheld (fail closed)")  # fmt: skip

    def _put(self, row: DecisionRow, done: asyncio.Future[bool] | None) -> bool:
        try:
            self._queue.put_nowait((row, done))
            return True
        except asyncio.QueueFull:
            self._failed([row], "the record queue is full")
            return False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="fairness-decision-writer")

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            rows = [row for row, _ in batch]
            try:
                await asyncio.to_thread(self._store.add_decisions, rows)
                ok = True
            except Exception as exc:  # the store is down: the rows are lost, which is said and counted below
                log.error("%d decision records could not be written: %r", len(rows), exc)
                self._failed(rows, f"the store failed ({type(exc).__name__})")
                ok = False
            for row, done in batch:
                if ok:
                    self._metrics.decision(row.model, "recorded")
                if done is not None and not done.done():
                    done.set_result(ok)
                self._queue.task_done()

    def _failed(self, rows: list[DecisionRow], reason: str) -> None:
        """Count unrecorded decisions and put the gap on the record, per audit and model."""
        groups: dict[tuple[str, str, str], list[str]] = {}
        for row in rows:
            self._metrics.decision(row.model, "failed")
            groups.setdefault((row.audit, row.model, row.version), []).append(row.request_id)
        for (audit, model, version), ids in groups.items():
            data = {"audit": audit, "model": model, "version": version or None, "decisions": len(ids),
                    "request_ids": ids, "reason": reason}  # fmt: skip
            try:
                self._ledger.record("fairness.unrecorded", "gateway", data)
            except GatewayError as exc:
                log.error("fairness.unrecorded for %s could not be recorded: %s", model, exc.message)

    async def aclose(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (at most ``timeout_s``), then stop the writer."""
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self._queue.join(), timeout_s)
        except TimeoutError:
            log.error("%d decision records not written at shutdown", self._queue.qsize())
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        left = []
        while not self._queue.empty():
            row, done = self._queue.get_nowait()
            left.append(row)
            if done is not None and not done.done():
                done.set_result(False)
        if left:
            self._failed(left, "the gateway stopped before writing them")
