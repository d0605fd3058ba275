"""The committed compiler output for AuditAnchor.sol: Python never runs a compiler."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

ARTIFACT_PATH = Path(__file__).resolve().parent / "AuditAnchor.json"


@cache
def load_artifact() -> dict[str, Any]:
    """contractName, compiler, settings, abi, bytecode and deployedBytecode (see js/compile.js)."""
    artifact: dict[str, Any] = json.loads(ARTIFACT_PATH.read_text(encoding="utf-8"))
    return artifact
