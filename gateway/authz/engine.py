"""One immutable policy version: Casbin enforcers, role expansion, limits, and a decision cache.

The gateway asks Casbin ``(sub, roles, obj, act)``: ``sub`` is the caller (``apikey:<id>`` or
``user:<sub>``), ``roles`` the caller's roles as ``role:NAME``, already expanded through the
``g`` role hierarchy (and through ``g`` lines naming the caller itself), ``obj`` the normalized
route (``route:/v1/chat/completions``) or model (``model:llama-3``), ``act`` the action.

Casbin evaluates its matcher once per policy line (about 2-5 µs each), so decisions are cached
per (roles, object, action), and per subject only for subjects the policy names; a new policy
version is a new engine with an empty cache.
With deny-override, Casbin names the rule only for a deny; for an allow a second enforcer with
an allow-first effect names the rule that allowed.

When model.conf is the shipped model, cold decisions come from its compiled form
(``compiled.py``, microseconds instead of milliseconds), cross-checked against the Casbin
enforcers at every load; any disagreement, or any other model, leaves the decisions to Casbin.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

import casbin
from casbin.model import Model

from gateway.authz.compiled import CompiledPolicy, is_shipped_model
from gateway.authz.files import Limits, PolicyFiles, RateLimit, RoleLimits
from gateway.errors import PolicyError
from gateway.identity.principal import Principal
from gateway.pii.policy import PIIRules, resolve

_ALLOW_FIRST = "some(where (p.eft == allow))"
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    rule: tuple[str, ...] | None
    """The policy line that decided, or None when nothing matched (default deny)."""

    @property
    def reason(self) -> str:
        if self.rule is not None:
            return f"{self.rule[3]} by rule {', '.join(self.rule)}"
        return "no rule allows it (default deny)"


@dataclass(frozen=True, slots=True)
class Effective:
    """A caller's limits: the most generous of its roles' and the default's."""

    max_tokens: int | None
    stream: bool
    rates: tuple[RateLimit, ...]


def _enforcer(model_text: str, rules: list[list[str]], groupings: list[list[str]]) -> casbin.Enforcer:
    model = Model()
    model.load_model_from_text(model_text)
    e = casbin.Enforcer(model)
    if rules and not e.add_policies(rules):
        raise PolicyError("Casbin refused the rules")
    if groupings and not e.add_named_grouping_policies("g", groupings):
        raise PolicyError("Casbin refused the role links")
    return e


def _allow_first(model_text: str) -> str:
    lines = []
    section = ""
    for line in model_text.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped
        if section == "[policy_effect]" and stripped.startswith("e") and "=" in stripped:
            line = f"e = {_ALLOW_FIRST}"
        lines.append(line)
    return "\n".join(lines)


