"""Differentially private releases with OpenDP: counts, sums, means, quantiles and partition selection.

Privacy unit and neighbouring relation. Every function takes ONE value per privacy unit (a caller: a subject
or an API key's owner), already bounded by the caller for this statistic and period (for example at most K
requests counted per user per day). Two datasets are neighbours when one holds one unit more or fewer than
the other (add/remove one unit: OpenDP's ``symmetric_distance`` at ``d_in = 1`` on the vector of per-unit
values, or ``d_in = K`` on the per-request values of quantiles). Each function clamps again to its stated
bounds, so the sensitivity holds whatever the caller passes, but only one value per unit makes it the
sensitivity of a unit.

All noise comes from OpenDP (discrete Laplace, or Laplace on a 2^k grid for floats, which OpenDP samples
exactly): never from floating-point sampling here (Mironov 2012). Each scale is the smallest that OpenDP's own
privacy map certifies for the requested epsilon. A ``Release`` holds only released (noisy) values.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from opendp import accuracy, domains, measurements, measures, metrics, mod, transformations
from opendp.mod import Measurement

mod.enable_features("contrib")

ALPHA = 0.05  # accuracy half-widths are for 95% intervals


@dataclass(frozen=True)
class Release:
    """A released (noisy) statistic and what was spent to release it; it never holds a true value."""

    value: float | tuple[float, ...]
    mechanism: str
    epsilon: float
    delta: float
    sensitivity: float  # of one unit, in the value's unit (quantiles: values per unit)
    bounds: tuple[float, float]  # per-unit clamping bounds (quantiles: the candidate range)
    scale: float  # the noise scale (quantiles: the Gumbel scale of the scores)
    accuracy: float | None  # 95% half-width: |released - true| < accuracy with probability >= 95%
    accuracy_unit: Literal["value", "rank"] = "value"
    parts: tuple[Release, ...] = ()  # the component releases of a ratio

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for the answer cache and responses)."""
        return asdict(self)


def _check_epsilon(epsilon: float) -> None:
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"epsilon must be a positive finite number, not {epsilon!r}")


def _check_bound(max_per_unit: int) -> None:
    if isinstance(max_per_unit, bool) or not isinstance(max_per_unit, int) or max_per_unit < 1:
        raise ValueError(f"max_per_unit must be a positive integer, not {max_per_unit!r}")


def _calibrate(
    make: Callable[[float], Measurement], d_in: Any, epsilon: float, scale: float, approx: bool = False
) -> tuple[Measurement, float]:
    """``make(scale)`` and its scale, nudged up past float rounding until OpenDP's map certifies ``epsilon``."""
    for _ in range(64):
        meas = make(scale)
        d_out = meas.map(d_in)
        if (d_out[0] if approx else d_out) <= epsilon:
            return meas, scale
        scale = math.nextafter(scale, math.inf)
    raise RuntimeError(f"no noise scale near {scale} gives epsilon {epsilon}")  # pragma: no cover


def _laplace_sum(values: Sequence[float | int], lower: float, upper: float, epsilon: float, name: str) -> Release:
    """Clamp each unit's value to [lower, upper], sum, add Laplace noise calibrated to one unit."""
    _check_epsilon(epsilon)
    if not lower < upper:
        raise ValueError(f"lower ({lower}) must be below upper ({upper})")
    discrete = all(isinstance(v, int) for v in (lower, upper, *values))
    data: list[int] | list[float]
    bounds: tuple[int, int] | tuple[float, float]
    if discrete:
        atom, data, bounds = domains.atom_domain(T="i64"), [int(v) for v in values], (int(lower), int(upper))
    else:
        atom, data = domains.atom_domain(T=float, nan=False), [float(v) for v in values]
        bounds = (float(lower), float(upper))
    space = (domains.vector_domain(atom), metrics.symmetric_distance())
    total = transformations.make_clamp(*space, bounds) >> transformations.then_sum()
    sensitivity = float(total.map(1))  # floats: OpenDP adds the worst-case rounding error of the sum
    meas, scale = _calibrate(lambda s: total >> measurements.then_laplace(scale=s), 1, epsilon, sensitivity / epsilon)
    if discrete:
        half = float(accuracy.discrete_laplacian_scale_to_accuracy(scale, ALPHA))
        mechanism = "discrete_laplace"
    else:
        half = float(accuracy.laplacian_scale_to_accuracy(scale, ALPHA))
        mechanism = "laplace"
    return Release(value=meas(data), mechanism=f"{mechanism}({name})", epsilon=epsilon, delta=0.0,
                   sensitivity=sensitivity, bounds=bounds, scale=scale, accuracy=half)  # fmt: skip


