"""Policy changes told to the other replicas over Redis pub/sub (a Casbin-style watcher).

When this replica accepts a policy change, it publishes the new digest on ``<prefix>policy``.
A replica that hears of a digest it does not serve calls ``PolicyStore.reload()``: it validates
and tests the files in its own folder, exactly as for a change it saw itself. The message is
only a nudge; its content is never trusted, so a forged or stale message can at most cause a
reload of the files already on disk.

The subscriber runs as one background task for the app's lifetime. If Redis drops, it logs,
waits (exponential backoff) and subscribes again, then reloads once in case it missed a message.
It never ends the app.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets

from redis.asyncio import Redis

from gateway.authz.engine import PolicyEngine
from gateway.authz.store import PolicyStore

log = logging.getLogger(__name__)

ACTOR = "replica"
"""The audit actor of a reload that another replica's message started."""


class PolicyChannel:
    """Publishes this replica's accepted policy changes and reloads on the others'. Owns ``client``."""

    def __init__(self, client: Redis, prefix: str, store: PolicyStore, *, timeout_s: float = 1.0,
                 backoff_s: tuple[float, float] = (0.1, 30.0)) -> None:  # fmt: skip
        self.channel = f"{prefix}policy"
        self.subscribed = asyncio.Event()
        """Set while subscribed (tests wait on it)."""
        self._client = client
        self._store = store
        self._timeout_s = timeout_s
        self._backoff_s = backoff_s
        self._id = secrets.token_hex(8)  # to skip our own messages
        self._hearing: str | None = None  # the digest of the message being handled
        self._publishing: set[asyncio.Task[None]] = set()
        store.listeners.append(self._accepted)

    def _accepted(self, engine: PolicyEngine) -> None:
        """PolicyStore listener: publish an accepted change, unless a message just told us of it."""
        if engine.files.digest == self._hearing:
            return
        try:
            task = asyncio.get_running_loop().create_task(self._publish(engine))
        except RuntimeError:  # no event loop: a reload outside the server, nobody to tell
            return
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _publish(self, engine: PolicyEngine) -> None:
        message = json.dumps({"from": self._id, "version": engine.version, "digest": engine.files.digest})
        try:
            await asyncio.wait_for(self._client.publish(self.channel, message), self._timeout_s)
        except Exception as exc:  # a lost nudge: the others still see the files change (watch)
            log.warning("policy version %d not announced to other replicas: %r", engine.version, exc)

    def _heard(self, data: bytes | str) -> None:
        try:
            message = json.loads(data)
            sender, digest = str(message["from"]), str(message["digest"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed message on %s", self.channel)
            return
        if sender == self._id or digest == self._store.engine.files.digest:
            return
        log.info("another replica accepted policy %s; reloading from %s", digest[:12], self._store.root)
        self._hearing = digest
        try:
            self._store.reload(ACTOR)  # validates and tests our own files; a bad folder keeps the policy
        finally:
            self._hearing = None

    async def run(self) -> None:
        """Subscribe and handle messages until cancelled; reconnect with backoff. Never raises otherwise."""
        delay, first = self._backoff_s[0], True
        while True:
            try:
                async with self._client.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    if not first:
                        self._store.reload(ACTOR)  # a change may have been announced while we were away
                    first, delay = False, self._backoff_s[0]
                    self.subscribed.set()
                    while True:
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                        if message is not None and message["type"] == "message":
                            self._heard(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down or anything else: this task must not end the app
                log.warning("policy channel %s lost (%r); subscribing again in %.1f s", self.channel, exc, delay)
            self.subscribed.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff_s[1])

    async def aclose(self) -> None:
        """Wait for announcements in flight, then close the client."""
        if self._publishing:
            await asyncio.gather(*self._publishing, return_exceptions=True)
        await self._client.aclose()
