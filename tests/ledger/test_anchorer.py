"""Background anchoring against a real anvil node: anchors, lag while the chain is down, crash recovery."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ledger.anchor import Anvil, ChainAnchor
from ledger.anchorer import Anchorer
from ledger.log import Ledger, LedgerConfig
from ledger.store import open_store
from ledger.verifier import verify_log
from tests.ledger.conftest import deploy_on, make_anchor_key

ROOT = Path(__file__).resolve().parents[2]


def _ledger(tmp_path: Path, origin: str) -> Ledger:
    cfg = LedgerConfig(store_url=str(tmp_path / "l.sqlite3"), origin=origin, signing_key=tmp_path / "cp.key",
                       checkpoint_every=10, checkpoint_interval_s=3600)  # fmt: skip
    ledger = Ledger(cfg)
    ledger.start()
    return ledger


def _fill(ledger: Ledger, n: int) -> None:
    """Append ``n`` entries and wait for the writer to sign the checkpoint they complete (every 10)."""
    for i in range(n):
        ledger.commit_sync("test.event", "u", {"i": i})
    want = ledger.status().size // 10 * 10
    deadline = time.monotonic() + 10
    while (cp := ledger.latest_checkpoint) is None or cp.tree_size < want:
        assert time.monotonic() < deadline, "no checkpoint"
        time.sleep(0.01)


def test_anchors_newest_checkpoint_and_verifies_on_chain(tmp_path: Path) -> None:
    """The newest checkpoint is anchored; verification checks anchors against the chain's own events."""
    key = make_anchor_key(tmp_path)
    with Anvil(state_path=tmp_path / "anvil.json") as node:
        config = deploy_on(node, key)
        ledger = _ledger(tmp_path, "test.local/anchored")
        _fill(ledger, 25)
        anchorer = Anchorer(open_store(str(tmp_path / "l.sqlite3")), ledger.origin, lambda: ChainAnchor.connect(config))
        record = anchorer.step()
        assert record is not None and record.tree_size == 20
        assert anchorer.step() is None  # nothing newer to anchor
        _fill(ledger, 10)
        assert (rec := anchorer.step()) is not None and rec.tree_size == 30
        ledger.close()
        store = open_store(str(tmp_path / "l.sqlite3"))
        with ChainAnchor.connect(config) as chain:
            report = verify_log(store, ledger.origin, ledger.verifier_key, chain=chain)
        assert report.ok, report.problems
        assert report.chain_checked and report.anchors_checked == 2 and report.anchored_size == 30
        assert report.unanchored == 5  # the checkpoint signed on close is not anchored yet
        anchorer.close_chain()


def test_chain_down_queues_then_catches_up(tmp_path: Path) -> None:
    """While the node is down, anchoring reports lag and an error; once it is back, the newest checkpoint lands."""
    key = make_anchor_key(tmp_path)
    node = Anvil(state_path=tmp_path / "anvil.json").start()
    config = deploy_on(node, key)
    node.stop()
    ledger = _ledger(tmp_path, "test.local/down")
    _fill(ledger, 30)
    anchorer = Anchorer(open_store(str(tmp_path / "l.sqlite3")), ledger.origin, lambda: ChainAnchor.connect(config))
    assert anchorer.step() is None
    status = anchorer.status()
    assert status.error and status.lag_entries == 30 and status.checkpoint_size == 30
    node = Anvil(port=node.port, state_path=tmp_path / "anvil.json").start()
    try:
        record = anchorer.step()
        assert record is not None and record.tree_size == 30
        assert anchorer.status().error is None and anchorer.status().lag_entries == 0
    finally:
        anchorer.close_chain()
        node.stop()
        ledger.close()