def noisy_count(per_unit_counts: Sequence[int], max_per_unit: int, epsilon: float) -> Release:
    """Discrete Laplace on the sum of per-unit counts clamped to [0, max_per_unit]: sensitivity max_per_unit."""
    _check_bound(max_per_unit)
    return _laplace_sum([int(c) for c in per_unit_counts], 0, max_per_unit, epsilon, "count")


def noisy_histogram(totals: Sequence[int], sensitivity: int, epsilon: float) -> Release:
    """Discrete Laplace on every entry of a vector of integer totals (one per public group), at once.

    ``sensitivity`` bounds the L1 distance one unit can move the whole vector (the caller bounded each unit's
    contribution: for example at most K requests a day over D days, each counted in one group: K * D). The
    scale is the smallest for which OpenDP's privacy map of ``make_laplace`` on ``l1_distance`` certifies
    ``epsilon`` at ``d_in = sensitivity``, so the whole vector costs ``epsilon``, however many groups it has.
    """
    _check_epsilon(epsilon)
    _check_bound(sensitivity)
    space = (domains.vector_domain(domains.atom_domain(T="i64")), metrics.l1_distance(T="i64"))
    meas, scale = _calibrate(lambda s: measurements.make_laplace(*space, scale=s), sensitivity, epsilon,
                             sensitivity / epsilon)  # fmt: skip
    values = meas([int(t) for t in totals]) if totals else []
    half = float(accuracy.discrete_laplacian_scale_to_accuracy(scale, ALPHA))
    return Release(value=tuple(float(v) for v in values), mechanism="discrete_laplace(histogram)", epsilon=epsilon,
                   delta=0.0, sensitivity=float(sensitivity), bounds=(0.0, float(sensitivity)), scale=scale,
                   accuracy=half)  # fmt: skip


def noisy_sum(per_unit_sums: Sequence[float | int], lower: float, upper: float, epsilon: float) -> Release:
    """Laplace on the sum of per-unit sums clamped to [lower, upper] (discrete Laplace when all are integers).

    The sensitivity is max(|lower|, |upper|) (plus, for floats, OpenDP's bound on the sum's rounding error).
    """
    return _laplace_sum(per_unit_sums, lower, upper, epsilon, "sum")


def noisy_mean(
    per_unit_sums: Sequence[float | int],
    per_unit_counts: Sequence[int],
    lower: float,
    upper: float,
    max_per_unit: int,
    epsilon: float,
) -> Release:
    """Noisy sum / noisy count, epsilon split evenly (basic composition): epsilon/2 each.

    ``per_unit_sums[i]`` and ``per_unit_counts[i]`` belong to the same unit (for example the tokens of its
    requests and how many requests): the mean per request is then sum / count. The noisy count is taken as at
    least 1. The half-width bounds |mean - true| whenever both parts are within their 97.5% half-widths
    (union bound, so 95% together); it is None while the noisy count is within its own half-width of 0.
    """
    if len(per_unit_sums) != len(per_unit_counts):
        raise ValueError("per_unit_sums and per_unit_counts must have one value per unit each")
    half = epsilon / 2
    total = noisy_sum(per_unit_sums, lower, upper, half)
    count = noisy_count(per_unit_counts, max_per_unit, half)
    s, c = float(total.value), max(float(count.value), 1.0)  # type: ignore[arg-type]
    mean = s / c
    s_half = half_width(total, ALPHA / 2)
    c_half = half_width(count, ALPHA / 2)
    width: float | None = None
    if c - c_half > 0:
        corners = [(s + ds) / (c + dc) for ds in (-s_half, s_half) for dc in (-c_half, c_half)]
        width = max(abs(x - mean) for x in corners)
    return Release(value=mean, mechanism="noisy_sum/noisy_count", epsilon=epsilon, delta=0.0,
                   sensitivity=total.sensitivity, bounds=total.bounds, scale=total.scale, accuracy=width,
                   parts=(total, count))  # fmt: skip


