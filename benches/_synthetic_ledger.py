"""Synthetic gateway traffic written straight into a ledger store, as real, hash-chained entries.

The entries have the shapes the gateway writes (``gateway.security``, ``gateway.api.ticket``), with chosen
timestamps, so tests and the statistics bench can fill many days of a ledger in seconds.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

from ledger.entry import GENESIS, make_entry
from ledger.store import open_store

Event = tuple[datetime, str, str, dict[str, Any]]
"""(time, kind, actor, data)."""


def write(store_url: str, origin: str, events: Iterable[Event], chunk: int = 5000) -> int:
    """Append ``events`` to the log ``origin`` (after what it holds); returns the next seq."""
    store = open_store(store_url)
    try:
        head = store.head(origin)
        seq, prev = (0, GENESIS) if head is None else (head[0] + 1, head[1].hex())
        rows = []
        for at, kind, actor, data in events:
            ts = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            e = make_entry(log=origin, seq=seq, ts=ts, kind=kind, actor=actor, data=data, prev=prev)
            rows.append((seq, e.hash, e.body))
            seq, prev = seq + 1, e.hash.hex()
            if len(rows) >= chunk:
                store.append(origin, rows)
                rows = []
        if rows:
            store.append(origin, rows)
        return seq
    finally:
        store.close()


class Traffic:
    """Requests as the gateway records them; ``seq`` must follow the log the events go to."""

    def __init__(self, start_seq: int = 0) -> None:
        self.seq = start_seq

    def _next(self) -> int:
        self.seq += 1
        return self.seq - 1

    def request(self, at: datetime, subject: str, *, owner: str = "", roles: tuple[str, ...] = ("user",),
                model: str = "smollm2-135m-instruct", route: str = "/v1/chat/completions", outcome: str = "ok",
                status: int = 200, fallback: bool = False, prompt_tokens: int | None = 10,
                completion_tokens: int | None = 20, latency_ms: int = 100, pii_in: dict[str, int] | None = None,
                pii_out: dict[str, int] | None = None, decisions: bool = True) -> list[Event]:  # fmt: skip
        """authz.decision (route, model) unless not ``decisions``, request.admitted and request.completed."""
        decision = {"action": "infer", "allowed": True, "rule": "p", "policy_version": 1}
        if owner:
            decision["owner"] = owner
        events: list[Event] = []
        if decisions:
            events += [(at, "authz.decision", subject, {**decision, "object": f"route:{route}"}),
                       (at, "authz.decision", subject, {**decision, "object": f"model:{model}"})]  # fmt: skip
            self._next()
            self._next()
        admitted = self._next()
        rid = f"r{admitted}"
        data: dict[str, Any] = {"request_id": rid, "model": model, "roles": sorted(roles), "route": route}
        if pii_in:
            data["pii"] = pii_in
        events.append((at, "request.admitted", subject, data))
        done: dict[str, Any] = {"request_id": rid, "admitted_seq": admitted, "outcome": outcome, "status": status,
                                "latency_ms": latency_ms, "model": model, "fallback_used": fallback}  # fmt: skip
        if prompt_tokens is not None:
            done["prompt_tokens"] = prompt_tokens
        if completion_tokens is not None:
            done["completion_tokens"] = completion_tokens
        if pii_out:
            done["pii"] = pii_out
        self._next()
        events.append((at + timedelta(milliseconds=latency_ms), "request.completed", subject, done))
        return events

    def denial(self, at: datetime, subject: str, kind: str, data: dict[str, Any]) -> list[Event]:
        self._next()
        return [(at, kind, subject, data)]


def mixed(first_day: date, days: int, requests: int, callers: int, models: tuple[str, ...], seed: int = 7,
          start_seq: int = 0, decisions: bool = True) -> Iterator[Event]:  # fmt: skip
    """``requests`` requests from ``callers`` callers over ``days`` days: several models, routes, outcomes."""
    rnd = random.Random(seed)
    traffic = Traffic(start_seq)
    routes = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
    for i in range(requests):
        day = first_day + timedelta(days=i * days // requests)
        at = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(seconds=rnd.randrange(86_400))
        caller = rnd.randrange(callers)
        roll = rnd.random()
        yield from traffic.request(
            at, f"apikey:k{caller}", owner=f"owner{caller}",
            roles=("analyst", "user") if caller % 5 == 0 else ("user",),
            model=models[rnd.randrange(len(models))], route=routes[rnd.randrange(3)],
            outcome="error" if roll < 0.02 else "ok", status=502 if roll < 0.02 else 200, fallback=roll > 0.97,
            prompt_tokens=rnd.randrange(5, 2000), completion_tokens=rnd.randrange(1, 1000),
            latency_ms=int(rnd.lognormvariate(5.5, 0.6)),
            pii_in={"EMAIL_ADDRESS:replace": 1} if roll < 0.1 else None, decisions=decisions,
        )  # fmt: skip
