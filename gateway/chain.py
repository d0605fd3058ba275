"""The gateway's side of anchoring: settings to a ``ChainAnchor``, and the embedded anvil chain.

With ``ledger.chain.rpc_url: embedded`` (the default), ``gateway serve`` runs a local anvil node
whose state persists in ``state_dir/ledger/anvil-state.json``. On first use the gateway makes an
anchoring key (an encrypted keystore, mode 0600), funds it on that local chain and deploys the
AuditAnchor contract, remembering the address in ``state_dir/ledger/chain.json``. Against any
other chain nothing is created: the keystore, the contract address and the funds are the
operator's.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from gateway.settings import Settings
from ledger.anchor import Anvil, ChainAnchor, ChainConfig, ChainError, WrongChain, create_keystore, load_account, rpc
from ledger.anchorer import Anchorer
from ledger.store import open_store

log = logging.getLogger(__name__)


def _paths(settings: Settings) -> tuple[Path, Path, Path]:
    c = settings.ledger.chain
    keystore = c.keystore or settings.ledger_dir() / "anchor-key.json"
    password = c.password_file or keystore.with_name(keystore.name + ".password")
    return keystore, password, settings.ledger_dir() / "chain.json"


def chain_config(settings: Settings, contract: str | None = None) -> ChainConfig:
    c = settings.ledger.chain
    keystore, password, _ = _paths(settings)
    return ChainConfig(rpc_url=c.url(), chain_id=c.chain_id, contract_address=contract or c.contract,
                       keystore_path=keystore, password_path=password, confirmations=c.confirmations,
                       gas_limit=c.gas_limit, max_fee_per_gas=int(c.max_fee_per_gas_gwei * 10**9),
                       max_priority_fee_per_gas=int(c.max_priority_fee_per_gas_gwei * 10**9))  # fmt: skip


def embedded_anvil(settings: Settings) -> Anvil:
    """The local chain node ``gateway serve`` runs (not started yet)."""
    c = settings.ledger.chain
    settings.ledger_dir().mkdir(parents=True, exist_ok=True)
    return Anvil(binary=c.anvil_path, port=c.embedded_port, chain_id=c.chain_id,
                 state_path=settings.ledger_dir() / "anvil-state.json")  # fmt: skip


def prepare_embedded(settings: Settings) -> str:
    """Key, funds and contract on the embedded chain, created on first use; returns the contract address."""
    config = chain_config(settings)
    keystore, password, chain_file = _paths(settings)
    if not keystore.exists():
        log.info("created the anchoring key %s (%s)", keystore, create_keystore(keystore, password))
    account = load_account(keystore, password)
    rpc(config.rpc_url, "anvil_setBalance", account.address, hex(10**21))  # a local chain: gas is free
    known: dict[str, Any] = json.loads(chain_file.read_text()) if chain_file.exists() else {}
    address: str | None = known.get("contract")
    if address and rpc(config.rpc_url, "eth_getCode", address, "latest") not in ("0x", "0x0", None):
        return str(address)
    if address:
        # The node lost its whole state: earlier anchors are gone and verification will say so.
        backup = chain_file.with_name(f"chain.{int(time.time())}.json")
        chain_file.rename(backup)
        log.warning("the embedded chain has no contract at %s (state lost); deploying again (old record: %s)",
                    address, backup)  # fmt: skip
    address = str(ChainAnchor.deploy(config))
    block = rpc(config.rpc_url, "eth_blockNumber")
    chain_file.write_text(json.dumps({"contract": address, "chain_id": config.chain_id, "deployed_at_block": int(
        block, 16)}, indent=2) + "\n")  # fmt: skip
    log.info("deployed AuditAnchor at %s on the embedded chain", address)
    return str(address)


def connect(settings: Settings) -> ChainAnchor:
    """A checked connection to the configured chain and contract."""
    c = settings.ledger.chain
    contract = prepare_embedded(settings) if c.rpc_url == "embedded" else c.contract
    if contract is None:
        raise ChainError("ledger.chain.contract is not set: deploy AuditAnchor on that chain (its owner is the "
                         "anchoring key) and set the address")  # fmt: skip
    return ChainAnchor.connect(chain_config(settings, contract))


def build_anchorer(settings: Settings) -> Anchorer:
    """The background anchorer, connected at once when the chain answers.

    A node that answers as another chain, or without the contract, is a configuration error and
    stops the start. A node that does not answer is not: checkpoints queue, and the anchorer
    connects on a later step.
    """
    anchorer = Anchorer(open_store(settings.ledger_store()), settings.ledger.origin, lambda: connect(settings),
                        interval_s=settings.ledger.chain.interval_s)  # fmt: skip
    try:
        anchorer.chain = connect(settings)
    except WrongChain as exc:
        anchorer.store.close()
        raise ConfigError(f"ledger.chain: {exc}") from None
    except ChainError as exc:
        log.warning("the chain is not reachable (%s); checkpoints queue and are anchored once it is", exc)
    return anchorer
