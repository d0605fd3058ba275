"""With the chain on, the evidence a compliance officer gets checks the anchors on the chain: the report's
integrity section and the page's "verify now" both verify every anchor of the log against the real node."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import httpx

from ledger.anchor import Anvil
from tests.conftest import create_app, make_settings, new_key, wait_for
from tests.ledger.conftest import deploy_on, make_anchor_key

CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


async def test_report_and_page_verify_the_anchors_on_the_chain(triton: Any, tmp_path: Path,
                                                               anchor_anvil: Anvil) -> None:  # fmt: skip
    key = make_anchor_key(tmp_path, "anchor")
    chain = deploy_on(anchor_anvil, key)
    settings = make_settings(triton, tmp_path, ledger={
        "checkpoint_every": 5, "checkpoint_interval_s": 0.2,
        "chain": {"enabled": True, "rpc_url": anchor_anvil.url, "chain_id": anchor_anvil.chain_id,
                  "contract": chain.contract_address, "keystore": str(key.keystore),
                  "password_file": str(key.password), "interval_s": 0.2},
    })  # fmt: skip
    app = create_app(settings)
    officer = new_key(settings, "compliance-officer")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        admin = {"authorization": f"Bearer {new_key(settings, 'admin')}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://gw", headers=admin) as api:
            for _ in range(3):
                assert (await api.post("/v1/chat/completions", json=CHAT)).status_code == 200
            anchorer = app.state.gateway.audit.anchorer
            await wait_for(lambda: anchorer.status().anchored_size >= 5, 60, "an anchored checkpoint")
            today = time.strftime("%Y-%m-%d", time.gmtime())
            r = await api.post("/admin/reports", json={"period": {"from": today, "to": today},
                                                       "sections": ["integrity"]})  # fmt: skip
            assert r.status_code == 202, r.text
            rid = r.json()["id"]
            for _ in range(1200):
                status = (await api.get(f"/admin/reports/{rid}")).json()
                if status["status"] in ("done", "failed"):
                    break
                await asyncio.sleep(0.05)
            assert status["status"] == "done", status
            doc = (await api.get(f"/admin/reports/{rid}.json")).json()
        verification = doc["report"]["sections"]["integrity"]["verification"]
        assert verification["ok"] and verification["chain_checked"] and verification["anchors_checked"] >= 1
        assert verification["anchored_size"] >= 5  # (the period's newest entries are not anchored yet)

        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as browser:
            assert (await browser.post("/admin/ui/login", data={"api_key": officer})).status_code == 303
            page = (await browser.get("/admin/ui")).text
            assert re.search(rf"anchored through tree size \d+ on chain {anchor_anvil.chain_id}", page), page
            csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)  # type: ignore[union-attr]
            assert (await browser.post("/admin/ui/ledger/verify", data={"csrf": csrf})).status_code == 303
            page = (await browser.get("/admin/ui")).text
            assert re.search(r'class="ok">verified</span>: \d+ entries,\s+\d+ checkpoints, [1-9]\d* anchors checked '
                             r"on the chain", page), page  # fmt: skip
