"""Policy changes told to other replicas over the machine's real Redis; each replica re-checks its own files."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway.authz.propagate import PolicyChannel
from gateway.authz.store import PolicyStore
from tests.conftest import wait_for

POLICIES = Path(__file__).resolve().parents[2] / "policies"
REDIS = "redis://127.0.0.1:6379/0"


class Events:
    """An AuditSink that keeps what it is given."""

    def __init__(self) -> None:
        self.kinds: list[tuple[str, str]] = []

    def record(self, kind: str, actor: str, data: dict[str, Any]) -> None:
        self.kinds.append((kind, actor))

    async def commit(self, kind: str, actor: str, data: dict[str, Any]) -> int:
        self.record(kind, actor, data)
        return len(self.kinds)


@pytest.fixture
async def two_replicas(tmp_path: Path) -> AsyncIterator[tuple[PolicyStore, PolicyStore, Path, str]]:
    """Two stores on one folder (a shared volume, watch off) whose channels run, on a unique prefix."""
    folder = tmp_path / "policies"
    shutil.copytree(POLICIES, folder)
    prefix = f"test:{uuid.uuid4().hex}:"
    stores = [PolicyStore(folder, Events()) for _ in range(2)]  # type: ignore[arg-type]
    channels = [PolicyChannel(Redis.from_url(REDIS), prefix, s) for s in stores]
    tasks = [asyncio.create_task(c.run()) for c in channels]
    try:
        await wait_for(lambda: all(c.subscribed.is_set() for c in channels), 5, "both replicas subscribed")
        yield stores[0], stores[1], folder, prefix
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in channels:
            await c.aclose()


async def test_accepted_change_reaches_the_other_replica(two_replicas) -> None:
    """A change accepted on one replica is announced; the other reloads it from its own folder."""
    a, b, folder, _ = two_replicas
    with (folder / "policy.csv").open("a") as f:
        f.write("p, role:user, model:echo, infer, allow\n")
    assert a.reload()
    await wait_for(lambda: b.engine.version == 2, 5, "the other replica to reload")
    assert b.engine.files.digest == a.engine.files.digest
    assert ("policy.accepted", "replica") in b._audit.kinds  # type: ignore[attr-defined]
    await asyncio.sleep(0.2)  # room for an echo, which must not come: b does not announce what it heard
    assert a.engine.version == 2 and a.last_rejection is None


async def test_message_with_a_broken_folder_is_rejected(two_replicas) -> None:
    """A message never carries policy: with a broken edit on disk the reload is refused and the old policy serves."""
    a, b, folder, prefix = two_replicas
    before = b.engine.files.digest
    with (folder / "policy.csv").open("a") as f:
        f.write("p, role:user\n")
    async with Redis.from_url(REDIS) as r:
        await r.publish(f"{prefix}policy", json.dumps({"from": "elsewhere", "version": 9, "digest": "f" * 64}))
        await r.publish(f"{prefix}policy", b"not json")  # ignored, with a warning
    await wait_for(lambda: b.last_rejection is not None and a.last_rejection is not None, 5, "the rejections")
    assert "policy.csv" in b.last_rejection.reason and b.engine.version == 1 and b.engine.files.digest == before


async def test_subscriber_survives_redis_down(tmp_path: Path) -> None:
    """With Redis unreachable the subscriber keeps retrying with backoff and never raises."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = PolicyStore(POLICIES, Events())  # type: ignore[arg-type]
    channel = PolicyChannel(Redis.from_url(f"redis://127.0.0.1:{port}/0"), "test:", store, backoff_s=(0.01, 0.05))
    task = asyncio.create_task(channel.run())
    await asyncio.sleep(0.3)
    assert not task.done() and not channel.subscribed.is_set()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await channel.aclose()


async def test_subscriber_reconnects_and_catches_up(tmp_path: Path) -> None:
    """When Redis drops the subscription, the subscriber subscribes again and reloads what it may have missed."""
    folder = tmp_path / "policies"
    shutil.copytree(POLICIES, folder)
    name = f"test-{uuid.uuid4().hex}"
    store = PolicyStore(folder, Events())  # type: ignore[arg-type]
    channel = PolicyChannel(Redis.from_url(REDIS, client_name=name), f"test:{name}:", store, backoff_s=(0.01, 0.05))
    task = asyncio.create_task(channel.run())
    try:
        await wait_for(channel.subscribed.is_set, 5, "subscribed")
        with (folder / "policy.csv").open("a") as f:  # a change whose message this replica will miss
            f.write("p, role:user, model:echo, infer, allow\n")
        async with Redis.from_url(REDIS) as r:
            clients = await r.client_list(_type="pubsub")
            for c in clients:
                if c["name"] == name:
                    await r.client_kill_filter(_id=c["id"])
        await wait_for(lambda: store.engine.version == 2, 5, "the reload after subscribing again")
        assert channel.subscribed.is_set() and not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await channel.aclose()
