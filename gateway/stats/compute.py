"""One release: bound each caller's contribution, aggregate the facts, add OpenDP noise. No true value leaves.

The steps, for a query over D days:

1. Aggregate in SQL only the facts within the bounds: a caller's first K requests (or denials) of each day,
   tokens clamped per request, at most R roles per request, at most M kinds of personal data per request and
   direction. One caller then moves the whole vector of group totals by at most the L1 sensitivity
   (requests: K * D, times R when grouped by role; tokens: that times T; PII: K * D * M * 2).
2. Groups: every public key (configured models, the policy's roles, the API routes, the days, the denial
   reasons, the known kinds of personal data) is released, with noise, whether or not it has facts. A key
   that is not public (a role name that only an identity provider's token carried) is released only if it
   passes OpenDP's Laplace threshold (partition selection, half of epsilon and the query's delta).
3. Noise: discrete Laplace on the whole vector (``noisy_histogram``), noisy sum / noisy count for means
   (epsilon halved), OpenDP's quantile mechanism for latency. Negative counts and sums are shown as 0
   (post-processing: it costs no privacy).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np

from gateway.pii.policy import KNOWN_ENTITIES
from gateway.stats import mechanisms
from gateway.stats.facts import DENIAL_REASONS, FactIndex, day_number, day_of
from gateway.stats.policy import PrivacyPolicy
from gateway.stats.query import StatsQuery

OTHER = "(other)"
ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
DIRECTIONS = ("prompt", "answer")
_COLUMN = {"model": "model", "role": "roles", "route": "route", "day": "day", "reason": "reason",
           "entity": "entity", "direction": "direction", "unit": "unit"}  # fmt: skip


@dataclass(frozen=True)
class PublicKeys:
    """Group keys that are public by construction: configured, not derived from callers' data."""

    models: tuple[str, ...]
    roles: frozenset[str]


@dataclass(frozen=True)
class Plan:
    """What a query spends and how it bounds contributions: decided from the query and policy alone."""

    epsilon: float
    delta: float
    sensitivity: int
    bounds: dict[str, int]
    selection: bool  # whether non-public keys go through partition selection


def plan(query: StatsQuery, policy: PrivacyPolicy) -> Plan:
    """Budget and bounds of ``query``: they never depend on the data."""
    b, days, m = policy.bounds, query.days, query.metric
    bounds: dict[str, int] = {"days": days}
    if m.table == "denial":
        bounds["denials_per_unit_per_day"] = b.denials_per_day
        sensitivity = b.denials_per_day * days
    elif m.kind == "quantiles":
        bounds["latency_samples_per_unit_per_day"] = b.latency_samples_per_day
        sensitivity = b.latency_samples_per_day * days
    else:
        bounds["requests_per_unit_per_day"] = b.requests_per_day
        sensitivity = b.requests_per_day * days
    if m.table == "pii":
        bounds["entities_per_request_and_direction"] = b.pii_entities_per_request
        sensitivity *= b.pii_entities_per_request * len(DIRECTIONS)
    selection = "role" in query.group_by
    if selection:
        bounds["roles_per_request"] = b.roles_per_request
        sensitivity *= b.roles_per_request
    if m.kind in ("sum", "mean"):
        bounds["tokens_per_request"] = b.tokens_per_request
    delta = policy.query.delta if selection else 0.0
    return Plan(query.epsilon, delta, sensitivity, bounds, selection)


