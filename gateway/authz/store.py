"""The policy in force, and its reloads: validate, build, test, then swap atomically.

A reload that fails at any step keeps the current policy serving; the rejection, with its
reason, is kept for ``/admin/policy/status`` and handed to the audit path, like every accepted
change (with the files' SHA-256 digests and the new version number). Listeners hear of every
accepted change (``gateway.authz.propagate`` tells the other replicas).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.audit import AuditSink
from gateway.authz import files
from gateway.authz.engine import PolicyEngine
from gateway.errors import PolicyError

log = logging.getLogger(__name__)


Check = Callable[[files.PolicyFiles], None]
"""A check of the gateway's own beyond the files themselves (e.g. pii.yaml against the engine profile);
it raises PolicyError naming the file and the reason."""


def build(root: Path, version: int, checks: Sequence[Check] = ()) -> PolicyEngine:
    """A tested engine for the folder ``root``; raises PolicyError naming the fault."""
    loaded = files.load(root)
    for check in checks:
        check(loaded)
    engine = PolicyEngine(loaded, version)
    failures = engine.run_tests()
    if failures:
        raise PolicyError(f"{root / 'tests.yaml'}: {len(failures)} policy test(s) failed: " + "; ".join(failures))
    return engine


@dataclass
class Rejection:
    at: float
    reason: str
    digests: dict[str, str] = field(default_factory=dict)


class PolicyStore:
    def __init__(self, root: Path, audit: AuditSink, checks: Sequence[Check] = ()) -> None:
        self.root = root
        self._audit = audit
        self._checks = tuple(checks)
        self.engine = build(root, 1, self._checks)  # at start a bad policy is fatal: nothing to keep serving
        self.loaded_at = time.time()
        self.last_rejection: Rejection | None = None
        self.listeners: list[Callable[[PolicyEngine], None]] = []
        """Called with each accepted engine, after the swap; they must not raise."""
        audit.record("policy.loaded", "gateway", self._describe(self.engine))

    @staticmethod
    def _describe(engine: PolicyEngine) -> dict[str, Any]:
        return {"version": engine.version, "digest": engine.files.digest, "files": engine.files.digests}

    def reload(self, actor: str = "gateway") -> bool:
        """Try the folder's current files; True when they replaced the policy in force."""
        try:
            engine = build(self.root, self.engine.version + 1, self._checks)
        except PolicyError as exc:
            digests = _digests(self.root)
            self.last_rejection = Rejection(time.time(), str(exc), digests)
            log.error("policy change rejected, version %d keeps serving: %s", self.engine.version, exc)
            self._audit.record("policy.rejected", actor, {"keeps_version": self.engine.version,
                                                          "reason": str(exc), "files": digests})  # fmt: skip
            return False
        if engine.files.digest == self.engine.files.digest:
            return False
        self.engine = engine  # one reference swap: a request sees the old or the new policy, whole
        self.loaded_at = time.time()
        self.last_rejection = None
        log.info("policy version %d in force (%s)", engine.version, engine.files.digest[:12])
        self._audit.record("policy.accepted", actor, self._describe(engine))
        for listener in self.listeners:
            listener(engine)
        return True

    def status(self) -> dict[str, Any]:
        e = self.engine
        return {
            "version": e.version,
            "digest": e.files.digest,
            "files": e.files.digests,
            "loaded_at": self.loaded_at,
            "rules": len(e.files.rules),
            "role_links": len(e.files.groupings),
            "tests": len(e.files.tests),
            "last_rejection": None if self.last_rejection is None else vars(self.last_rejection),
        }

    async def watch(self, stop: asyncio.Event) -> None:
        """Reload whenever a file in the folder changes (watchfiles), until ``stop`` is set."""
        from watchfiles import awatch

        async for _ in awatch(self.root, stop_event=stop, debounce=200, recursive=True):
            self.reload()  # synchronous: no other reload can interleave on the event loop


def _digests(root: Path) -> dict[str, str]:
    """Digests of whatever is on disk now, also for files too broken to load."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            continue
    return out