def half_width(release: Release, alpha: float) -> float:
    """The ``1 - alpha`` half-width of a Laplace or discrete Laplace release."""
    if release.mechanism.startswith("discrete_laplace"):
        return float(accuracy.discrete_laplacian_scale_to_accuracy(release.scale, alpha))
    return float(accuracy.laplacian_scale_to_accuracy(release.scale, alpha))


def noisy_quantiles(
    values_per_unit: Sequence[Sequence[float]],
    max_per_unit: int,
    candidates: Sequence[float],
    alphas: Sequence[float],
    epsilon: float,
) -> Release:
    """OpenDP's quantile mechanism on values given per unit: each unit gives at most ``max_per_unit`` (raises
    otherwise), so a unit moves the data by that many records. See ``private_quantiles``."""
    _check_bound(max_per_unit)
    data: list[float] = []
    for unit in values_per_unit:
        if len(unit) > max_per_unit:
            raise ValueError(f"a unit gave {len(unit)} values, more than max_per_unit={max_per_unit}")
        data.extend(float(v) for v in unit)
    return private_quantiles([data], max_per_unit, candidates, alphas, epsilon)[0]


def private_quantiles(
    groups: Sequence[Sequence[float] | np.ndarray[Any, Any]],
    d_in: int,
    candidates: Sequence[float],
    alphas: Sequence[float],
    epsilon: float,
) -> list[Release]:
    """OpenDP's quantile mechanism (scores of candidates, Gumbel report-noisy-max), epsilon split over alphas,
    on each of ``groups`` (disjoint datasets, such as the latencies of each model).

    One unit adds or removes at most ``d_in`` records in all groups together. Each quantile's scale is the
    smallest for which the privacy map at ONE record, times ``d_in``, is within its share of epsilon, and the
    map is checked to be linear (map(d_in) == d_in * map(1)): so several releases on disjoint groups, among
    which one unit's records are split, cost ``epsilon`` together (its records in all groups are at most d_in).
    Each released quantile is one of ``candidates`` (strictly increasing; make the grid fine where the data
    is). ``accuracy`` is in ranks: with probability >= 95% (union bound over alphas) every released
    candidate's rank error is at most that much worse than the best candidate's, using scale <=
    2 * d_in * max(a, 1 - a) / epsilon_a in rank units (the exponential mechanism's utility bound, Dwork & Roth
    Thm 3.11).
    """
    _check_epsilon(epsilon)
    _check_bound(d_in)
    cands = [float(c) for c in candidates]
    if len(cands) < 2 or any(b <= a for a, b in itertools.pairwise(cands)):
        raise ValueError("candidates must be at least two strictly increasing values")
    if not alphas or not all(0 < a < 1 for a in alphas):
        raise ValueError("alphas must be a non-empty list of values in (0, 1)")
    each = epsilon / len(alphas)
    space = (domains.vector_domain(domains.atom_domain(T=float, nan=False)), metrics.symmetric_distance())
    measures_, scales, rank_error = [], [], 0.0
    for a in alphas:

        def make(scale: float, a: float = a) -> Measurement:
            return measurements.make_private_quantile(*space, measures.max_divergence(), cands, a, scale)

        scale = float(mod.binary_search_param(make, d_in=d_in, d_out=each))
        meas = make(scale)
        if meas.map(d_in) > each or meas.map(1) * d_in > each * (1 + 1e-12):  # pragma: no cover - OpenDP's maps
            raise RuntimeError("quantile privacy map is not linear in d_in, or the scale search overshot")
        measures_.append(meas)
        scales.append(scale)
        rank_scale = 2 * d_in * max(a, 1 - a) / each
        rank_error = max(rank_error, rank_scale * math.log(len(cands) * len(alphas) / ALPHA))
    out = []
    for data in groups:
        values = np.asarray(data, dtype=np.float64)  # OpenDP takes a float64 array ~20x faster than a list
        if not np.isfinite(values).all():
            raise ValueError("quantile data must be finite numbers")
        out.append(Release(value=tuple(float(m(values)) for m in measures_),
                           mechanism="quantile_score_candidates+report_noisy_max_gumbel", epsilon=epsilon, delta=0.0,
                           sensitivity=float(d_in), bounds=(cands[0], cands[-1]), scale=max(scales),
                           accuracy=rank_error, accuracy_unit="rank"))  # fmt: skip
    return out