def _sql(query: StatsQuery, policy: PrivacyPolicy, extra_dims: tuple[str, ...] = ()) -> tuple[str, list[Any]]:
    m, b = query.metric, policy.bounds
    dims = [_COLUMN[d] for d in (*query.group_by, *extra_dims)]
    days = [day_number(query.start), day_number(query.end)]
    t = b.tokens_per_request
    if m.table == "pii":
        where, params = (
            "FROM dp_pii WHERE day BETWEEN ? AND ? AND nth <= ? AND k <= ?",
            [*days, b.requests_per_day, b.pii_entities_per_request],
        )
    elif m.table == "denial":
        where, params = (
            "FROM dp_facts WHERE kind = 'denial' AND day BETWEEN ? AND ? AND nth <= ?",
            [*days, b.denials_per_day],
        )
    else:
        where, params = (
            "FROM dp_facts WHERE kind = 'request' AND day BETWEEN ? AND ? AND nth <= ?",
            [*days, b.requests_per_day],
        )
        where += {"errors": " AND outcome = 'error'", "fallbacks": " AND fallback = 1",
                  "tokens_per_request": " AND (prompt_tokens IS NOT NULL OR completion_tokens IS NOT NULL)",
                  "latency_ms": " AND latency_ms IS NOT NULL"}.get(m.name, "")  # fmt: skip
    tokens = {"tokens": "COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0)",
              "tokens_per_request": "COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0)",
              "prompt_tokens": "COALESCE(prompt_tokens, 0)",
              "completion_tokens": "COALESCE(completion_tokens, 0)"}.get(m.name, "0")  # fmt: skip
    value = f"SUM(CASE WHEN {tokens} > {t} THEN {t} WHEN {tokens} < 0 THEN 0 ELSE {tokens} END)"
    if m.kind == "quantiles":
        value = "latency_ms"
        dims.append("latency_ms")
    select = ", ".join([*dims, "COUNT(*)", value if m.kind != "quantiles" else "0"])
    group = f" GROUP BY {', '.join(dims)}" if dims else ""
    return f"SELECT {select} {where}{group}", params


def _label(dim: str, value: Any, public: PublicKeys) -> Any:
    if dim == "day":
        return day_of(int(value)).isoformat()
    if dim == "model":
        return value if value in public.models else OTHER
    if dim == "route":
        return value if value in ROUTES else OTHER
    if dim == "entity":
        return value if value in KNOWN_ENTITIES else OTHER
    if dim == "reason":
        return value if value in DENIAL_REASONS else "other"
    return value


def _domain(dim: str, query: StatsQuery, public: PublicKeys) -> tuple[str, ...]:
    if dim == "day":
        return tuple((query.start + timedelta(days=i)).isoformat() for i in range(query.days))
    return {"model": (*public.models, OTHER), "role": tuple(sorted(public.roles)), "route": (*ROUTES, OTHER),
            "reason": DENIAL_REASONS, "entity": (*sorted(KNOWN_ENTITIES), OTHER),
            "direction": DIRECTIONS}[dim]  # fmt: skip


def _keys(row: tuple[Any, ...], dims: tuple[str, ...], public: PublicKeys, roles_cap: int) -> Iterator[tuple[Any, ...]]:
    """The group keys one aggregated row counts towards (several when grouped by role)."""
    parts: list[list[Any]] = []
    for dim, value in zip(dims, row, strict=False):
        if dim == "role":
            parts.append(sorted(r for r in str(value or "").split(",") if r)[:roles_cap])
        else:
            parts.append([_label(dim, value, public)])
    yield from itertools.product(*parts)


