"""Apply the policy's operators to what the analyzer found.

Overlapping findings (a URL inside an email address) are resolved first: the higher score wins,
then the longer span, then the earlier one. Then each finding is replaced as its kind's operator
says. (Presidio's anonymizer does the same, but importing it loads Presidio's analyzer and spaCy into
the gateway process, which only ever needs these string operations: analysis itself runs in the
worker processes.)

- ``replace``: ``<EMAIL_ADDRESS>``, or with pseudonyms ``<EMAIL_ADDRESS_1>``: the same value gets
  the same number within a request (``Vault``), so the model can still tell two people apart;
- ``hash``: ``<US_SSN:9f86d081884c7d65>``, an HMAC-SHA256 under the gateway's key, so the same
  value always hashes alike but nobody without the key can test guesses against it;
- ``mask``: stars but for the last four characters; ``redact``: removed;
- ``block``: in a request, ``PIIBlocked`` naming the kind (never the value); in an answer, which
  cannot be refused any more, it acts as ``replace``.

The vault maps placeholders to values for one request, in memory only, and is never logged.
"""

from __future__ import annotations

import hmac
from collections import Counter
from collections.abc import Sequence
from hashlib import sha256
from typing import Literal

from gateway.pii.engine import Finding
from gateway.pii.policy import PIIRules

Direction = Literal["request", "response"]
Counts = Counter[tuple[str, str]]
"""How many findings of each kind got each operator: what the ledger records (never values)."""


class PIIBlocked(Exception):
    """The request holds a kind of data the policy blocks."""

    def __init__(self, entity: str) -> None:
        super().__init__(entity)
        self.entity = entity


class Vault:
    """Numbered placeholders for one request: the same value, the same placeholder."""

    def __init__(self) -> None:
        self._by_value: dict[tuple[str, str], str] = {}
        self.values: dict[str, str] = {}
        """Placeholder to original value, for restoring answers."""
        self._next: Counter[str] = Counter()

    def placeholder(self, entity: str, value: str) -> str:
        key = (entity, value)
        found = self._by_value.get(key)
        if found is None:
            self._next[entity] += 1
            found = self._by_value[key] = f"<{entity}_{self._next[entity]}>"
            self.values[found] = value
        return found

    def __repr__(self) -> str:
        return f"Vault({len(self.values)} placeholders)"  # never the values

    def to_json(self) -> list[list[str]]:
        """``[[entity, value, placeholder], ...]`` in the order they were made (for the encrypted store)."""
        return [[entity, value, placeholder] for (entity, value), placeholder in self._by_value.items()]

    @classmethod
    def from_json(cls, rows: list[list[str]]) -> Vault:
        vault = cls()
        for entity, value, placeholder in rows:
            vault._by_value[(entity, value)] = placeholder
            vault.values[placeholder] = value
            vault._next[entity] = max(vault._next[entity], int(placeholder.rsplit("_", 1)[1].rstrip(">")))
        return vault


class Redactor:
    """Operators over findings; one per gateway, stateless but for its HMAC key."""

    def __init__(self, hash_key: bytes) -> None:
        self._key = hash_key

    def digest(self, value: str) -> str:
        return hmac.new(self._key, value.encode(), sha256).hexdigest()[:16]

    def apply(self, text: str, findings: Sequence[Finding], rules: PIIRules, direction: Direction,
              vault: Vault | None = None) -> tuple[str, Counts]:  # fmt: skip
        """``text`` with every finding replaced as the rules say, and the counts per kind and operator."""
        if not findings:
            return text, Counter()
        if direction == "request":
            for f in findings:
                if rules.operator(f.entity) == "block":
                    raise PIIBlocked(f.entity)
        out: list[str] = []
        counts: Counts = Counter()
        pos = 0
        for f in _resolve(findings):  # in reading order, so pseudonyms are numbered as they appear
            op = "replace" if rules.operator(f.entity) == "block" else rules.operator(f.entity)
            out += [text[pos : f.start], self._replacement(f.entity, text[f.start : f.end], op, rules, vault)]
            counts[(f.entity, op)] += 1
            pos = f.end
        out.append(text[pos:])
        return "".join(out), counts

    def _replacement(self, entity: str, value: str, op: str, rules: PIIRules, vault: Vault | None) -> str:
        if op == "replace":
            return vault.placeholder(entity, value) if vault is not None and rules.pseudonymize else f"<{entity}>"
        if op == "hash":
            return f"<{entity}:{self.digest(value)}>"
        if op == "mask":
            return _mask(value)
        if op == "redact":
            return ""
        raise ValueError(f"no operator {op!r} for {entity}")  # 'allow' never reaches here: not looked for


def _resolve(findings: Sequence[Finding]) -> list[Finding]:
    """Findings that do not overlap, in reading order: of two that overlap, the higher score wins, then the
    longer span, then the earlier one."""
    chosen: list[Finding] = []
    for f in sorted(findings, key=lambda f: (-f.score, f.start - f.end, f.start)):
        if all(f.end <= c.start or f.start >= c.end for c in chosen):
            chosen.append(f)
    return sorted(chosen, key=lambda f: f.start)


def _mask(value: str) -> str:
    """Stars for every character but spaces and the last four others: ``**** **** **** 1111``."""
    keep = 4 if sum(not c.isspace() for c in value) > 4 else 0
    out: list[str] = []
    for ch in reversed(value):
        if ch.isspace() or keep:
            keep -= 0 if ch.isspace() else 1
            out.append(ch)
        else:
            out.append("*")
    return "".join(reversed(out))