def test_anchors_lost_in_a_node_crash_are_anchored_again(tmp_path: Path) -> None:
    """A node killed before saving its state loses anchors; the anchorer notices and anchors again."""
    key = make_anchor_key(tmp_path)
    state = tmp_path / "anvil.json"
    node = Anvil(state_path=state, state_interval_s=3600).start()
    config = deploy_on(node, key)
    node.stop()  # SIGTERM: the deployment is saved
    node = Anvil(port=node.port, state_path=state, state_interval_s=3600).start()
    ledger = _ledger(tmp_path, "test.local/crash")
    _fill(ledger, 20)
    store = open_store(str(tmp_path / "l.sqlite3"))
    anchorer = Anchorer(store, ledger.origin, lambda: ChainAnchor.connect(config))
    assert (first := anchorer.step()) is not None and first.tree_size == 20
    anchorer.close_chain()
    node.kill()  # SIGKILL: the anchor was never saved
    node = Anvil(port=node.port, state_path=state, state_interval_s=3600).start()
    try:
        again = anchorer.step()
        assert again is not None and again.tree_size == 20  # the same signed tx (same nonce) lands again
        assert [r["tree_size"] for r in store.anchors(ledger.origin) if not r.get("lost")] == [20]
        ledger.close()
        with ChainAnchor.connect(config) as chain:
            report = verify_log(store, ledger.origin, ledger.verifier_key, chain=chain)
        assert report.ok, report.problems
    finally:
        anchorer.close_chain()
        node.stop()


def test_replaced_chain_is_detected(tmp_path: Path) -> None:
    """Anchors made on a chain that was later replaced fail verification against the new one."""
    key = make_anchor_key(tmp_path)
    node = Anvil().start()
    config = deploy_on(node, key)
    ledger = _ledger(tmp_path, "test.local/replaced")
    _fill(ledger, 10)
    store = open_store(str(tmp_path / "l.sqlite3"))
    anchorer = Anchorer(store, ledger.origin, lambda: ChainAnchor.connect(config))
    assert anchorer.step() is not None
    anchorer.close_chain()
    node.stop()
    ledger.close()
    with Anvil(port=node.port) as fresh:  # same port, same key: the contract lands at the same address
        replacement = deploy_on(fresh, key)
        assert replacement.contract_address == config.contract_address
        with ChainAnchor.connect(replacement) as chain:
            report = verify_log(store, ledger.origin, ledger.verifier_key, chain=chain)
    assert not report.ok
    assert "chain-reset" in {p.kind for p in report.problems}


WRITER = """
import sys
from pathlib import Path
from ledger.log import Ledger, LedgerConfig
d = Path(sys.argv[1])
ledger = Ledger(LedgerConfig(store_url=str(d / "l.sqlite3"), origin="test.local/kill", signing_key=d / "cp.key",
                             checkpoint_every=500, checkpoint_interval_s=0.5))
ledger.start()
import asyncio

async def worker(w):
    i = 0
    while True:
        seq = await ledger.commit("test.event", f"w{w}", {"i": i})
        print(seq, flush=True)
        i += 1

async def main():
    await asyncio.gather(*(worker(w) for w in range(32)))

asyncio.run(main())
"""


def test_kill_9_under_load_loses_no_acknowledged_entry(tmp_path: Path) -> None:
    """SIGKILL during heavy appends: every acknowledged entry is in the store and the chain verifies."""
    acked: list[int] = []
    with subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}) as proc:  # fmt: skip
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while len(acked) < 3000 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acked.append(int(line))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        acked += [int(x) for x in proc.stdout.read().split()]  # acknowledged just before the kill
    assert len(acked) >= 3000, "the writer did not get going"
    store = open_store(str(tmp_path / "l.sqlite3"))
    stored = store.count("test.local/kill")
    assert max(acked) < stored, f"acknowledged entry {max(acked)} lost; {stored} stored"
    from ledger.checkpoint import NoteSigner, load_signing_key

    vkey = NoteSigner(load_signing_key(tmp_path / "cp.key"), "test.local/kill").verifier_key
    report = verify_log(store, "test.local/kill", vkey)
    assert report.ok, report.problems
    # the log keeps going after the crash
    ledger = _ledger(tmp_path, "test.local/kill")
    assert ledger.commit_sync("test.event", "after", {}) == stored
    ledger.close()


def test_an_unexpected_error_does_not_end_anchoring(tmp_path: Path) -> None:
    """An error the anchorer did not foresee is reported in its status, and the next step tries again."""
    ledger = _ledger(tmp_path, "test.local/unexpected")
    _fill(ledger, 10)
    ledger.close()
    calls = 0

    def connect() -> ChainAnchor:
        nonlocal calls
        calls += 1
        raise RuntimeError("surprise")

    anchorer = Anchorer(open_store(str(tmp_path / "l.sqlite3")), ledger.origin, connect)
    assert anchorer.step() is None and anchorer.step() is None
    assert calls == 2 and "surprise" in (anchorer.status().error or "")
    assert anchorer.status().lag_entries == 10
