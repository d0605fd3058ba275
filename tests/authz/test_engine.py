"""Decisions: roles with inheritance, wildcards, routes, deny-override, the deciding rule, limits, rates."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.authz.engine import PolicyEngine
from gateway.authz.ratelimit import WINDOW_S, RateLimiter
from gateway.authz.store import build
from gateway.errors import RateLimited
from gateway.identity.principal import Principal

POLICIES = Path(__file__).resolve().parents[2] / "policies"


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return build(POLICIES, 1)


def who(*roles: str, subject: str = "user:t") -> Principal:
    return Principal(subject, "user", frozenset(roles))


@pytest.mark.parametrize(
    ("roles", "obj", "act", "allowed", "rule"),
    [
        (("user",), "model:llama-3.1-8b", "infer", True, ("role:user", "model:llama-*", "infer", "allow")),
        (("user",), "model:gpt-oss-120b", "infer", False, None),
        (("user",), "model:e5-small", "infer", False, None),  # embed is allowed, infer is not
        (("premium",), "model:llama-3.1-8b", "infer", True, ("role:user", "model:llama-*", "infer", "allow")),
        (("premium",), "model:gpt-oss-120b", "infer", True, ("role:premium", "model:gpt-oss-*", "infer", "allow")),
        (
            ("contractor",),
            "model:llama-guard-3",
            "infer",
            False,
            ("role:contractor", "model:llama-guard-*", "infer", "deny"),
        ),
        (("contractor",), "model:llama-3", "infer", True, ("role:user", "model:llama-*", "infer", "allow")),
        (
            ("user", "contractor"),
            "model:llama-guard-3",
            "infer",
            False,
            ("role:contractor", "model:llama-guard-*", "infer", "deny"),
        ),
        (("admin",), "route:/admin/policy/reload", "admin", True, ("role:admin", "route:/*", "*", "allow")),
        (("admin", "suspended"), "route:/v1/models", "read", False, ("role:suspended", "route:/*", "*", "deny")),
        (("user",), "route:/admin/policy/reload", "admin", False, None),
        ((), "route:/v1/models", "read", False, None),
    ],
)
def test_decisions(engine: PolicyEngine, roles, obj, act, allowed, rule) -> None:
    """Each decision is as the policy says, and names the rule that decided it."""
    d = engine.decide(who(*roles), obj, act)
    assert (d.allowed, d.rule) == (allowed, rule)


def test_role_links_for_a_single_key(tmp_path: Path) -> None:
    """A g line can give one API key a role, on top of the roles it was created with."""
    import shutil

    folder = tmp_path / "p"
    shutil.copytree(POLICIES, folder)
    with (folder / "policy.csv").open("a") as f:
        f.write("g, apikey:abc123abc123, role:premium\n")
    e = build(folder, 2)
    key = Principal("apikey:abc123abc123", "apikey", frozenset({"user"}))
    assert e.decide(key, "model:gpt-oss-1", "infer").allowed
    assert not e.decide(Principal("apikey:other", "apikey", frozenset({"user"})), "model:gpt-oss-1", "infer").allowed


def test_limits_take_the_most_generous_role(engine: PolicyEngine) -> None:
    """Limits come from the default and the caller's roles (inherited ones too), the most generous winning."""
    user = engine.limits(who("user"))
    assert user.max_tokens == 1024 and user.stream
    assert user.rates[0].requests_per_minute == 60
    premium = engine.limits(who("premium"))
    assert premium.max_tokens == 4096 and premium.rates[0].requests_per_minute == 600
    svc = engine.limits(who("service"))
    assert svc.max_tokens == 1024 and svc.rates[0].tokens_per_minute == 1_200_000


def test_rate_limiter_windows(engine: PolicyEngine) -> None:
    """Requests and tokens per minute are enforced per caller, with Retry-After, and the window slides."""
    limiter = RateLimiter()
    limits = engine.limits(who("user"))  # 60 requests and 60,000 tokens a minute
    t0 = 1000.0
    for i in range(60):
        keys = limiter.admit("user:a", "llama-3", limits, now=t0 + i * 0.1)
    with pytest.raises(RateLimited) as info:
        limiter.admit("user:a", "llama-3", limits, now=t0 + 10)
    assert info.value.status == 429 and int(info.value.headers["retry-after"]) == 50
    limiter.admit("user:b", "llama-3", limits, now=t0 + 10)  # another caller has its own window
    limiter.admit("user:a", "llama-3", limits, now=t0 + WINDOW_S + 0.05)  # the first request left the window
    limiter.add_tokens(keys, 60_000, now=t0 + 61)
    with pytest.raises(RateLimited, match="tokens per minute"):
        limiter.admit("user:a", "llama-3", limits, now=t0 + 62)
    limiter.admit("user:a", "llama-3", limits, now=t0 + 61 + WINDOW_S + 1)


def test_decisions_are_fast(engine: PolicyEngine) -> None:
    """A repeated decision comes from the cache (the figure itself is measured in benches/)."""
    p = who("premium")
    engine.decide(p, "model:llama-3", "infer")
    before = engine._decide.cache_info().hits
    engine.decide(p, "model:llama-3", "infer")
    assert engine._decide.cache_info().hits == before + 1


def test_subject_index_agrees_with_the_whole_policy(tmp_path: Path) -> None:
    """Decisions from the per-subject index equal Casbin's over the whole policy (1,000 lines, 100 roles)."""
    from benches.bench_authz import requests, write_policy
    from gateway.authz import files

    write_policy(tmp_path / "p")
    engine = PolicyEngine(files.load(tmp_path / "p"), 1)
    cases = [(p.subject, engine.roles(p), obj, act) for p, obj, act in requests(300, seed=3)]
    cases += [(p.subject, engine.roles(p), f"model:fam{int(next(iter(p.roles))[1:]) + 1}-4-secret-x", "infer")
              for p, _, _ in requests(50, seed=4)]  # fmt: skip
    assert engine.check_index(cases) == []
    assert any(not engine.decide(Principal(s, "apikey", frozenset()), o, a).allowed for s, _, o, a in cases)


def test_a_matcher_that_ignores_subjects_is_refused(tmp_path: Path) -> None:
    """A model.conf whose matcher does not select rules by subject is caught by the policy's own tests."""
    import shutil

    folder = tmp_path / "p"
    shutil.copytree(POLICIES, folder)
    conf = (folder / "model.conf").read_text().replace("(r.sub == p.sub || p.sub in r.roles) && ", "")
    (folder / "model.conf").write_text(conf)
    from gateway.errors import PolicyError

    with pytest.raises(PolicyError, match="must select rules by subject"):
        build(folder, 2)
