"""What the page keeps between requests: its templates, the OIDC client, and the last ledger verification."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from gateway.audit import AuditTrail
from gateway.identity.oidc import OIDCLogin
from gateway.settings import UISettings
from gateway.timefmt import human


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"


class Console:
    def __init__(self, cfg: UISettings, audit: AuditTrail) -> None:
        self.cfg = cfg
        self.oidc = OIDCLogin(cfg.oidc) if cfg.oidc is not None else None
        self._audit = audit
        self.templates = Environment(loader=PackageLoader("gateway.ui", "templates"),
                                     autoescape=select_autoescape(default=True, default_for_string=True),
                                     enable_async=False, trim_blocks=True, lstrip_blocks=True)  # fmt: skip
        self.templates.filters["when"] = human
        self.templates.filters["age"] = _age
        self.verification: dict[str, Any] | None = None
        self._verifying = asyncio.Lock()

    @property
    def verifying(self) -> bool:
        return self._verifying.locked()

    async def verify(self, max_age_s: float = 60.0) -> dict[str, Any]:
        """Verify the ledger now; one verification at a time (a request during one gets that one's result), and
        a result younger than ``max_age_s`` is reused (the button cannot keep a core busy)."""
        last = self.verification
        if last is not None and time.time() - last["checked_at"] < max_age_s:
            return last
        if self._verifying.locked():
            async with self._verifying:
                if self.verification is not None:
                    return self.verification
        async with self._verifying:
            self.verification = await self._audit.verify()
            return self.verification

    def render(self, name: str, **context: Any) -> str:
        return self.templates.get_template(name).render(**context)

    async def aclose(self) -> None:
        if self.oidc is not None:
            await self.oidc.aclose()
