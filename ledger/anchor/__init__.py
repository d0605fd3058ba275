"""Anchoring the ledger's checkpoint roots in the AuditAnchor contract on an EVM chain."""

from ._artifact import load_artifact
from .anvil import Anvil, find_anvil, rpc
from .chain import AnchorRecord, ChainAnchor, ChainConfig, check_on_chain
from .errors import AnchorRejected, ChainError, WrongChain
from .keystore import create_keystore, load_account

__all__ = [
    "AnchorRecord",
    "AnchorRejected",
    "Anvil",
    "ChainAnchor",
    "ChainConfig",
    "ChainError",
    "WrongChain",
    "check_on_chain",
    "create_keystore",
    "find_anvil",
    "load_account",
    "load_artifact",
    "rpc",
]
