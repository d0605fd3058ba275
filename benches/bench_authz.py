"""Authorization decision cost at scale: 1,000 policy lines, 100 roles.

    python -m benches.bench_authz

Builds a policy folder of 100 roles (each inheriting from the one before in chains of ten), 900
allow rules on routes and model patterns, 100 deny rules, and 200 role links for API keys;
then times ``PolicyEngine.decide`` (the gateway's decision path) for a fixed mix of requests:
cold (a new engine, every decision computed by the compiled model), cold with the compiled model
switched off (every decision by Casbin's per-subject enforcers, on 200 requests), and warm (the
decision cache, as in steady state). CPU time per decision is ``time.process_time`` over the batch.
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from gateway.authz import files
from gateway.authz.engine import PolicyEngine
from gateway.identity.principal import Principal

ROOT = Path(__file__).resolve().parent.parent
ROLES = 100


def write_policy(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.conf").write_text((ROOT / "policies" / "model.conf").read_text())
    (folder / "limits.yaml").write_text("default:\n  stream: true\n")
    (folder / "pii.yaml").write_text((ROOT / "policies" / "pii.yaml").read_text())
    (folder / "privacy.yaml").write_text((ROOT / "policies" / "privacy.yaml").read_text())
    (folder / "alerts.yaml").write_text((ROOT / "policies" / "alerts.yaml").read_text())
    lines = []
    routes = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models"]
    for r in range(ROLES):
        for i in range(9):
            if i < 4:
                lines.append(f"p, role:r{r}, route:{routes[i]}, *, allow")
            else:
                lines.append(f"p, role:r{r}, model:fam{r}-{i}-*, infer, allow")
        lines.append(f"p, role:r{r}, model:fam{(r + 1) % ROLES}-4-secret*, infer, deny")
        if r % 10:
            lines.append(f"g, role:r{r}, role:r{r - 1}")
    for k in range(200):
        lines.append(f"g, apikey:k{k:011d}, role:r{k % ROLES}")
    (folder / "policy.csv").write_text("\n".join(lines) + "\n")
    (folder / "tests.yaml").write_text(
        "tests:\n  - name: r5 inherits r4\n    roles: [r5]\n    object: model:fam4-4-x\n    action: infer\n"
        "    expect: allow\n"
    )


def requests(n: int, seed: int = 7) -> list[tuple[Principal, str, str]]:
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        r = rnd.randrange(ROLES)
        who = Principal(f"apikey:k{rnd.randrange(200):011d}", "apikey", frozenset({f"r{r}"}))
        if rnd.random() < 0.5:
            out.append((who, f"model:fam{rnd.randrange(ROLES)}-{rnd.randrange(4, 9)}-x", "infer"))
        else:
            out.append((who, "route:/v1/chat/completions", "infer"))
    return out


def cpu_per_call(engine: PolicyEngine, batch: list[tuple[Principal, str, str]]) -> float:
    start = time.process_time()
    for p, obj, act in batch:
        engine.decide(p, obj, act)
    return (time.process_time() - start) / len(batch) * 1e6


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "policies"
        write_policy(folder)
        loaded = files.load(folder)
        t = time.perf_counter()
        PolicyEngine(loaded, 1)
        build_ms = (time.perf_counter() - t) * 1000
        batch = requests(2000)
        cold, warm, casbin_cold = [], [], []
        for _ in range(3):
            engine = PolicyEngine(loaded, 1)
            assert engine.compiled, "the bench policy uses the shipped model"
            cold.append(cpu_per_call(engine, batch))
            warm.append(cpu_per_call(engine, batch))
            reference = PolicyEngine(loaded, 1)
            reference._compiled = None  # the same decisions from Casbin's per-subject enforcers
            casbin_cold.append(cpu_per_call(reference, batch[:200]))
        distinct = len({(p.subject, p.roles, o, a) for p, o, a in batch})
    print(f"policy: {len(loaded.rules)} rules, {len(loaded.groupings)} role links, {ROLES} roles; "
          f"engine build {build_ms:.0f} ms", file=sys.stdout)  # fmt: skip
    print(f"requests: {len(batch)} ({distinct} distinct); 3 runs; CPU per decision, median [min-max]")
    for label, xs in (("cold, compiled model:   ", cold), ("cold, Casbin enforcers: ", casbin_cold),
                      ("warm (decision cache):  ", warm)):  # fmt: skip
        print(f"{label}{statistics.median(xs):9.2f} us  [{min(xs):.2f}-{max(xs):.2f}]")


if __name__ == "__main__":
    main()
