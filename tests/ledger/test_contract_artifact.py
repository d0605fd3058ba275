"""The committed AuditAnchor.json is what the pinned solc-js makes of AuditAnchor.sol."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from ledger.anchor import load_artifact

ANCHOR = Path(__file__).resolve().parents[2] / "ledger" / "anchor"
JS = ANCHOR / "js"


def test_recompiling_gives_the_committed_artifact() -> None:
    """A fresh compile of AuditAnchor.sol equals the committed JSON byte for byte."""
    node = shutil.which("node")
    if node is None or not (JS / "node_modules" / "solc").is_dir():
        pytest.skip("needs node and solc-js: npm ci --prefix ledger/anchor/js")
    fresh = subprocess.run(
        [node, str(JS / "compile.js"), str(ANCHOR / "AuditAnchor.sol"), "AuditAnchor", "-"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    committed = (ANCHOR / "AuditAnchor.json").read_text(encoding="utf-8")
    assert json.loads(fresh)["compiler"] == json.loads(committed)["compiler"], "solc-js drifted from the pin"
    assert fresh == committed, "stale artifact: run node ledger/anchor/js/compile.js and commit AuditAnchor.json"


def test_toolchain_is_pinned_exactly() -> None:
    """package.json pins solc 0.8.37 and anvil 1.7.1 exactly, and the artifact says how it was built."""
    dependencies = json.loads((JS / "package.json").read_text(encoding="utf-8"))["dependencies"]
    assert dependencies == {"solc": "0.8.37", "@foundry-rs/anvil": "1.7.1"}
    artifact = load_artifact()
    assert artifact["compiler"]["version"].startswith("0.8.37+")
    assert artifact["settings"] == {
        "optimizer": {"enabled": True, "runs": 200},
        "evmVersion": "paris",
        "metadata": {"bytecodeHash": "none"},
    }


def test_abi_is_what_python_relies_on() -> None:
    """The ABI has the functions, event and custom errors that ledger.anchor calls and decodes."""
    abi = {(item["type"], item.get("name")): item for item in load_artifact()["abi"]}
    signature = {key: ",".join(i["type"] for i in item.get("inputs", [])) for key, item in abi.items()}
    assert signature[("function", "anchor")] == "bytes32,uint64,bytes32"
    assert signature[("function", "latest")] == "bytes32"
    assert [o["type"] for o in abi[("function", "latest")]["outputs"]] == ["uint64", "bytes32", "uint256"]
    assert signature[("event", "Anchored")] == "bytes32,uint64,bytes32,uint256"
    assert [i["indexed"] for i in abi[("event", "Anchored")]["inputs"]] == [True, True, False, False]
    assert signature[("error", "NotOwner")] == ""
    assert signature[("error", "NotIncreasing")] == "uint64,uint64"
    assert signature[("error", "DuplicateRoot")] == "bytes32"
