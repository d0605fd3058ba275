"""Signed raw transactions: fill every field, sign locally, send, wait for the receipt.

Two JSON-RPC calls per transaction (send, receipt) because nothing is left for web3 to look up:
the chain id is checked once per connection, the nonce is the caller's, the gas limit is fixed
and the fee caps come from the configuration.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import requests
from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from web3 import HTTPProvider, Web3
from web3.exceptions import (
    ContractLogicError,
    TimeExhausted,
    TransactionIndexingInProgress,
    TransactionNotFound,
    Web3Exception,
)
from web3.types import Nonce, TxParams, TxReceipt, Wei

from ._revert import revert_reason
from .errors import AnchorRejected, ChainError, WrongChain

if TYPE_CHECKING:
    from .chain import ChainConfig

T = TypeVar("T")
# Receipt polling backs off from 5 ms to 1 s: a local node answers within milliseconds, a public
# chain within seconds, and neither gets hammered for the whole timeout.
_FIRST_POLL_S, _MAX_POLL_S = 0.005, 1.0


def connect_web3(config: ChainConfig) -> tuple[Web3, requests.Session]:
    """A Web3 on its own HTTP session, after checking the node's chain id."""
    session = requests.Session()
    session.trust_env = False  # a stray HTTP_PROXY must not reroute anchoring traffic
    # No retries inside web3: the caller's worker decides when to try again, and a retried
    # eth_sendRawTransaction would turn a landed transaction into a confusing "already known".
    provider = HTTPProvider(
        config.rpc_url,
        request_kwargs={"timeout": config.timeout_s},
        session=session,
        exception_retry_configuration=None,
    )
    w3 = Web3(provider)
    try:
        chain_id = rpc_call(lambda: w3.eth.chain_id, f"asking {config.rpc_url} for its chain id")
        if chain_id != config.chain_id:
            raise WrongChain(
                f"{config.rpc_url} serves chain id {chain_id}, but chain id {config.chain_id} is configured"
            )
    except BaseException:
        session.close()
        raise
    return w3, session


def fill(tx: TxParams, config: ChainConfig, nonce: int, gas: int | None = None) -> TxParams:
    """Every field pre-filled, so signing needs no RPC (no estimate, no fee or nonce lookups)."""
    filled: TxParams = {
        "type": 2,
        "chainId": config.chain_id,
        "nonce": Nonce(nonce),
        "gas": gas or config.gas_limit,
        "maxFeePerGas": Wei(config.max_fee_per_gas),
        "maxPriorityFeePerGas": Wei(config.max_priority_fee_per_gas),
        "value": Wei(0),
    }
    return tx | filled


def submit(w3: Web3, account: LocalAccount, tx: TxParams) -> HexBytes:
    """Sign locally and send raw: one RPC."""
    signed = account.sign_transaction(cast(Any, tx))
    try:
        return w3.eth.send_raw_transaction(signed.raw_transaction)
    except ContractLogicError as exc:  # nodes that simulate before accepting (hardhat) refuse here
        name, args = revert_reason(exc.data)
        raise AnchorRejected(name, args, detail="refused before mining") from None
    except (Web3Exception, OSError) as exc:
        raise ChainError(f"sending the transaction failed (it may or may not have been accepted): {exc}") from exc


def await_receipt(w3: Web3, tx_hash: HexBytes, config: ChainConfig) -> TxReceipt:
    """The receipt, once ``config.confirmations`` blocks hold it; ``ChainError`` at the deadline."""
    deadline = time.monotonic() + config.timeout_s
    delay = _FIRST_POLL_S
    receipt: TxReceipt | None = None
    try:
        while True:
            if receipt is None or receipt["blockNumber"] + config.confirmations - 1 <= w3.eth.block_number:
                try:
                    again = w3.eth.get_transaction_receipt(tx_hash)
                except (TransactionNotFound, TransactionIndexingInProgress):
                    again = None  # not mined yet, or dropped from its block by a reorg
                if again is not None and (config.confirmations == 1 or _same_block(receipt, again)):
                    return again
                receipt = again
            if time.monotonic() + delay > deadline:
                raise TimeExhausted(f"no receipt with {config.confirmations} confirmation(s)")
            time.sleep(delay)  # poll, backing off, until the deadline
            delay = min(2 * delay, _MAX_POLL_S)
    except (Web3Exception, OSError) as exc:
        raise ChainError(
            f"no confirmed receipt for {hex0x(tx_hash)} within {config.timeout_s} s ({exc}): "
            "its outcome is unknown; resume from latest()"
        ) from exc


def _same_block(first: TxReceipt | None, again: TxReceipt) -> bool:
    return first is not None and first["blockHash"] == again["blockHash"]


def rpc_call(fn: Callable[[], T], what: str) -> T:
    """Run one RPC, translating web3 and network errors into ``ChainError``."""
    try:
        return fn()
    except (Web3Exception, OSError) as exc:
        raise ChainError(f"{what} failed: {exc}") from exc


def hex0x(value: bytes) -> str:
    """0x-prefixed lowercase hex, the form records and messages use."""
    return "0x" + bytes(value).hex()
