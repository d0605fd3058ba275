"""The authenticated caller, as authorization and the audit path see it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class Principal:
    """A caller. ``subject`` is stable and safe to log; no credential material is kept."""

    subject: str
    """``user:<sub>`` for a JWT, ``apikey:<key id>`` for an API key, ``service:<name>`` for the gateway's own
    identities, which hold no credential (the fairness auditor)."""
    kind: Literal["user", "apikey", "service"]
    roles: frozenset[str]
    """Role names granted by the credential (``analyst``), before inheritance; Casbin sees ``role:analyst``."""
    owner: str = ""
    """The API key's owner, or the JWT's subject."""
