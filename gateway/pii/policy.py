"""``policies/pii.yaml``: what personal data the gateway looks for, and what it does with each kind.

Security teams own this file. It is validated with the rest of the policy folder, at start and on
every reload, and a bad edit is rejected with its file, key and reason while the old policy
keeps serving. ``resolve`` turns it into the rules for one caller and one model.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Operator = Literal["replace", "mask", "hash", "redact", "block", "allow"]

NER_ENTITIES = frozenset({"PERSON", "LOCATION", "NRP"})
"""Found only by the spaCy NER model (the ``full`` engine profile)."""
PATTERN_ENTITIES = frozenset({
    "CREDIT_CARD", "CRYPTO", "DATE_TIME", "EMAIL_ADDRESS", "IBAN_CODE", "IP_ADDRESS", "MAC_ADDRESS",
    "MEDICAL_LICENSE", "PHONE_NUMBER", "UK_NHS", "URL", "US_BANK_NUMBER", "US_DRIVER_LICENSE", "US_ITIN",
    "US_PASSPORT", "US_SSN", "UUID",
})  # fmt: skip
"""Found by Presidio's pattern and checksum recognizers (both profiles)."""
KNOWN_ENTITIES = NER_ENTITIES | PATTERN_ENTITIES


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_entities(value: dict[str, Operator]) -> dict[str, Operator]:
    unknown = sorted(set(value) - KNOWN_ENTITIES)
    if unknown:
        raise ValueError(f"unknown entity {unknown[0]!r} (one of {', '.join(sorted(KNOWN_ENTITIES))})")
    return value


class Override(_Strict):
    """Rules for some roles and/or models; later overrides win, entity by entity."""

    roles: tuple[str, ...] = ()
    """Applies when the caller has any of these roles (empty: any caller)."""
    models: tuple[str, ...] = ()
    """Applies to these model names or patterns such as ``llama-*`` (empty: any model)."""
    threshold: float | None = Field(None, ge=0, le=1)
    entities: dict[str, Operator] = {}
    allow: tuple[str, ...] = ()
    """More values never treated as personal data (added to the default list)."""
    pseudonymize: bool | None = None
    see_unredacted: bool | None = None

    _entities = field_validator("entities")(_check_entities)

    @model_validator(mode="after")
    def _names(self) -> Override:
        for role in self.roles:
            if not role or role.startswith("role:"):
                raise ValueError(f"roles are plain names such as 'analyst', not {role!r}")
        return self


class PIIPolicy(_Strict):
    threshold: float = Field(0.5, ge=0, le=1)
    """Findings scoring below this are ignored (Presidio scores 0 to 1)."""
    entities: dict[str, Operator] = Field(min_length=1)
    """What to do with each kind of personal data; kinds not listed pass untouched."""
    allow: tuple[str, ...] = ()
    """Values that are never treated as personal data, such as the company's support address."""
    pseudonymize: bool = False
    """``replace`` gives numbered placeholders (``<PERSON_1>``), the same for the same value in one
    request; roles that may see unredacted answers get the real values back in the answer."""
    see_unredacted: tuple[str, ...] = ()
    """Roles whose answers are not redacted (and get pseudonyms restored)."""
    pseudonym_scope: Literal["request", "conversation"] = "request"
    """``conversation``: requests that carry the same ``X-Conversation-Id`` share placeholders; the mapping is
    kept encrypted (AES-GCM) for ``conversation_ttl_s``. ``request``: it lives in memory for one request."""
    conversation_ttl_s: int = Field(86_400, ge=60, le=30 * 86_400)
    on_error: Literal["fail_closed", "fail_open"] = "fail_closed"
    """When the analyzer fails or times out: refuse (503), or pass the text unredacted (audited)."""
    timeout_ms: int = Field(3000, ge=10, le=120_000)
    """Analysis budget per request (all of its texts); over it, ``on_error`` applies."""
    stream_hold_chars: int = Field(64, ge=8, le=4096)
    """Streamed answers are held back by this many characters, so no value is ever released partly."""
    overrides: tuple[Override, ...] = ()

    _entities = field_validator("entities")(_check_entities)


@dataclass(frozen=True, slots=True)
class PIIRules:
    """The PII rules in force for one caller and one model."""

    threshold: float
    operators: tuple[tuple[str, Operator], ...]
    """Entity and operator, for every entity that is looked for (``allow`` ones are left out)."""
    allow: tuple[str, ...]
    pseudonymize: bool
    see_unredacted: bool
    on_error: Literal["fail_closed", "fail_open"]
    timeout_s: float
    hold: int
    conversation_ttl_s: int | None = None
    """Set when pseudonyms are kept per conversation (``pseudonym_scope: conversation``)."""

    @property
    def entities(self) -> tuple[str, ...]:
        return tuple(e for e, _ in self.operators)

    def operator(self, entity: str) -> Operator:
        return dict(self.operators).get(entity, "allow")


def resolve(policy: PIIPolicy, roles: frozenset[str], model: str) -> PIIRules:
    """The rules for a caller with ``roles`` (plain names) asking ``model``."""
    threshold = policy.threshold
    entities = dict(policy.entities)
    allow = list(policy.allow)
    pseudonymize = policy.pseudonymize
    see = bool(roles & set(policy.see_unredacted))
    for o in policy.overrides:
        if o.roles and not roles & set(o.roles):
            continue
        if o.models and not any(fnmatch.fnmatchcase(model, m) for m in o.models):
            continue
        threshold = o.threshold if o.threshold is not None else threshold
        entities.update(o.entities)
        allow += o.allow
        pseudonymize = o.pseudonymize if o.pseudonymize is not None else pseudonymize
        see = o.see_unredacted if o.see_unredacted is not None else see
    operators = tuple(sorted((e, op) for e, op in entities.items() if op != "allow"))
    ttl = policy.conversation_ttl_s if pseudonymize and policy.pseudonym_scope == "conversation" else None
    return PIIRules(threshold, operators, tuple(dict.fromkeys(allow)), pseudonymize, see, policy.on_error,
                    policy.timeout_ms / 1000, policy.stream_hold_chars, ttl)  # fmt: skip


def check_profile(policy: PIIPolicy, profile: str) -> None:
    """Raise ValueError if the policy asks for entities the engine profile cannot find."""
    if profile == "full":
        return
    asked = {e for e, op in policy.entities.items() if op != "allow"}
    for o in policy.overrides:
        asked |= {e for e, op in o.entities.items() if op != "allow"}
    missing = sorted(asked & NER_ENTITIES)
    if missing:
        raise ValueError(f"{', '.join(missing)} can only be found by the 'full' engine profile (spaCy NER), "
                         f"but the gateway runs the {profile!r} profile")  # fmt: skip
