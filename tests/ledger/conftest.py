"""Ledger fixtures. Anchoring: one real anvil node and one deployed AuditAnchor per session."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from ledger.anchor import Anvil, ChainAnchor, ChainConfig, ChainError, create_keystore

# A cheap scrypt cost for test keys: decrypting at the default n takes ~1.5 s per connect.
TEST_SCRYPT_N = 2**10


@dataclass(frozen=True)
class AnchorKey:
    """A test key: keystore and password files, and the account's address."""

    keystore: Path
    password: Path
    address: str


def make_anchor_key(directory: Path, name: str = "anchor") -> AnchorKey:
    """A fresh keystore (cheap scrypt) in ``directory``."""
    keystore, password = directory / f"{name}.keystore.json", directory / f"{name}.password"
    address = create_keystore(keystore, password, scrypt_n=TEST_SCRYPT_N)
    return AnchorKey(keystore, password, address)


def anchor_config(node: Anvil, key: AnchorKey, contract_address: str | None = None) -> ChainConfig:
    """A ChainConfig for ``node``, signing with ``key``."""
    return ChainConfig(
        rpc_url=node.url,
        chain_id=node.chain_id,
        contract_address=contract_address,
        keystore_path=key.keystore,
        password_path=key.password,
        timeout_s=10,
    )


def deploy_on(node: Anvil, key: AnchorKey) -> ChainConfig:
    """Fund ``key`` on ``node``, deploy AuditAnchor with it, return the config to connect."""
    node.fund(key.address)
    config = anchor_config(node, key)
    return replace(config, contract_address=ChainAnchor.deploy(config))


@pytest.fixture(scope="session")
def anchor_anvil(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anvil]:
    """The session's anvil node (its state file in a temporary directory)."""
    try:
        node = Anvil(state_path=tmp_path_factory.mktemp("anvil") / "state.json")
    except ChainError as exc:
        pytest.skip(str(exc))
    with node:
        yield node


@pytest.fixture(scope="session")
def anchor_key(tmp_path_factory: pytest.TempPathFactory) -> AnchorKey:
    """The owner's key, created once per session."""
    return make_anchor_key(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="session")
def anchor_deployed(anchor_anvil: Anvil, anchor_key: AnchorKey) -> ChainConfig:
    """AuditAnchor deployed once on the session's node; the config of its owner."""
    return deploy_on(anchor_anvil, anchor_key)


@pytest.fixture(scope="session")
def anchor_chain(anchor_deployed: ChainConfig) -> Iterator[ChainAnchor]:
    """The owner's connection to the session's contract."""
    with ChainAnchor.connect(anchor_deployed) as chain:
        yield chain