class PolicyEngine:
    def __init__(self, files: PolicyFiles, version: int) -> None:
        self.files = files
        self.version = version
        by_subject: dict[str, list[list[str]]] = {}
        for rule in files.rules:
            by_subject.setdefault(rule[0], []).append(rule)
        explaining = _allow_first(files.model_text)
        try:
            # The whole policy, for role expansion and to check the index below against.
            self._enforcer = _enforcer(files.model_text, files.rules, files.groupings)
            # One small enforcer pair per rule subject: a decision consults only the caller's own
            # and its roles' rules (tens of lines, not thousands).
            self._index = {
                sub: (_enforcer(files.model_text, rules, []), _enforcer(explaining, rules, []))
                for sub, rules in by_subject.items()
            }
        except PolicyError:
            raise
        except Exception as exc:  # casbin raises bare exceptions for a model it cannot use
            raise PolicyError(f"model.conf: Casbin cannot build an enforcer: {exc}") from None
        # Subjects that rules or role links name; any other caller is decided by its roles alone,
        # so callers with the same roles share cached decisions.
        self._named = frozenset(r[0] for r in files.rules) | frozenset(g[0] for g in files.groupings)
        self._decide = lru_cache(maxsize=65536)(self._decide_uncached)
        self._roles = lru_cache(maxsize=4096)(self._expand_uncached)
        self._limits = lru_cache(maxsize=4096)(self._limits_uncached)
        self._pii = lru_cache(maxsize=4096)(self._pii_uncached)
        self._compiled: CompiledPolicy | None = None
        if is_shipped_model(files.model_text):
            compiled = CompiledPolicy(files.rules)
            disagree = [c for c in self._sample() if compiled.decide(*c) != self._casbin_decide(*c)]
            if disagree:
                log.warning("policy v%d: compiled decisions differ from Casbin's for %s; using Casbin", version,
                            disagree[:3])  # fmt: skip
            else:
                self._compiled = compiled

    @property
    def compiled(self) -> bool:
        """Whether cold decisions come from the compiled model (else from Casbin's enforcers)."""
        return self._compiled is not None

    def _sample(self, limit: int = 100) -> list[tuple[str, frozenset[str], str, str]]:
        """Cases to cross-check compiled decisions against Casbin: the policy's tests, and for a spread of
        rules a request each rule matches and one with another action."""
        cases = [(t.subject if t.subject in self._named else "-",
                  self._expand_uncached(t.subject, frozenset(t.roles)), t.object, t.action)
                 for t in self.files.tests]  # fmt: skip
        rules = self.files.rules
        step = max(1, len(rules) // limit)
        for rule in rules[::step][:limit]:
            sub, obj, act = rule[0], rule[1], rule[2]
            subject = "-" if sub.startswith("role:") else sub
            roles = self._expand_uncached(subject, frozenset({sub[5:]}) if sub.startswith("role:") else frozenset())
            concrete = obj.replace("*", "x", 1).split("*", 1)[0]
            for a in {"infer", "admin"} if act == "*" else {act, "read" if act != "read" else "infer"}:
                cases.append((subject, roles, concrete, a))
        return cases

    def _expand_uncached(self, subject: str, roles: frozenset[str]) -> frozenset[str]:
        out: set[str] = set()
        for name in (subject, *(f"role:{r}" for r in roles)):
            if name.startswith("role:"):
                out.add(name)
            out.update(self._enforcer.get_implicit_roles_for_user(name))
        return frozenset(out)

    def roles(self, principal: Principal) -> frozenset[str]:
        """The caller's roles as Casbin names, through the whole hierarchy."""
        return self._roles(principal.subject, principal.roles)

    def _decide_uncached(self, subject: str, roles: frozenset[str], obj: str, act: str) -> Decision:
        if self._compiled is not None:
            return Decision(*self._compiled.decide(subject, roles, obj, act))
        return Decision(*self._casbin_decide(subject, roles, obj, act))

    def _casbin_decide(
        self, subject: str, roles: frozenset[str], obj: str, act: str
    ) -> tuple[bool, tuple[str, ...] | None]:
        allow: list[str] | None = None
        for key in sorted(({subject} | roles) & self._index.keys()):
            main, explainer = self._index[key]
            ok, explain = main.enforce_ex(subject, roles, obj, act)
            if not ok and explain:
                return False, tuple(explain)  # an explicit deny overrides every allow
            if ok and allow is None:
                allow = explainer.enforce_ex(subject, roles, obj, act)[1] or None
        return allow is not None, tuple(allow) if allow else None

    def check_index(self, cases: list[tuple[str, frozenset[str], str, str]]) -> list[str]:
        """Disagreements between the indexed decisions and the whole policy's (a matcher that does
        not select rules by subject would make the index wrong)."""
        bad = []
        for subject, roles, obj, act in cases:
            whole = bool(self._enforcer.enforce(subject, roles, obj, act))
            if whole != self._casbin_decide(subject, roles, obj, act)[0]:
                bad.append(f"({subject}, {sorted(roles)}, {obj}, {act})")
        return bad

    def decide(self, principal: Principal, obj: str, act: str) -> Decision:
        subject = principal.subject if principal.subject in self._named else "-"
        return self._decide(subject, self.roles(principal), obj, act)

    def _limits_uncached(self, roles: frozenset[str]) -> Effective:
        limits: Limits = self.files.limits
        entries = [limits.default] + [limits.roles[r[5:]] for r in sorted(roles) if r[5:] in limits.roles]
        caps = [e.max_tokens for e in entries if e.max_tokens is not None]
        streams = [e.stream for e in entries if e.stream is not None]
        return Effective(
            max_tokens=max(caps) if caps else None,
            stream=any(streams) if streams else True,
            rates=_most_generous(entries),
        )

    def limits(self, principal: Principal) -> Effective:
        return self._limits(self.roles(principal))

    def pii(self, principal: Principal, model: str) -> PIIRules:
        """The PII rules (pii.yaml) for this caller and model."""
        return self._pii(self.roles(principal), model)

    def _pii_uncached(self, roles: frozenset[str], model: str) -> PIIRules:
        return resolve(self.files.pii, frozenset(r.removeprefix("role:") for r in roles), model)

    def run_tests(self) -> list[str]:
        """The failures of the policy's own tests (tests.yaml), as readable lines."""
        cases = [(t.subject, self.roles(Principal(t.subject, "user", frozenset(t.roles))), t.object, t.action)
                 for t in self.files.tests]  # fmt: skip
        bad = self.check_index(cases)
        if bad:
            return [f"model.conf: the matcher must select rules by subject (r.sub == p.sub || p.sub in r.roles); "
                    f"decisions differ for {', '.join(bad)}"]  # fmt: skip
        failures = []
        for t in self.files.tests:
            principal = Principal(t.subject, "user", frozenset(t.roles))
            d = self.decide(principal, t.object, t.action)
            got = "allow" if d.allowed else "deny"
            if got != t.expect:
                failures.append(f"{t.name}: expected {t.expect}, got {got} ({d.reason})")
        return failures


def _most_generous(entries: list[RoleLimits]) -> tuple[RateLimit, ...]:
    """Per model pattern, the highest limit any entry grants (an entry without a limit grants none)."""
    best: dict[str, RateLimit] = {}
    for entry in entries:
        for rate in entry.rate:
            old = best.get(rate.model)
            if old is None:
                best[rate.model] = rate
                continue
            best[rate.model] = RateLimit(
                model=rate.model,
                requests_per_minute=_max(old.requests_per_minute, rate.requests_per_minute),
                tokens_per_minute=_max(old.tokens_per_minute, rate.tokens_per_minute),
            )
    return tuple(best.values())


def _max(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else max(a, b)