def release(query: StatsQuery, policy: PrivacyPolicy, index: FactIndex, public: PublicKeys) -> dict[str, Any]:
    """The released answer to ``query``: noisy values per group and what was spent. Never a true value."""
    p = plan(query, policy)
    dims, cap = query.group_by, policy.bounds.roles_per_request
    sql, params = _sql(query, policy)
    counts: dict[tuple[Any, ...], int] = defaultdict(int)
    sums: dict[tuple[Any, ...], int] = defaultdict(int)
    latencies: dict[tuple[Any, ...], list[tuple[float, int]]] = defaultdict(list)
    for row in index.rows(sql, params):
        n, total = int(row[len(dims) + (1 if query.metric.kind == "quantiles" else 0)]), row[-1]
        for key in _keys(row, dims, public, cap):
            counts[key] += n
            sums[key] += int(total or 0)
            if query.metric.kind == "quantiles":
                latencies[key].append((float(row[len(dims)]), n))
    keys = [tuple(k) for k in itertools.product(*(_domain(d, query, public) for d in dims))]
    eps_values = p.epsilon
    selected: list[tuple[Any, ...]] = []
    if p.selection:
        eps_values = p.epsilon / 2
        selected = _select(query, policy, index, public, keys, p)
    keys += selected
    groups: list[dict[str, Any]] = [dict(zip(dims, k, strict=True)) for k in keys]
    kind = query.metric.kind
    if kind == "quantiles":
        alphas = policy.latency.quantiles
        rel = mechanisms.private_quantiles([_expand(latencies.get(k, [])) for k in keys], p.sensitivity,
                                           policy.latency.candidates(), alphas, eps_values)  # fmt: skip
        for g, r in zip(groups, rel, strict=True):
            g["value"] = dict(zip((f"p{round(a * 100, 3):g}" for a in alphas), r.value, strict=True))  # type: ignore[arg-type]
        first = rel[0] if rel else None
        mech, scale, acc, unit = ("quantile_score_candidates+report_noisy_max_gumbel", first.scale if first else None,
                                  first.accuracy if first else None, "rank")  # fmt: skip
    elif kind == "mean":
        t = policy.bounds.tokens_per_request
        s = mechanisms.noisy_histogram([sums[k] for k in keys], p.sensitivity * t, eps_values / 2)
        c = mechanisms.noisy_histogram([counts[k] for k in keys], p.sensitivity, eps_values / 2)
        for g, sv, cv in zip(groups, s.value, c.value, strict=True):  # type: ignore[arg-type]
            g["value"], g["accuracy_95"] = _mean(sv, cv, s, c)
        mech, scale, acc, unit = "noisy_sum/noisy_count", s.scale, None, "value"
    else:
        sens = p.sensitivity * (policy.bounds.tokens_per_request if kind == "sum" else 1)
        h = mechanisms.noisy_histogram([sums[k] if kind == "sum" else counts[k] for k in keys], sens, eps_values)
        for g, v in zip(groups, h.value, strict=True):  # type: ignore[arg-type]
            g["value"] = max(0.0, v)
        mech, scale, acc, unit = h.mechanism, h.scale, h.accuracy, "value"
    return {
        "metric": query.metric.name, "description": query.metric.description, "group_by": list(dims),
        "from": query.start.isoformat(), "to": query.end.isoformat(), "groups": groups,
        "privacy": {
            "unit": "caller", "epsilon": p.epsilon, "delta": p.delta, "mechanism": mech,
            "sensitivity": p.sensitivity * (policy.bounds.tokens_per_request if kind == "sum" else 1),
            "bounds": p.bounds, "noise_scale": scale,
            "accuracy": {"confidence": 0.95, "half_width": acc, "unit": unit},
            "partition_selection": ({"epsilon": p.epsilon / 2, "delta": p.delta, "selected": len(selected)}
                                    if p.selection else None),
            "post_processing": "negative counts and sums shown as 0" if kind in ("count", "sum") else None,
        },
    }  # fmt: skip


def _expand(pairs: list[tuple[float, int]]) -> np.ndarray[Any, Any]:
    """The values, each repeated as often as it was seen (SQL returns distinct latencies with counts)."""
    if not pairs:
        return np.empty(0)
    values, counts = zip(*pairs, strict=True)
    return np.repeat(np.asarray(values, dtype=np.float64), np.asarray(counts, dtype=np.int64))


def _mean(s: float, c: float, sr: mechanisms.Release, cr: mechanisms.Release) -> tuple[float | None, float | None]:
    """Noisy sum / noisy count, and a 95% half-width by the union bound (None while the count may be 0)."""
    cc = max(c, 1.0)
    mean = max(0.0, s) / cc
    s_half = mechanisms.half_width(sr, mechanisms.ALPHA / 2)
    c_half = mechanisms.half_width(cr, mechanisms.ALPHA / 2)
    if c - c_half <= 0:
        return None, None  # the noisy count may be 0: no meaningful mean
    corners = [(s + ds) / (c + dc) for ds in (-s_half, s_half) for dc in (-c_half, c_half)]
    return mean, max(abs(x - mean) for x in corners)


def _select(query: StatsQuery, policy: PrivacyPolicy, index: FactIndex, public: PublicKeys,
            public_keys: list[tuple[Any, ...]], p: Plan) -> list[tuple[Any, ...]]:  # fmt: skip
    """Non-public keys (roles no policy names) that pass partition selection: per-caller counts, thresholded."""
    dims, cap = query.group_by, policy.bounds.roles_per_request
    sql, params = _sql(query, policy, extra_dims=("unit",))
    known = set(public_keys)
    per_unit: dict[tuple[Any, ...], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in index.rows(sql, params):
        unit, n = row[len(dims)], int(row[len(dims) + 1])
        for key in _keys(row, dims, public, cap):
            if key not in known:
                per_unit[key][unit] += n
    if not per_unit:
        return []
    names = {"|".join(map(str, k)): k for k in per_unit}
    kept = mechanisms.select_partitions({name: list(per_unit[k].values()) for name, k in names.items()},
                                        max_per_unit=p.sensitivity, epsilon=p.epsilon / 2, delta=p.delta,
                                        max_keys_per_unit=p.sensitivity, l1=p.sensitivity)  # fmt: skip
    return sorted(names[name] for name in kept)
