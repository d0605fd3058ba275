"""Anchoring on a real anvil node: rules of the contract, listing, verification, crashes, resets."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests

from ledger.anchor import (
    AnchorRecord,
    AnchorRejected,
    Anvil,
    ChainAnchor,
    ChainConfig,
    ChainError,
    create_keystore,
    find_anvil,
    load_account,
)
from ledger.anchor import anvil as anvil_module
from ledger.anchor import chain as chain_module
from tests.ledger.conftest import TEST_SCRYPT_N, AnchorKey, deploy_on, make_anchor_key


def sha(text: str) -> bytes:
    """SHA-256 of ``text``: log ids (of an origin string) and stand-in roots."""
    return hashlib.sha256(text.encode()).digest()


def test_deploy_makes_the_key_owner(anchor_chain: ChainAnchor, anchor_key: AnchorKey) -> None:
    """The deployer owns the contract, and a log never anchored has no latest anchor."""
    assert anchor_chain.owner() == anchor_chain.account_address == anchor_key.address
    assert anchor_chain.latest(sha("never anchored")) is None


def test_two_logs_anchor_independently(anchor_chain: ChainAnchor) -> None:
    """Each log id keeps its own latest (size, root); sizes only need to grow within one log."""
    a, b = sha("test://replica-a"), sha("test://replica-b")
    for size in (1, 5, 9):
        record = anchor_chain.anchor(a, size, sha(f"a{size}"))
        assert (record.log_id, record.tree_size, record.root) == (a, size, sha(f"a{size}"))
    for size in (2, 3):
        anchor_chain.anchor(b, size, sha(f"b{size}"))
    assert anchor_chain.latest(a) == (9, sha("a9"))
    assert anchor_chain.latest(b) == (3, sha("b3"))
    assert [r.tree_size for r in anchor_chain.anchors(a)] == [1, 5, 9]
    assert [r.tree_size for r in anchor_chain.anchors(b)] == [2, 3]


@pytest.mark.parametrize(
    ("size", "root", "reason", "error_args"),
    [
        (10, sha("other"), "NotIncreasing", (10, 10)),
        (7, sha("other"), "NotIncreasing", (10, 7)),
        (11, sha("root-10"), "DuplicateRoot", ("0x" + sha("root-10").hex(),)),
    ],
    ids=["same-size", "smaller-size", "duplicate-root"],
)
def test_contract_rejects(
    anchor_chain: ChainAnchor, size: int, root: bytes, reason: str, error_args: tuple[object, ...]
) -> None:
    """A repeated or smaller tree size, or a root seen before, reverts with the contract's error."""
    log = sha(f"test://rejects/{reason}/{size}")
    anchor_chain.anchor(log, 10, sha("root-10"))
    with pytest.raises(AnchorRejected) as caught:
        anchor_chain.anchor(log, size, root)
    assert (caught.value.reason, caught.value.error_args) == (reason, error_args)
    assert caught.value.tx_hash is not None  # mined and reverted, not refused
    assert anchor_chain.latest(log) == (10, sha("root-10"))
    assert anchor_chain.anchor(log, 12, sha("root-12")).tree_size == 12  # the nonce is still right


