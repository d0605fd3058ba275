"""The audit scheduler: runs each scheduled audit of the policy folder at its slots, on exactly one replica.

A task of the app's lifespan wakes every ``fairness.scheduler_interval_s``. For each probe set and outcome
audit with a ``schedule`` it asks the store to claim the slot now due (``FairnessStore.claim``): under the
audit's PostgreSQL advisory lock (SQLite: the file's write lock), in one transaction, the last claimed slot is
read and, if a newer one is due, replaced by it. Only the replica whose transaction moved the slot runs the
audit; every other replica, before or after it, reads a slot that is no longer due. A slot is claimed before
its audit runs, so a replica that dies during the audit does not hand it over: the slot is lost (its
``fairness.started`` entry has no ``fairness.audit``), and the next slot runs as usual. At most once per slot,
and exactly once while the claiming replica lives.

Audits run one after another, in this process: probe audits through the gateway's own router and ledger (a
running gateway owns its log), outcome audits from the store. Stopping the gateway cancels the audit in
progress (``fairness.aborted``). The same wake-up deletes decision records past their retention.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from gateway.authz.files import PolicyFiles
from gateway.fairness.probeset import Schedule
from gateway.fairness.store import FairnessStore

log = logging.getLogger(__name__)

PURGE_EVERY_S = 3600.0


class Scheduler:
    def __init__(self, store: FairnessStore, files: Callable[[], PolicyFiles], run: Callable[[str], Awaitable[object]],
                 *, replica: str, interval_s: float) -> None:  # fmt: skip
        self.store = store
        self.files = files
        self.run_audit = run
        self.replica = replica
        self.interval_s = interval_s
        self.ticks = 0
        """Wake-ups completed (tests wait on it)."""
        self._purged = 0.0

    def scheduled(self) -> list[tuple[str, Schedule]]:
        """(name, schedule) of every audit in the policy folder that has one."""
        files = self.files()
        out = [(e.probes.name, e.probes.schedule) for e in files.fairness if e.probes.schedule is not None]
        out += [(e.audit.name, e.audit.schedule) for e in files.outcome_audits if e.audit.schedule is not None]
        return out

    async def tick(self, now: datetime | None = None) -> list[str]:
        """Purge expired decisions (hourly), then claim and run every audit due at ``now``; the names run."""
        now = now or datetime.now(UTC)
        if time.monotonic() - self._purged >= PURGE_EVERY_S or not self._purged:
            self._purged = time.monotonic()
            try:
                gone = await asyncio.to_thread(self.store.purge, now.timestamp())
                if gone:
                    log.info("deleted %d decision records past their retention", gone)
            except Exception:  # the store is down: the next wake-up tries again
                log.exception("purging expired decision records failed")
                self._purged = 0.0
        ran = []
        for name, schedule in self.scheduled():
            try:
                slot = await asyncio.to_thread(self.store.claim, name, schedule, now, self.replica)
            except Exception:
                log.exception("fairness audit %s: claiming its slot failed", name)
                continue
            if slot is None:
                continue
            log.info("fairness audit %s: running the slot of %s", name, slot.isoformat(timespec="minutes"),
                     extra={"event": "fairness.scheduled", "audit": name})  # fmt: skip
            ran.append(name)
            try:
                await self.run_audit(name)
            except Exception:  # recorded as fairness.aborted by the runner; the other audits still run
                log.exception("fairness audit %s failed", name)
        self.ticks += 1
        return ran

    async def run(self, stop: asyncio.Event) -> None:
        """Wake every ``interval_s`` until ``stop`` is set."""
        while True:
            try:
                await asyncio.wait_for(stop.wait(), self.interval_s)
                return
            except TimeoutError:
                pass
            try:
                await self.tick()
            except Exception:  # a bug in one wake-up must not end scheduling for good
                log.exception("the fairness scheduler failed")