def partition_threshold(
    max_per_unit: int, epsilon: float, delta: float, max_keys_per_unit: int = 1, l1: int | None = None
) -> tuple[float, int]:
    """(scale, threshold) of Laplace partition selection: a unit in at most L keys, at most K in each, and
    at most ``l1`` in all (default L*K).

    The scale is l1/epsilon (L1 sensitivity). The threshold is the smallest integer for which OpenDP's
    privacy map of ``make_laplace_threshold`` at d_in = (L, L*K, K) gives at most ``delta``: close to the
    closed form K + scale * ln(L / (2 delta)) of Korolova et al. 2009 and Wilson et al. 2020, the chance
    that the noisy count of a key held by one unit alone clears the threshold.
    """
    _check_epsilon(epsilon)
    _check_bound(max_per_unit)
    _check_bound(max_keys_per_unit)
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), not {delta!r}")
    if l1 is not None:
        _check_bound(l1)
    d_in = (
        max_keys_per_unit,
        min(l1 or max_keys_per_unit * max_per_unit, max_keys_per_unit * max_per_unit),
        max_per_unit,
    )
    _, scale = _calibrate(lambda s: _threshold(s, max_per_unit), d_in, epsilon, d_in[1] / epsilon, approx=True)

    def enough(t: int) -> bool:
        return bool(_threshold(scale, t).map(d_in)[1] <= delta)

    # Start at the closed form and step to the smallest passing integer (a few privacy maps, not a search).
    t = max(max_per_unit, math.ceil(max_per_unit + scale * math.log(max_keys_per_unit / (2 * delta))))
    for _ in range(10_000):
        if not enough(t):
            t += 1
        elif t > max_per_unit and enough(t - 1):
            t -= 1
        else:
            return scale, t
    raise RuntimeError(f"no partition threshold near {t} gives delta {delta}")  # pragma: no cover


def _threshold(scale: float, threshold: int) -> Measurement:
    """OpenDP's Laplace threshold mechanism on a map of key -> count (keys of one unit: L0, L1, Linf)."""
    space = domains.map_domain(domains.atom_domain(T=str), domains.atom_domain(T="i64"))
    distance = metrics.l01inf_distance(metrics.absolute_distance(T="i64"))
    return measurements.make_laplace_threshold(space, distance, scale=scale, threshold=threshold)


def select_partitions(
    counts_by_key: Mapping[str, Sequence[int]],
    max_per_unit: int,
    epsilon: float,
    delta: float,
    max_keys_per_unit: int = 1,
    l1: int | None = None,
) -> set[str]:
    """The keys whose noisy count (per-unit counts clamped to [0, K], summed) clears ``partition_threshold``.

    ``counts_by_key[key]`` holds one count per unit that has the key; each unit may appear under at most
    ``max_keys_per_unit`` keys (the caller bounds this). The release is (epsilon, delta)-DP for a unit: a key
    that only a few units hold is dropped unless noise pushes it over, which happens with probability <= delta.
    """
    scale, threshold = partition_threshold(max_per_unit, epsilon, delta, max_keys_per_unit, l1)
    totals = {key: sum(min(max(int(c), 0), max_per_unit) for c in counts) for key, counts in counts_by_key.items()}
    kept: dict[str, int] = _threshold(scale, threshold)({k: v for k, v in totals.items() if v > 0})
    return set(kept)