def test_anchor_costs_two_rpcs(anchor_chain: ChainAnchor, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the nonce known, an anchor only sends the raw tx and polls its receipt (once, if mined at once)."""
    log = sha("test://rpc-count")
    anchor_chain.anchor(log, 1, sha("rpc1"))  # reads the nonce if no earlier test did
    methods: list[str] = []
    post = requests.Session.post

    def counting_post(self: requests.Session, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        methods.append(json.loads(kwargs["data"])["method"])
        return post(self, url, *args, **kwargs)

    monkeypatch.setattr(requests.Session, "post", counting_post)
    anchor_chain.anchor(log, 2, sha("rpc2"))
    assert methods[0] == "eth_sendRawTransaction"
    assert methods[1:] and set(methods[1:]) == {"eth_getTransactionReceipt"}  # no chain id, nonce, gas or fee lookups


def test_non_owner_rejected(anchor_anvil: Anvil, anchor_deployed: ChainConfig, tmp_path: Path) -> None:
    """Another funded key cannot anchor: NotOwner."""
    intruder = make_anchor_key(tmp_path, "intruder")
    anchor_anvil.fund(intruder.address)
    config = replace(anchor_deployed, keystore_path=intruder.keystore, password_path=intruder.password)
    with ChainAnchor.connect(config) as chain, pytest.raises(AnchorRejected) as caught:
        chain.anchor(sha("test://intruder"), 1, sha("forged"))
    assert caught.value.reason == "NotOwner"


def test_anchors_lists_records_that_verify(anchor_chain: ChainAnchor, monkeypatch: pytest.MonkeyPatch) -> None:
    """anchors() returns what anchor() returned, page by page, and each record verifies."""
    log = sha("test://listed")
    made = [anchor_chain.anchor(log, size, sha(f"listed{size}")) for size in (3, 4, 8)]
    assert anchor_chain.anchors(log) == made
    monkeypatch.setattr(chain_module, "LOG_PAGE_BLOCKS", 2)
    assert anchor_chain.anchors(log) == made
    assert anchor_chain.anchors(log, from_block=made[1].block_number) == made[1:]
    for record in made:
        anchor_chain.verify_anchor(record)
        assert AnchorRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"root": sha("forged")}, "root differs"),
        ({"tree_size": 6}, "anchored no tree of size 6"),
        ({"log_id": sha("test://elsewhere")}, "anchored no tree"),
        ({"block_hash": "0x" + "00" * 32}, "block hash differs"),
        ({"tx_hash": "0x" + "11" * 32}, "is not on the chain"),
        ({"chain_id": 1}, "not"),
    ],
    ids=["root", "tree-size", "log-id", "block-hash", "tx-hash", "chain-id"],
)
def test_tampered_record_rejected(anchor_chain: ChainAnchor, change: dict[str, object], message: str) -> None:
    """verify_anchor refuses a record that differs from the chain in any field, and says how."""
    log = sha(f"test://tampered/{sorted(change)}")
    record = anchor_chain.anchor(log, 5, sha(f"tampered{sorted(change)}"))
    anchor_chain.verify_anchor(record)
    with pytest.raises(ChainError, match=message):
        anchor_chain.verify_anchor(replace(record, **change))  # type: ignore[arg-type]


def test_wrong_chain_id_refused(anchor_deployed: ChainConfig) -> None:
    """connect() refuses a node whose chain id is not the configured one."""
    with pytest.raises(ChainError, match="serves chain id 31337, but chain id 1 is configured"):
        ChainAnchor.connect(replace(anchor_deployed, chain_id=1))


def test_no_code_at_address_refused(anchor_deployed: ChainConfig) -> None:
    """connect() refuses an address without contract code."""
    with pytest.raises(ChainError, match="no contract code"):
        ChainAnchor.connect(replace(anchor_deployed, contract_address="0x" + "42" * 20))


def wait_until(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    """Poll ``condition`` until it holds; fail at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.005)


def test_waits_for_confirmations(anchor_anvil: Anvil, tmp_path: Path) -> None:
    """With confirmations=3, anchor() returns only once two more blocks sit on the anchor's block."""
    config = replace(deploy_on(anchor_anvil, make_anchor_key(tmp_path)), confirmations=3)

    def head() -> int:
        return int(anchor_anvil.rpc("eth_blockNumber"), 16)

    with ChainAnchor.connect(config) as chain, ThreadPoolExecutor(1) as pool:
        start = head()
        future = pool.submit(chain.anchor, sha("test://confirmations"), 1, sha("confirmed"))
        wait_until(lambda: head() > start)
        anchor_anvil.rpc("evm_mine")
        assert not future.done()  # two confirmations are not three
        anchor_anvil.rpc("evm_mine")
        record = future.result(timeout=10)
    assert record.block_number == start + 1


def test_lost_receipt_never_double_anchors(tmp_path: Path) -> None:
    """When no receipt comes in time the outcome is unknown; latest() tells, a retry cannot repeat it."""
    key = make_anchor_key(tmp_path)
    with Anvil() as node:
        config = replace(deploy_on(node, key), timeout_s=0.3)
        log = sha("test://lost-receipt")
        with ChainAnchor.connect(config) as chain:
            node.rpc("evm_setAutomine", False)
            with pytest.raises(ChainError, match="outcome is unknown"):
                chain.anchor(log, 4, sha("four"))
            node.rpc("evm_mine")
            node.rpc("evm_setAutomine", True)
            assert chain.latest(log) == (4, sha("four"))  # it landed after all
            with pytest.raises(AnchorRejected, match="NotIncreasing"):
                chain.anchor(log, 4, sha("four"))
            assert chain.anchor(log, 5, sha("five")).tree_size == 5


def test_resume_after_sigkill(tmp_path: Path) -> None:
    """After a SIGKILL the node forgets blocks since its last state dump: detected, then re-anchored."""
    key, state = make_anchor_key(tmp_path), tmp_path / "state.json"
    log = sha("test://crash")
    node = Anvil(state_path=state, state_interval_s=3600)  # dumps only on SIGTERM here
    with node:
        config = deploy_on(node, key)
        with ChainAnchor.connect(config) as chain:
            kept = chain.anchor(log, 10, sha("ten"))
    node = Anvil(state_path=state, state_interval_s=3600, port=node.port)
    with node:
        with ChainAnchor.connect(config) as chain:
            chain.verify_anchor(kept)  # survived the SIGTERM restart
            lost = chain.anchor(log, 20, sha("twenty"))
        node.kill()
        node.start()
        with ChainAnchor.connect(config) as chain:
            assert chain.latest(log) == (10, sha("ten"))
            chain.verify_anchor(kept)
            with pytest.raises(ChainError, match="is not on the chain"):
                chain.verify_anchor(lost)
            again = chain.anchor(log, 20, sha("twenty"))
            chain.verify_anchor(again)
            assert chain.anchors(log)[-1] == again


