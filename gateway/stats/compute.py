"""One release: bound each caller's contribution, aggregate the facts, add OpenDP noise. No true value leaves.

The steps, for a query over D days:

1. Aggregate (numpy, over the in-memory columns of ``columns.py``) only the facts within the bounds: a
   caller's first K requests (or denials) of each day, tokens clamped per request, at most R roles per
   request, at most M kinds of personal data per request and direction. One caller then moves the whole
   vector of group totals by at most the L1 sensitivity (requests: K * D, times R when grouped by role;
   tokens: that times T; PII: K * D * M * 2).
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
from gateway.stats.columns import FactColumns
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


@dataclass
class _Rows:
    """The facts a query counts (within the bounds), with each one's codes per dimension and its value."""

    codes: list[np.ndarray[Any, Any]]  # one int array per dimension (and the caller, when asked)
    labels: list[list[Any] | None]  # code -> label, per dimension (None: the code is the value, as for days)
    values: np.ndarray[Any, Any]  # tokens (clamped) or latency per fact; ones for counts


def _rows(query: StatsQuery, policy: PrivacyPolicy, columns: FactColumns, with_unit: bool = False) -> _Rows:
    """Select the facts of ``query``'s period within the per-caller bounds (vectorized over the columns)."""
    m, b = query.metric, policy.bounds
    table = {"request": columns.request, "denial": columns.denial, "pii": columns.pii}[m.table]
    col = table.cols
    per_day = {"denial": b.denials_per_day, "pii": b.requests_per_day}.get(m.table, b.requests_per_day)
    if m.kind == "quantiles":
        per_day = b.latency_samples_per_day
    mask = (col["day"] >= day_number(query.start)) & (col["day"] <= day_number(query.end)) & (col["nth"] <= per_day)
    if m.table == "pii":
        mask &= col["k"] <= b.pii_entities_per_request
    elif m.name == "errors":
        mask &= col["outcome"] == table.codes["outcome"].index.get("error", -1)
    elif m.name == "fallbacks":
        mask &= col["fallback"] == 1
    elif m.name == "tokens_per_request":
        mask &= (col["prompt_tokens"] >= 0) | (col["completion_tokens"] >= 0)
    elif m.name == "latency_ms":
        mask &= col["latency_ms"] >= 0
    values: np.ndarray[Any, Any]
    if m.kind in ("sum", "mean"):
        parts = {"tokens": ("prompt_tokens", "completion_tokens"), "tokens_per_request": ("prompt_tokens",
                 "completion_tokens")}.get(m.name, (m.name,))  # fmt: skip
        total = sum(np.maximum(col[p][mask], 0) for p in parts)
        values = np.minimum(total, b.tokens_per_request)
    elif m.kind == "quantiles":
        values = col["latency_ms"][mask].astype(np.float64)
    else:
        values = np.ones(int(mask.sum()), dtype=np.int64)
    codes, labels = [], []
    for dim in (*query.group_by, *(("unit",) if with_unit else ())):
        name = _COLUMN[dim]
        codes.append(col[name][mask])
        labels.append(None if name == "day" else table.codes[name].labels)
    return _Rows(codes, labels, values)


@dataclass
class _Groups:
    """The distinct combinations of codes among the selected facts, with counts and sums."""

    labels: list[tuple[Any, ...]]  # per combination: the raw value of each dimension
    counts: np.ndarray[Any, Any]
    sums: np.ndarray[Any, Any]
    inverse: np.ndarray[Any, Any]  # the combination of every selected fact


def _group(rows: _Rows) -> _Groups:
    """One integer key per fact (mixed radix over the dimensions), then unique and bincount."""
    n = len(rows.values)
    key = np.zeros(n, dtype=np.int64)
    radices, offsets = [], []
    for c in rows.codes:
        lo, hi = (int(c.min()), int(c.max())) if n else (0, 0)
        radices.append(hi - lo + 1)
        offsets.append(lo)
        key = key * (hi - lo + 1) + (c.astype(np.int64) - lo)
    space = int(np.prod(radices)) if radices else 1
    if space <= 1 << 22:  # a dense key space: counting beats sorting a million keys
        present = np.flatnonzero(np.bincount(key, minlength=space))
        where = np.zeros(space, dtype=np.int64)
        where[present] = np.arange(len(present))
        uniq, inverse = present, where[key]
    else:
        uniq, inverse = np.unique(key, return_inverse=True)
    counts = np.bincount(inverse.reshape(-1), minlength=len(uniq))
    sums = np.bincount(inverse.reshape(-1), weights=rows.values, minlength=len(uniq))
    labels = []
    for k in uniq.tolist():
        codes = []
        for r in reversed(radices):
            k, c = divmod(k, r)
            codes.append(c)
        codes.reverse()
        labels.append(tuple(off + c if names is None else names[off + c]
                            for c, off, names in zip(codes, offsets, rows.labels, strict=True)))  # fmt: skip
    return _Groups(labels, counts, sums, inverse.reshape(-1))


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
    """The released answer to ``query``: noisy values per group and what was spent. Never a true value.

    The caller holds ``index.lock`` and has caught the index up."""
    p = plan(query, policy)
    dims, cap = query.group_by, policy.bounds.roles_per_request
    rows = _rows(query, policy, index.columns)
    found = _group(rows)
    counts: dict[tuple[Any, ...], int] = defaultdict(int)
    sums: dict[tuple[Any, ...], int] = defaultdict(int)
    members: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for j, raw in enumerate(found.labels):
        for key in _keys(raw, dims, public, cap):
            counts[key] += int(found.counts[j])
            sums[key] += int(found.sums[j])
            members[key].append(j)
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
        per_combo = _split(rows.values, found)
        data = [np.concatenate([per_combo[j] for j in members[k]]) if members.get(k) else np.empty(0) for k in keys]
        rel = mechanisms.private_quantiles(data, p.sensitivity, policy.latency.candidates(), alphas, eps_values)
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


def _split(values: np.ndarray[Any, Any], found: _Groups) -> list[np.ndarray[Any, Any]]:
    """The values of each combination (one stable sort)."""
    order = np.argsort(found.inverse, kind="stable")
    return np.split(values[order], np.cumsum(found.counts)[:-1])


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
    found = _group(_rows(query, policy, index.columns, with_unit=True))
    known = set(public_keys)
    per_unit: dict[tuple[Any, ...], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for raw, n in zip(found.labels, found.counts.tolist(), strict=True):
        unit = raw[-1]
        for key in _keys(raw[:-1], dims, public, cap):
            if key not in known:
                per_unit[key][unit] += n
    if not per_unit:
        return []
    names = {"|".join(map(str, k)): k for k in per_unit}
    kept = mechanisms.select_partitions({name: list(per_unit[k].values()) for name, k in names.items()},
                                        max_per_unit=p.sensitivity, epsilon=p.epsilon / 2, delta=p.delta,
                                        max_keys_per_unit=p.sensitivity, l1=p.sensitivity)  # fmt: skip
    return sorted(names[name] for name in kept)
