"""Two gateway processes as replicas of one deployment, for real: one PostgreSQL database for their ledgers
and statistics, one Redis for rate limits and policy changes, one chain, one policy folder (a shared volume),
one API key store; load goes through both.

Shown here: policy changes reach both; each replica's log verifies and is anchored (each replica signs and
anchors with its own key and contract: the contract takes anchors from its owner only); rate limits hold across
the replicas (exactly: the limit is shared in Redis); a scheduled fairness audit runs on exactly one of them;
statistics see both replicas' traffic.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from click.testing import CliRunner

from backends.local.launcher import free_port
from benches.bench_ledger import PG_ADMIN, postgres_db
from gateway.cli import main
from gateway.fairness.store import FairnessStore
from ledger.anchor import Anvil
from ledger.store import open_store
from tests.conftest import POLICIES, TEST_MODELS
from tests.fairness.test_scheduler import PROBES
from tests.ledger.conftest import deploy_on, make_anchor_key

REDIS = "redis://127.0.0.1:6379/0"
PER_MINUTE = 12  # the limited role's requests per minute, across all replicas


class Replica:
    def __init__(self, name: str, config: Path, port: int, log: Path) -> None:
        self.name, self.config, self.port, self.log = name, config, port, log
        with log.open("wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(config)],
                                         stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"replica {self.name} not ready: {self.log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def deployment(triton: Any, tmp_path: Path, anchor_anvil: Anvil) -> Iterator[dict[str, Any]]:
    folder = tmp_path / "policies"  # the shared volume of policy files
    shutil.copytree(POLICIES, folder)
    with (folder / "policy.csv").open("a") as f:
        f.write(
            "p, role:user, model:echo*, infer, allow\n"
            "p, role:limited, route:/v1/chat/completions, infer, allow\np, role:limited, model:echo, infer, allow\n"
        )
    limits = yaml.safe_load((folder / "limits.yaml").read_text())  # roles only raise the default: lower it
    limits["default"]["rate"] = [{"model": "*", "requests_per_minute": PER_MINUTE}]
    limits["roles"]["user"] = {"rate": [{"model": "*", "requests_per_minute": 600}]}
    (folder / "limits.yaml").write_text(yaml.safe_dump(limits))
    (folder / "fairness" / "nightly_probes.yaml").write_text(yaml.safe_dump(PROBES))  # a scheduled probe audit
    keys_db = tmp_path / "apikeys.sqlite3"
    prefix = f"test-replicas:{uuid.uuid4().hex}:"
    with postgres_db(PG_ADMIN, "gateway_test_replicas") as store:
        fairness = FairnessStore(store)
        try:  # first seen two days ago: the daily probe audit is due as soon as the replicas start
            fairness.reschedule(PROBES["name"], datetime.now(UTC) - timedelta(days=2))
        finally:
            fairness.close()
        replicas = []
        try:
            for name in ("a", "b"):
                key = make_anchor_key(tmp_path, f"anchor-{name}")
                chain = deploy_on(anchor_anvil, key)
                port = free_port()
                config = tmp_path / f"{name}.yaml"
                config.write_text(yaml.safe_dump({
                    "state_dir": str(tmp_path / f"state-{name}"),
                    "server": {"host": "127.0.0.1", "port": port},
                    "tls": {"enabled": False},
                    "local_triton": {"enabled": False},
                    "backends": {"triton": {"kind": "triton", "url": triton.grpc_url}},
                    "models": [m for m in TEST_MODELS if m["backend"] == "triton" and m["name"] != "echo-v7"],
                    "auth": {"api_keys_db": str(keys_db)},
                    "policy": {"dir": str(folder), "watch": False},
                    "redis": {"url": REDIS, "prefix": prefix},
                    "pii": {"workers": 1},
                    "stats": {"index_interval_s": 0.5},
                    "fairness": {"scheduler_interval_s": 0.5},
                    "ledger": {
                        "store": store, "origin": f"replica-{name}.example/log", "checkpoint_every": 5,
                        "checkpoint_interval_s": 0.5,
                        "chain": {"enabled": True, "rpc_url": anchor_anvil.url, "chain_id": anchor_anvil.chain_id,
                                  "contract": chain.contract_address, "keystore": str(key.keystore),
                                  "password_file": str(key.password), "interval_s": 0.5},
                    },
                }))  # fmt: skip
                replicas.append(Replica(name, config, port, tmp_path / f"{name}.log"))
            for r in replicas:
                r.wait_ready()
            yield {"replicas": replicas, "folder": folder, "store": store, "keys_db": keys_db}
        finally:
            for r in replicas:
                r.stop()


def _key(config: Path, *roles: str, owner: str) -> str:
    args = ["keys", "create", "--config", str(config), "--owner", owner]
    for role in roles:
        args += ["--role", role]
    created = CliRunner().invoke(main, args)
    assert created.exit_code == 0, created.output
    return next(line for line in created.output.splitlines() if line.startswith("gk_"))


CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 4}


async def test_two_replicas_share_limits_policy_ledger_store_and_statistics(deployment: dict[str, Any]) -> None:
    a, b = deployment["replicas"]
    user, limited = _key(a.config, "user", owner="uma"), _key(a.config, "limited", owner="lim")
    admin, analyst = _key(a.config, "admin", owner="root"), _key(a.config, "analyst", owner="ana")
    clients = {k: [httpx.AsyncClient(base_url=r.url, headers={"authorization": f"Bearer {k}"}, timeout=60)
                   for r in (a, b)] for k in (user, limited, admin, analyst)}  # fmt: skip
    try:
        # Load through both replicas.
        replies = await asyncio.gather(*(clients[user][i % 2].post("/v1/chat/completions", json=CHAT)
                                         for i in range(20)))  # fmt: skip
        assert [r.status_code for r in replies] == [200] * 20

        # Rate limits hold across the replicas: 3 * PER_MINUTE requests, alternating, within one minute.
        statuses = []
        for i in range(3 * PER_MINUTE):
            statuses.append((await clients[limited][i % 2].post("/v1/chat/completions", json=CHAT)).status_code)
        assert statuses.count(200) == PER_MINUTE and statuses.count(429) == 2 * PER_MINUTE, statuses
        assert {s for i, s in enumerate(statuses) if i % 2 and s == 200} and {
            s for i, s in enumerate(statuses) if not i % 2 and s == 200}  # both replicas admitted some  # fmt: skip

        # A policy change accepted on one replica reaches the other (Redis announces it; it re-checks the files).
        folder: Path = deployment["folder"]
        with (folder / "policy.csv").open("a") as f:
            f.write("p, role:user, model:echo-v1, infer, deny\n")
        r = await clients[admin][0].post("/admin/policy/reload")
        assert r.status_code == 200 and r.json()["reloaded"] is True
        deadline = time.monotonic() + 20
        while (
            await clients[user][1].post("/v1/chat/completions", json={**CHAT, "model": "echo-v1"})
        ).status_code != 403:
            assert time.monotonic() < deadline, "the policy change did not reach replica b"
            await asyncio.sleep(0.2)
        status_b = (await clients[admin][1].get("/admin/policy/status")).json()
        assert status_b["digest"] == (await clients[admin][0].get("/admin/policy/status")).json()["digest"]

        # Each replica anchors its own log.
        deadline = time.monotonic() + 60
        for client in clients[admin]:
            while True:
                anchoring = (await client.get("/readyz")).json()["ledger"]["anchoring"]
                metrics = (await client.get("/metrics")).text
                anchored = re.search(r"^gateway_ledger_anchored_entries ([0-9.e+]+)$", metrics, re.M)
                if anchoring["ok"] and anchored is not None and float(anchored.group(1)) > 0:
                    break
                assert time.monotonic() < deadline, f"not anchored: {anchoring}"
                await asyncio.sleep(0.25)

        # The scheduled audit ran on exactly one replica, even after many more scheduler wake-ups on both.
        results = FairnessStore(deployment["store"])
        try:
            deadline = time.monotonic() + 120
            while not results.audits()[0]:
                assert time.monotonic() < deadline, "the scheduled probe audit did not run"
                await asyncio.sleep(0.5)
            await asyncio.sleep(3)  # six more wake-ups of each scheduler
            records, _ = results.audits()
        finally:
            results.close()
        assert [(r.name, r.requested_by) for r in records] == [(PROBES["name"], "scheduler")]
        assert records[0].log in ("replica-a.example/log", "replica-b.example/log")

        # Statistics on either replica count both replicas' requests (the uma caller: 20 requests, K = 20).
        today = time.strftime("%Y-%m-%d", time.gmtime())
        params = {"metric": "requests", "from": today, "to": today, "epsilon": "1"}
        answer = (await clients[analyst][1].get("/admin/stats", params=params)).json()
        assert answer["privacy"]["sensitivity"] == 20 and answer["groups"][0]["value"] > 0
    finally:
        for pair in clients.values():
            for c in pair:
                await c.aclose()
    for r in (a, b):
        r.stop()
    # Both logs in the shared store verify, with every anchor checked on the chain.
    store = open_store(deployment["store"])
    try:
        audits = [json.loads(body)["data"] for log in store.logs() for _, _, body in store.read(log)
                  if json.loads(body)["kind"] == "fairness.audit"]  # fmt: skip
    finally:
        store.close()
    assert len(audits) == 1 and audits[0]["probe_set"] == PROBES["name"]
    for r in (a, b):  # each replica's log, in the shared store, verifies against its own key and contract
        verified = CliRunner().invoke(main, ["ledger", "verify", "--config", str(r.config)])
        assert verified.exit_code == 0, verified.output
        assert f"replica-{r.name}.example/log" in verified.output
        assert re.search(r" [1-9][0-9]* anchors checked on the chain", verified.output), verified.output