def test_chain_reset_detected_by_block_hash(tmp_path: Path) -> None:
    """A fresh chain with the contract redeployed at the same address fails verify_anchor on the block hash."""
    key, log = make_anchor_key(tmp_path), sha("test://reset")
    with Anvil() as node:
        config = deploy_on(node, key)
        with ChainAnchor.connect(config) as chain:
            original = chain.anchor(log, 7, sha("seven"))
    with Anvil(port=node.port) as node:
        node.rpc("evm_increaseTime", 3600)  # the reset happens later: other block timestamps
        replayed = deploy_on(node, key)
        assert replayed.contract_address == config.contract_address  # same deployer, same nonce
        with ChainAnchor.connect(replayed) as chain:
            again = chain.anchor(log, 7, sha("seven"))
            # Same key, nonce, fees and data: the very same transaction, in a block of the same number.
            assert (again.tx_hash, again.block_number) == (original.tx_hash, original.block_number)
            with pytest.raises(ChainError, match="block hash differs"):
                chain.verify_anchor(original)


def test_keystore_round_trip_and_modes(tmp_path: Path) -> None:
    """Keys are saved encrypted with mode 0600, load back, and are never overwritten."""
    keystore, password = tmp_path / "k.json", tmp_path / "k.pw"
    address = create_keystore(keystore, password, scrypt_n=TEST_SCRYPT_N)
    assert oct(keystore.stat().st_mode & 0o777) == oct(password.stat().st_mode & 0o777) == "0o600"
    assert json.loads(keystore.read_text())["crypto"]["kdf"] == "scrypt"
    assert load_account(keystore, password).address == address
    with pytest.raises(ChainError, match="already exists"):
        create_keystore(keystore, tmp_path / "other.pw")


@pytest.mark.parametrize("which", ["keystore", "password"])
def test_keystore_refuses_readable_files(tmp_path: Path, which: str) -> None:
    """A keystore or password file that group or others can read is refused, with the fix."""
    keystore, password = tmp_path / "k.json", tmp_path / "k.pw"
    create_keystore(keystore, password, scrypt_n=TEST_SCRYPT_N)
    exposed = keystore if which == "keystore" else password
    os.chmod(exposed, 0o640)
    with pytest.raises(ChainError, match=f"chmod 600 {exposed}"):
        load_account(keystore, password)


def test_keystore_wrong_password(tmp_path: Path) -> None:
    """A wrong password is a ChainError that does not echo the password."""
    keystore, password = tmp_path / "k.json", tmp_path / "k.pw"
    create_keystore(keystore, password, password="right", scrypt_n=TEST_SCRYPT_N)
    password.write_text("wrong-secret\n")
    with pytest.raises(ChainError, match="cannot decrypt") as caught:
        load_account(keystore, password)
    assert "wrong-secret" not in str(caught.value)


def test_missing_anvil_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the npm package or anvil on PATH, the error names the npm ci command."""
    monkeypatch.setattr(anvil_module, "JS_DIR", tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ChainError, match=r"anvil binary not found .* npm ci --prefix ledger/anchor/js"):
        find_anvil()
    with pytest.raises(ChainError, match="npm ci --prefix ledger/anchor/js"):
        find_anvil(tmp_path / "anvil")


@pytest.mark.parametrize(
    "change",
    [{"root": "0x1234"}, {"tree_size": -1}, {"tree_size": True}, {"contract": "nope"}, {"block_hash": None}],
    ids=["short-root", "negative", "bool", "bad-address", "missing-hash"],
)
def test_record_from_dict_rejects_malformed(change: dict[str, object]) -> None:
    """AnchorRecord.from_dict raises ValueError on a malformed field."""
    valid = AnchorRecord(sha("log"), 3, sha("root"), "0x" + "ab" * 32, 9, "0x" + "cd" * 32, 31337, "0x" + "42" * 20)
    assert AnchorRecord.from_dict(valid.to_dict()).contract == "0x4242424242424242424242424242424242424242"
    with pytest.raises(ValueError):
        AnchorRecord.from_dict(valid.to_dict() | change)


def test_config_validation(tmp_path: Path) -> None:
    """ChainConfig refuses nonsense up front."""
    base = {"rpc_url": "http://127.0.0.1:1", "chain_id": 31337, "keystore_path": tmp_path, "password_path": tmp_path}
    with pytest.raises(ValueError, match="confirmations"):
        ChainConfig(contract_address=None, confirmations=0, **base)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not an address"):
        ChainConfig(contract_address="0x12", **base)  # type: ignore[arg-type]
    with pytest.raises(ChainError, match="no contract_address"):
        ChainAnchor.connect(ChainConfig(contract_address=None, **base))  # type: ignore[arg-type]
