"""Anchoring checkpoint roots in the AuditAnchor contract, and checking anchors against the chain.

Synchronous (web3 ``HTTPProvider``): the gateway calls it from a worker thread. One anchor is two
JSON-RPC calls: the transaction is fully pre-filled (cached chain id, locally tracked nonce, fixed
gas limit and fee caps) and signed here, then sent raw, then its receipt is fetched. Nothing is
ever assumed to have landed without a receipt. After any error the nonce is re-read from the node
(``pending``), and a caller that lost a receipt resumes from ``latest()``: the contract refuses a
tree size that is not larger than the last one, so a retried anchor cannot be recorded twice.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import requests
from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError, TransactionNotFound, Web3Exception
from web3.types import FilterParams, RPCEndpoint, TxParams, TxReceipt

from ._artifact import load_artifact
from ._revert import revert_reason
from ._tx import await_receipt, connect_web3, fill, hex0x, rpc_call, submit
from .errors import AnchorRejected, ChainError, WrongChain
from .keystore import load_account

LOG_PAGE_BLOCKS = 5_000


@dataclass(frozen=True)
class ChainConfig:
    """Where and how to anchor. ``contract_address`` is None only before ``deploy``.

    The fee caps bound what one anchor may cost (EIP-1559: the sender pays the block's base fee
    plus the tip, never more than ``max_fee_per_gas``); set them for the chain in use.
    """

    rpc_url: str
    chain_id: int
    contract_address: str | None
    keystore_path: Path
    password_path: Path
    confirmations: int = 1
    gas_limit: int = 200_000
    timeout_s: float = 30
    max_fee_per_gas: int = 100 * 10**9
    max_priority_fee_per_gas: int = 10**9

    def __post_init__(self) -> None:
        if self.confirmations < 1:
            raise ValueError(f"confirmations must be at least 1, not {self.confirmations}")
        if self.gas_limit <= 0 or self.timeout_s <= 0:
            raise ValueError("gas_limit and timeout_s must be positive")
        if self.contract_address is not None and not Web3.is_address(self.contract_address):
            raise ValueError(f"contract_address {self.contract_address!r} is not an address")


@dataclass(frozen=True)
class AnchorRecord:
    """Proof of one anchor: which log, tree size and root, and where on which chain it landed."""

    log_id: bytes
    tree_size: int
    root: bytes
    tx_hash: str
    block_number: int
    block_hash: str
    chain_id: int
    contract: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: byte fields as 0x-prefixed hex."""
        return {
            "log_id": hex0x(self.log_id),
            "tree_size": self.tree_size,
            "root": hex0x(self.root),
            "tx_hash": self.tx_hash,
            "block_number": self.block_number,
            "block_hash": self.block_hash,
            "chain_id": self.chain_id,
            "contract": self.contract,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnchorRecord:
        """Inverse of ``to_dict``; raises ``ValueError`` on a malformed record."""
        try:
            return cls(
                log_id=_bytes32(data["log_id"]),
                tree_size=_int(data["tree_size"]),
                root=_bytes32(data["root"]),
                tx_hash=hex0x(_bytes32(data["tx_hash"])),
                block_number=_int(data["block_number"]),
                block_hash=hex0x(_bytes32(data["block_hash"])),
                chain_id=_int(data["chain_id"]),
                contract=str(Web3.to_checksum_address(data["contract"])),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed anchor record: {exc!r}") from None


class ChainAnchor:
    """A connection to one AuditAnchor contract, signing with one local key. Thread-safe."""

    def __init__(
        self, w3: Web3, session: requests.Session, config: ChainConfig, account: LocalAccount | None,
        contract: Contract,
    ) -> None:  # fmt: skip
        """Use ``connect`` (or ``reader`` for an auditor without a key): both check the chain first."""
        self._w3, self._session, self.config = w3, session, config
        self._maybe_account, self._contract = account, contract
        self.address = str(contract.address)
        self._nonce: int | None = None
        self._lock = threading.Lock()

    @classmethod
    def connect(cls, config: ChainConfig) -> ChainAnchor:
        """Check the chain id and the contract's code, then load the key (mode 0600 files)."""
        if config.contract_address is None:
            raise ChainError("no contract_address configured: deploy the contract first")
        address = Web3.to_checksum_address(config.contract_address)
        w3, session = connect_web3(config)
        try:
            if not rpc_call(lambda: w3.eth.get_code(address), f"reading the code at {address}"):
                raise WrongChain(
                    f"no contract code at {address} on chain {config.chain_id}: wrong address, or the chain was reset"
                )
            account = load_account(config.keystore_path, config.password_path)
        except BaseException:
            session.close()
            raise
        return cls(w3, session, config, account, w3.eth.contract(address=address, abi=load_artifact()["abi"]))

    @classmethod
    def deploy(cls, config: ChainConfig) -> str:
        """Deploy AuditAnchor with the configured key as its owner; return the contract address."""
        account = load_account(config.keystore_path, config.password_path)
        w3, session = connect_web3(config)
        with session:
            code: TxParams = {"data": HexBytes(load_artifact()["bytecode"]), "from": account.address}
            gas = rpc_call(lambda: w3.eth.estimate_gas(code), "estimating the deployment's gas")
            nonce = rpc_call(lambda: w3.eth.get_transaction_count(account.address, "pending"), "reading the nonce")
            tx = fill({"data": code["data"]}, config, nonce, gas + gas // 5)
            receipt = await_receipt(w3, submit(w3, account, tx), config)
        address = receipt["contractAddress"]
        if receipt["status"] != 1 or address is None:
            raise ChainError(f"deployment transaction {hex0x(receipt['transactionHash'])} failed")
        return str(address)

    @classmethod
    def reader(cls, rpc_url: str, chain_id: int, contract_address: str, timeout_s: float = 30) -> ChainAnchor:
        """A read-only connection (no key): ``latest``, ``anchors`` and ``verify_anchor`` work, ``anchor`` does not."""
        none = Path("/nonexistent")
        config = ChainConfig(rpc_url, chain_id, contract_address, none, none, timeout_s=timeout_s)
        address = Web3.to_checksum_address(contract_address)
        w3, session = connect_web3(config)
        return cls(w3, session, config, None, w3.eth.contract(address=address, abi=load_artifact()["abi"]))

    @property
    def _account(self) -> LocalAccount:
        if self._maybe_account is None:
            raise ChainError("this is a read-only connection: it has no key to anchor with")
        return self._maybe_account

    @property
    def account_address(self) -> str:
        """The signing key's address: it pays the gas and must be the contract's owner."""
        return str(self._account.address)

    def owner(self) -> str:
        """The contract's owner, the only address allowed to anchor."""
        return str(rpc_call(self._contract.functions.owner().call, "calling owner()"))

    def latest(self, log_id: bytes) -> tuple[int, bytes] | None:
        """The log's last anchored (tree size, root), or None if it was never anchored."""
        size, root, _block = rpc_call(
            self._contract.functions.latest(_check32(log_id, "log_id")).call, "calling latest()"
        )
        return (int(size), bytes(root)) if size else None

    def anchor(self, log_id: bytes, tree_size: int, root: bytes) -> AnchorRecord:
        """Anchor ``root`` as the log's tree of ``tree_size`` entries; return once confirmed.

        Raises ``AnchorRejected`` if the contract reverts (``reason`` names its error) and
        ``ChainError`` if the node fails or no receipt arrives in time: then the outcome is
        unknown, and the caller resumes from ``latest()``.
        """
        log_id, root = _check32(log_id, "log_id"), _check32(root, "root")
        if not 0 < tree_size < 2**64:
            raise ValueError(f"tree_size must be in 1..2**64-1, not {tree_size}")
        data = self._contract.encode_abi("anchor", args=[log_id, tree_size, root])
        with self._lock:
            try:
                if self._nonce is None:
                    self._nonce = rpc_call(
                        lambda: self._w3.eth.get_transaction_count(self._account.address, "pending"),
                        "reading the nonce",
                    )
                tx = fill({"to": self._contract.address, "data": HexBytes(data)}, self.config, self._nonce)
                tx_hash = submit(self._w3, self._account, tx)
                self._nonce += 1
                receipt = await_receipt(self._w3, tx_hash, self.config)
            except BaseException:
                self._nonce = None  # re-read from the node (pending) before the next anchor
                raise
        if receipt["status"] != 1:
            raise self._rejected(tx, receipt)
        return AnchorRecord(
            log_id=log_id,
            tree_size=tree_size,
            root=root,
            tx_hash=hex0x(receipt["transactionHash"]),
            block_number=receipt["blockNumber"],
            block_hash=hex0x(receipt["blockHash"]),
            chain_id=self.config.chain_id,
            contract=self.address,
        )

    def anchors(self, log_id: bytes, from_block: int = 0) -> list[AnchorRecord]:
        """Every anchor of the log from its ``Anchored`` events, oldest first (paged by blocks)."""
        event = self._contract.events.Anchored()
        topics = [event.topic, hex0x(_check32(log_id, "log_id"))]
        head = rpc_call(lambda: self._w3.eth.block_number, "reading the block number")
        records = []
        for start in range(from_block, head + 1, LOG_PAGE_BLOCKS):
            query: FilterParams = {
                "address": self._contract.address,
                "topics": topics,
                "fromBlock": start,
                "toBlock": min(start + LOG_PAGE_BLOCKS - 1, head),
            }
            logs = rpc_call(partial(self._w3.eth.get_logs, query), "reading Anchored events")
            for log in logs:
                args = event.process_log(log)["args"]
                records.append(
                    AnchorRecord(
                        log_id=bytes(args["logId"]),
                        tree_size=args["treeSize"],
                        root=bytes(args["root"]),
                        tx_hash=hex0x(log["transactionHash"]),
                        block_number=log["blockNumber"],
                        block_hash=hex0x(log["blockHash"]),
                        chain_id=self.config.chain_id,
                        contract=self.address,
                    )
                )
        return records

    def verify_anchor(self, record: AnchorRecord) -> None:
        """Raise ``ChainError`` saying why unless the chain holds exactly this anchor."""
        if record.chain_id != self.config.chain_id or record.contract != self.address:
            raise ChainError(
                f"anchor is for contract {record.contract} on chain {record.chain_id}, "
                f"not {self.address} on chain {self.config.chain_id}"
            )
        try:
            receipt = self._w3.eth.get_transaction_receipt(HexBytes(record.tx_hash))
        except TransactionNotFound:
            raise ChainError(
                f"transaction {record.tx_hash} is not on the chain: the anchor was lost, "
                "or the chain was reset or replaced"
            ) from None
        except (Web3Exception, OSError) as exc:
            raise ChainError(f"reading the receipt of {record.tx_hash} failed: {exc}") from exc
        canonical = self._block_hash(record.block_number)
        landed = (receipt["blockNumber"], hex0x(receipt["blockHash"]))
        if landed != (record.block_number, record.block_hash) or canonical != record.block_hash:
            raise ChainError(
                f"block hash differs: the anchor was recorded in block {record.block_number} {record.block_hash}, "
                f"but the chain has {canonical or 'no block'} there and the transaction in block "
                f"{landed[0]} {landed[1]}: the chain was reset, replaced or reorganized"
            )
        if receipt["status"] != 1:
            raise ChainError(f"transaction {record.tx_hash} reverted")
        event = self._contract.events.Anchored()
        for log in receipt["logs"]:
            if log["address"] != self.address or not log["topics"] or log["topics"][0] != HexBytes(event.topic):
                continue
            args = event.process_log(log)["args"]
            if bytes(args["logId"]) != record.log_id or args["treeSize"] != record.tree_size:
                continue
            if bytes(args["root"]) != record.root:
                raise ChainError(
                    f"root differs: the chain anchored {hex0x(args['root'])} for tree size "
                    f"{record.tree_size}, the record says {hex0x(record.root)}"
                )
            return
        raise ChainError(
            f"transaction {record.tx_hash} anchored no tree of size {record.tree_size} for log {hex0x(record.log_id)}"
        )

    def _block_hash(self, number: int) -> str | None:
        # Raw JSON-RPC: web3's block formatter rejects the long extraData of PoA chains.
        try:
            answer = self._w3.provider.make_request(RPCEndpoint("eth_getBlockByNumber"), [hex(number), False])
        except (Web3Exception, OSError) as exc:
            raise ChainError(f"reading block {number} failed: {exc}") from exc
        if "error" in answer:
            raise ChainError(f"reading block {number} failed: {answer['error']}")
        block = answer.get("result")
        return str(block["hash"]).lower() if block else None

    def close(self) -> None:
        """Close the HTTP connections to the node."""
        self._session.close()

    def __enter__(self) -> ChainAnchor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _rejected(self, tx: TxParams, receipt: TxReceipt) -> AnchorRejected:
        tx_hash = hex0x(receipt["transactionHash"])
        if receipt["gasUsed"] >= self.config.gas_limit:
            return AnchorRejected("OutOfGas", detail=f"used all {self.config.gas_limit} gas", tx_hash=tx_hash)
        # The receipt carries no revert data: replay the call on the state of its block.
        replay: TxParams = {"from": self._account.address, "to": tx["to"], "data": tx["data"], "gas": tx["gas"]}
        try:
            self._w3.eth.call(replay, block_identifier=receipt["blockNumber"])
        except ContractLogicError as exc:
            name, args = revert_reason(exc.data)
            return AnchorRejected(name, args, tx_hash=tx_hash)
        except (Web3Exception, OSError):
            pass
        return AnchorRejected("unknown", detail="the transaction reverted; replaying it did not", tx_hash=tx_hash)


def _bytes32(text: object) -> bytes:
    if not isinstance(text, str):
        raise ValueError(f"expected 32 bytes of hex, got {text!r}")
    value = bytes.fromhex(text.removeprefix("0x"))
    if len(value) != 32:
        raise ValueError(f"expected 32 bytes of hex, got {len(value)}: {text!r}")
    return value


def _check32(value: bytes, name: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != 32:
        raise ValueError(f"{name} must be 32 bytes")
    return value


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a non-negative integer, got {value!r}")
    return value


def check_on_chain(rpc_url: str, record: AnchorRecord, timeout_s: float = 30) -> None:
    """An auditor's check, with no key: raise ``ChainError`` unless the chain at ``rpc_url`` holds ``record``."""
    with ChainAnchor.reader(rpc_url, record.chain_id, record.contract, timeout_s) as chain:
        chain.verify_anchor(record)
