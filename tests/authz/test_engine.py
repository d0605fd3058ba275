"""Decisions: roles with inheritance, wildcards, routes, deny-override, the deciding rule, limits, rates."""

from __future__ import annotations

import random
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


def _random_policy(folder: Path, rnd: random.Random) -> None:
    """A policy of random rules over few names, so that wildcards, denies and role chains collide."""
    import shutil

    shutil.copytree(POLICIES, folder)
    names = ["route:/v1/chat/completions", "route:/v1/*", "route:/admin/*", "model:llama-*", "model:llama-3",
             "model:*", "model:e5-*", "model:llama-3-*", "route:/*"]  # fmt: skip
    acts = ["infer", "embed", "read", "admin", "*"]
    lines = []
    for _ in range(rnd.randrange(5, 40)):
        sub = rnd.choice([f"role:r{rnd.randrange(6)}", "apikey:k1", "user:u1"])
        lines.append(f"p, {sub}, {rnd.choice(names)}, {rnd.choice(acts)}, {rnd.choice(['allow', 'allow', 'deny'])}")
    for r in range(1, 6):
        if rnd.random() < 0.6:
            lines.append(f"g, role:r{r}, role:r{rnd.randrange(r)}")
    (folder / "policy.csv").write_text("\n".join(dict.fromkeys(lines)) + "\n")
    (folder / "tests.yaml").write_text(
        "tests:\n  - name: strangers get nothing\n    roles: [nobody]\n"
        "    object: route:/v1/models\n    action: read\n    expect: deny\n"
    )


def test_compiled_model_decides_like_casbin(tmp_path: Path) -> None:
    """On random policies, the compiled model's decision and rule equal Casbin's, and its allow the whole policy's."""
    from gateway.authz import files

    rnd = random.Random(1907)
    objects = ["route:/v1/chat/completions", "route:/v1/models", "route:/admin/policy/reload", "model:llama-3",
               "model:llama-3-70b", "model:e5-small", "model:gpt", "route:/", "model:llama-"]  # fmt: skip
    checked = 0
    for n in range(40):
        _random_policy(tmp_path / f"p{n}", rnd)
        engine = PolicyEngine(files.load(tmp_path / f"p{n}"), 1)
        assert engine.compiled
        for _ in range(60):
            subject = rnd.choice(["-", "apikey:k1", "user:u1"])
            roles = engine._expand_uncached(subject, frozenset(f"r{i}" for i in range(6) if rnd.random() < 0.3))
            case = (subject, roles, rnd.choice(objects), rnd.choice(["infer", "embed", "read", "admin"]))
            assert engine._compiled is not None
            compiled = engine._compiled.decide(*case)
            assert compiled == engine._casbin_decide(*case), case
            assert compiled[0] == bool(engine._enforcer.enforce(*case)), case
            checked += 1
    assert checked == 2400


def test_another_model_is_left_to_casbin(tmp_path: Path) -> None:
    """A model.conf other than the shipped one is decided by Casbin's enforcers, with the same results."""
    import shutil

    from gateway.authz import files

    folder = tmp_path / "p"
    shutil.copytree(POLICIES, folder)
    conf = (folder / "model.conf").read_text().replace('(p.act == "*" || r.act == p.act)', "r.act == p.act")
    (folder / "model.conf").write_text(conf)
    engine = PolicyEngine(files.load(folder), 1)
    assert not engine.compiled
    assert engine.decide(who("user"), "model:smollm2-135m-instruct", "infer").allowed
    assert not engine.decide(who("user"), "model:gpt-oss-20b", "infer").allowed
    assert PolicyEngine(files.load(POLICIES), 1).compiled
