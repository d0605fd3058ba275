"""The shipped Casbin model, compiled: cold decisions in microseconds instead of milliseconds.

pycasbin evaluates its matcher through a general expression evaluator, about 190 µs per
``enforce_ex`` call here, and a cold decision needs two calls per role of the caller. When
``model.conf`` is exactly the model the gateway ships (request and policy definitions, effect
and matcher, compared token by token), its meaning is known:

    allow  iff  some rule with eft=allow matches  and  no rule with eft=deny matches
    match  iff  (p.sub == r.sub or p.sub in r.roles) and keyMatch(r.obj, p.obj)
                and (p.act == "*" or p.act == r.act)

and ``keyMatch`` is "equal, or starts with the part before the first ``*``". ``CompiledPolicy``
evaluates exactly that over the rules grouped by subject, and names the same rule Casbin would.
A model.conf that differs in any way is decided by Casbin's enforcers. ``PolicyEngine``
cross-checks the two on every load (the policy's tests and a sample of its rules) and keeps
Casbin when they disagree, so Casbin stays the reference for what a policy means.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

Outcome = tuple[bool, tuple[str, ...] | None]
"""Allowed, and the policy line that decided (None: nothing matched, default deny)."""

SHIPPED = {
    "request_definition": {"r": "sub, roles, obj, act"},
    "policy_definition": {"p": "sub, obj, act, eft"},
    "policy_effect": {"e": "some(where (p.eft == allow)) && !some(where (p.eft == deny))"},
    "matchers": {
        "m": '(r.sub == p.sub || p.sub in r.roles) && keyMatch(r.obj, p.obj) && (p.act == "*" || r.act == p.act)'
    },
}


def _sections(model_text: str) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    section = ""
    for raw in model_text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            out.setdefault(section, {})
        elif "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(section, {})[key.strip()] = re.sub(r"\s+", "", value)
    return out


def is_shipped_model(model_text: str) -> bool:
    """Whether ``model_text`` means exactly the shipped model (whitespace and comments aside)."""
    mine = _sections(model_text)
    for section, entries in SHIPPED.items():
        if mine.get(section, {}) != {k: re.sub(r"\s+", "", v) for k, v in entries.items()}:
            return False
    return True


@dataclass(frozen=True, slots=True)
class _Rule:
    prefix: str
    wildcard: bool
    act: str
    deny: bool
    line: tuple[str, ...]

    def matches(self, obj: str, act: str) -> bool:
        if self.act != "*" and self.act != act:
            return False
        return obj.startswith(self.prefix) if self.wildcard else obj == self.prefix


class CompiledPolicy:
    """The shipped model's decisions over one policy's rules."""

    def __init__(self, rules: list[list[str]]) -> None:
        self._by_subject: dict[str, list[_Rule]] = {}
        for rule in rules:
            sub, obj, act, eft = rule[:4]
            star = obj.find("*")
            compiled = _Rule(obj if star < 0 else obj[:star], star >= 0, act, eft == "deny", tuple(rule))
            self._by_subject.setdefault(sub, []).append(compiled)

    def subjects(self) -> frozenset[str]:
        return frozenset(self._by_subject)

    def decide(self, subject: str, roles: frozenset[str], obj: str, act: str) -> Outcome:
        """``(allowed, deciding rule)``: the first matching deny, else the first matching allow, else none.

        Subjects are visited in sorted order and rules in policy order, as ``PolicyEngine`` visits
        its per-subject Casbin enforcers, so both name the same rule.
        """
        allow: tuple[str, ...] | None = None
        for key in sorted(({subject} | roles) & self._by_subject.keys()):
            first_allow = None
            for rule in self._by_subject[key]:
                if not rule.matches(obj, act):
                    continue
                if rule.deny:
                    return False, rule.line
                if first_allow is None:
                    first_allow = rule.line
            if allow is None:
                allow = first_allow
        return allow is not None, allow
