"""Statistics releases for ``GET /admin/stats``: cache, budget, computation and ledger, in that order.

1. The same query from the same consumer in the same budget period gets the answer released before, from
   the cache, and spends nothing (averaging repeats cannot wash out the noise).
2. Otherwise the query's (epsilon, delta), fixed by the query and the privacy policy alone, is spent before
   anything runs. A spend that would overspend is refused (``BudgetExhausted``, 429, with what remains), spends
   nothing, and is a ``stats.refused`` ledger entry.
3. The facts catch up with the ledger, the release is computed in a worker thread, and a ``stats.released``
   ledger entry (consumer, query, mechanism, epsilon, delta, sensitivity, bounds; never a value) is durable
   before the answer is kept in the cache and returned.

A failure after the spend keeps the spend: the budget errs on the side of privacy.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, time
from typing import Any

import orjson

from gateway.audit import AuditSink
from gateway.db import Database, stats_url
from gateway.errors import BudgetExhausted
from gateway.identity.principal import Principal
from gateway.stats import compute
from gateway.stats.budget import BudgetStore, Refused, Usage
from gateway.stats.facts import SCHEMA, FactIndex
from gateway.stats.policy import Budget, PrivacyPolicy, period_end, period_of
from gateway.stats.query import StatsQuery

log = logging.getLogger(__name__)


def _usage(u: Usage) -> dict[str, float]:
    return {"epsilon": u.epsilon, "delta": u.delta}


class StatsService:
    def __init__(self, ledger_store: str, audit: AuditSink, policy: Callable[[], PrivacyPolicy],
                 public: Callable[[], compute.PublicKeys]) -> None:  # fmt: skip
        url = stats_url(ledger_store)
        self._budget = BudgetStore(url)
        self._db = Database(url, SCHEMA)
        self.index = FactIndex(self._db, ledger_store)
        self._audit = audit
        self._policy = policy
        self._public = public
        self._inflight: dict[tuple[str, str, str], tuple[asyncio.Lock, int]] = {}

    def close(self) -> None:
        with self.index.lock:
            self.index.close()
        self._budget.close()
        self._db.close()

    async def release(self, principal: Principal, roles: frozenset[str], params: Mapping[str, str],
                      now: datetime | None = None) -> dict[str, Any]:  # fmt: skip
        """The released answer to the query in ``params`` for ``principal`` (see the module docstring)."""
        policy = self._policy()
        now = now or datetime.now(UTC)
        query = StatsQuery.parse(params, policy, today=now.date())
        consumer, period = principal.subject, period_of(now.date(), policy.budget.period)
        limit = policy.limit(consumer, roles)
        key = f"{query.key}|{_digest(policy.bounds.model_dump(), policy.latency.model_dump())}"
        slot = (consumer, period, key)
        lock, users = self._inflight.get(slot, (asyncio.Lock(), 0))
        self._inflight[slot] = (lock, users + 1)
        try:
            async with lock:  # the same query at once: one spends, the others get its answer from the cache
                return await self._release(principal, query, policy, period, limit, key, now)
        finally:
            lock, users = self._inflight[slot]
            if users == 1:
                del self._inflight[slot]
            else:
                self._inflight[slot] = (lock, users - 1)

    async def _release(self, principal: Principal, query: StatsQuery, policy: PrivacyPolicy, period: str,
                       limit: Budget, key: str, now: datetime) -> dict[str, Any]:  # fmt: skip
        consumer = principal.subject
        resets = datetime.combine(period_end(now.date(), policy.budget.period), time(), UTC)
        budget: dict[str, Any] = {"consumer": consumer, "period": period, "limit": _usage(limit.units),
                                  "resets_at": resets.isoformat()}  # fmt: skip
        cached = await asyncio.to_thread(self._budget.cached, consumer, period, key)
        if cached is not None:
            left = await asyncio.to_thread(self._budget.remaining, consumer, period, limit.epsilon, limit.delta)
            return {**cached, "cached": True, "budget": {**budget, "spent_now": {"epsilon": 0.0, "delta": 0.0},
                                                         "remaining": _usage(left)}}  # fmt: skip
        plan = compute.plan(query, policy)
        spend = await asyncio.to_thread(self._budget.spend, consumer, period, plan.epsilon, plan.delta,
                                        limit.epsilon, limit.delta, key)  # fmt: skip
        if isinstance(spend, Refused):
            refused = {"query": query.describe(), "period": period, "requested": _usage(spend.requested),
                       "remaining": _usage(spend.remaining)}  # fmt: skip
            await self._audit.commit("stats.refused", consumer, refused)
            retry = (resets - now).total_seconds()
            raise BudgetExhausted(spend.message, remaining=_usage(spend.remaining), retry_after_s=retry)
        answer = await asyncio.to_thread(self._compute, query, policy)
        answer["released_at"] = now.isoformat(timespec="seconds")
        p = answer["privacy"]
        await self._audit.commit("stats.released", consumer, {
            "query": query.describe(), "period": period, "mechanism": p["mechanism"], "epsilon": p["epsilon"],
            "delta": p["delta"], "sensitivity": p["sensitivity"], "bounds": p["bounds"],
            "groups": len(answer["groups"]),
            "answer_sha256": hashlib.sha256(orjson.dumps(answer, option=orjson.OPT_SORT_KEYS)).hexdigest(),
        })  # fmt: skip
        stored = await asyncio.to_thread(self._budget.remember, consumer, period, key, answer)
        spent = {"spent_now": _usage(spend.spent), "remaining": _usage(spend.remaining)}
        return {**stored, "cached": stored != answer, "budget": {**budget, **spent}}

    def catch_up(self) -> int:
        """Index what the ledger holds beyond the cursor (the background task calls this)."""
        with self.index.lock:
            return self.index.catch_up()

    async def keep_up(self, interval_s: float, stop: asyncio.Event) -> None:
        """Catch up every ``interval_s`` until ``stop``; a failure is logged and retried at the next tick."""
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.catch_up)
            except Exception:  # the release path catches up (and fails loudly) on its own
                log.exception("statistics index: catching up with the ledger failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)

    def _compute(self, query: StatsQuery, policy: PrivacyPolicy) -> dict[str, Any]:
        with self.index.lock:  # one release at a time reads the columns while nothing refreshes them
            self.index.catch_up()
            return compute.release(query, policy, self.index, self._public())


def _digest(*parts: Any) -> str:
    """A short digest of the bounds in force: a query under other bounds is another release."""
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
