"""OpenDP mechanisms: noise scale, accuracy, quantiles and partition selection, with bounded statistical checks.

OpenDP draws its noise from the operating system's CSPRNG, so no seed makes these runs repeatable. Each
statistical check instead has a tolerance whose chance of failing with a correct mechanism is computed in the
test itself (a Chernoff bound from the exact moment generating function, or the binomial KL bound) and
asserted below FAILURE = 1e-9: a failure means the mechanism is wrong, not that the test was unlucky.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import pytest

from gateway.stats.mechanisms import (
    noisy_count,
    noisy_histogram,
    noisy_mean,
    noisy_quantiles,
    noisy_sum,
    partition_threshold,
    private_quantiles,
    select_partitions,
)

N = 4000  # releases per statistical check
FAILURE = 1e-9  # the largest chance of a spurious failure any check here may have
COUNTS = [1, 2, 3, 9, 0, 5, 7, 4] * 25  # per-unit counts; K = 5 clamps the 9s and 7s
K = 5
TRUE_COUNT = sum(min(c, K) for c in COUNTS)


def chernoff(log_mgf: Callable[[float], float], lo: float, hi: float, n: int, lams: list[float]) -> float:
    """Upper bound on P(mean of n draws outside [lo, hi]) from the draws' log-MGF (any lambda gives a bound)."""
    upper = max(lam * hi - log_mgf(lam) for lam in lams if lam > 0)
    lower = max(lam * lo - log_mgf(lam) for lam in lams if lam < 0)
    return math.exp(-n * max(upper, 0.0)) + math.exp(-n * max(lower, 0.0))


def binomial_tail(p: float, q: float, n: int) -> float:
    """Upper bound exp(-n KL(q || p)) on P(fraction of n Bernoulli(p) draws beyond q, on q's side of p)."""
    return math.exp(-n * (q * math.log(q / p) + (1 - q) * math.log((1 - q) / (1 - p))))


def discrete_laplace_abs_log_mgf(scale: float) -> Callable[[float], float]:
    """log E[exp(lam |X|)] for X discrete Laplace: P(X = k) = (1-p)/(1+p) p^|k|, p = exp(-1/scale)."""
    p = math.exp(-1 / scale)

    def log_mgf(lam: float) -> float:
        r = p * math.exp(lam)
        return math.log((1 - p) / (1 + p) * (1 + 2 * r / (1 - r)))

    return log_mgf


@pytest.fixture(scope="module")
def counts() -> list[int]:
    """N noisy counts of COUNTS (epsilon 0.5, K = 5: scale 10)."""
    return [int(noisy_count(COUNTS, K, 0.5).value) for _ in range(N)]  # type: ignore[arg-type]


def test_count_release_states_its_parameters() -> None:
    """A count states epsilon, delta, mechanism, sensitivity K, bounds, scale K/epsilon and a 95% half-width."""
    r = noisy_count(COUNTS, K, 0.5)
    assert (r.mechanism, r.epsilon, r.delta, r.sensitivity, r.bounds, r.scale) == (
        "discrete_laplace(count)", 0.5, 0.0, 5.0, (0, 5), 10.0
    )  # fmt: skip
    assert isinstance(r.value, int) and r.accuracy is not None and 29 < r.accuracy < 32
    json.dumps(r.to_dict())


def test_count_noise_matches_the_scale(counts: list[int]) -> None:
    """The mean absolute error of N counts is within 15% of E|X| for discrete Laplace(10) (Chernoff bound)."""
    scale = 10.0
    p = math.exp(-1 / scale)
    expected = 2 * p / (1 - p * p)  # E|X|
    lo, hi = 0.85 * expected, 1.15 * expected
    lams = [i / 1000 for i in range(-300, 95) if i]  # p e^lam < 1 needs lam < 1/scale
    assert chernoff(discrete_laplace_abs_log_mgf(scale), lo, hi, N, lams) < FAILURE
    mad = sum(abs(c - TRUE_COUNT) for c in counts) / N
    assert lo <= mad <= hi


def test_count_noise_is_not_zero(counts: list[int]) -> None:
    """At most half of the counts equal the truth (P = 0.05 each): an exact release fails this."""
    p = math.exp(-1 / 10)
    p_exact = (1 - p) / (1 + p)
    assert binomial_tail(p_exact, 0.5, N) < FAILURE
    assert sum(c == TRUE_COUNT for c in counts) <= N / 2
    assert len(set(counts)) > 20


def test_count_accuracy_covers_the_truth_at_the_stated_rate(counts: list[int]) -> None:
    """|count - truth| >= the 95% half-width in 2-8% of releases (exact miss rate ~4.7%, KL bound)."""
    half = noisy_count(COUNTS, K, 0.5).accuracy
    assert half is not None
    p = math.exp(-1 / 10)
    miss = 2 * p ** math.ceil(half) / (1 + p)  # P(|X| >= half) for integer X
    assert miss <= 0.05
    assert binomial_tail(miss, 0.02, N) + binomial_tail(miss, 0.08, N) < FAILURE
    assert 0.02 <= sum(abs(c - TRUE_COUNT) >= half for c in counts) / N <= 0.08


def test_float_sum_noise_matches_the_scale() -> None:
    """Float sums: Laplace, scale = sensitivity (~max |bound|) / epsilon; mean |error| within 15% of it (Chernoff)."""
    values = [12.5, 250.0, 99.9, 0.0, -3.0] * 40  # clamped to [0, 100]
    truth = sum(min(max(v, 0.0), 100.0) for v in values)
    first = noisy_sum(values, 0.0, 100.0, 1.0)
    assert first.mechanism == "laplace(sum)" and 100.0 <= first.scale < 100.001 and first.sensitivity >= 100.0
    errors = [abs(float(noisy_sum(values, 0.0, 100.0, 1.0).value) - truth) for _ in range(N)]  # type: ignore[arg-type]
    b = first.scale
    lo, hi = 0.85 * b, 1.15 * b
    lams = [i / (1000 * b) for i in range(-3000, 995) if i]  # |X| ~ Exponential(mean b): MGF 1 / (1 - lam b)
    assert chernoff(lambda lam: -math.log(1 - lam * b), lo, hi, N, lams) < FAILURE
    assert lo <= sum(errors) / N <= hi


def test_integer_sum_is_discrete() -> None:
    """Integer sums (token counts) use discrete Laplace with sensitivity max(|lower|, |upper|)."""
    r = noisy_sum([100, 5000, 20], 0, 1000, 0.5)
    assert r.mechanism == "discrete_laplace(sum)" and isinstance(r.value, int)
    assert (r.sensitivity, r.bounds, r.scale) == (1000.0, (0, 1000), 2000.0)


def test_mean_splits_epsilon_and_covers_the_truth() -> None:
    """noisy_mean spends epsilon/2 on the sum and on the count; its half-width misses <= 12% (KL bound)."""
    sums, counts = [300] * 1000, [3] * 1000  # 3 requests of 100 tokens each per unit: mean 100
    first = noisy_mean(sums, counts, 0, 500, K, 1.0)
    assert [p.epsilon for p in first.parts] == [0.5, 0.5] and first.epsilon == 1.0
    assert binomial_tail(0.05, 0.12, 1000) < FAILURE  # a miss has probability <= 0.05
    misses = 0
    for _ in range(1000):
        r = noisy_mean(sums, counts, 0, 500, K, 1.0)
        assert r.accuracy is not None
        misses += abs(float(r.value) - 100.0) >= r.accuracy  # type: ignore[arg-type]
    assert misses <= 120


def test_quantiles_land_near_the_truth() -> None:
    """p50 and p95 of 10,000 values spread over [100, 300] ms come out at 190-210 and 280-300 ms."""
    n = 10_000
    values = [[100 + 200 * i / n] for i in range(n)]  # one latency per unit
    candidates = list(range(0, 2001, 10))
    # A candidate with rank error e beats the best one with probability <= exp(-e / s), s <= 2 max(a, 1-a) / 0.5
    # in ranks: outside these ranges e >= 500, so exp(-500 / 3.8) * 201 candidates, astronomically small.
    for _ in range(5):
        r = noisy_quantiles(values, 1, candidates, [0.5, 0.95], 1.0)
        p50, p95 = r.value  # type: ignore[misc]
        assert 190 <= p50 <= 210 and 280 <= p95 <= 300
        assert r.accuracy_unit == "rank" and r.epsilon == 1.0 and r.bounds == (0.0, 2000.0)


def test_quantiles_refuse_a_unit_over_its_bound() -> None:
    """A unit with more values than max_per_unit is refused, not silently counted."""
    with pytest.raises(ValueError, match="max_per_unit"):
        noisy_quantiles([[1.0, 2.0, 3.0]], 2, [0.0, 10.0], [0.5], 1.0)


def test_partition_threshold_follows_delta() -> None:
    """The threshold is within one of K + scale ln(L / (2 delta)) and grows as delta shrinks."""
    for k, keys, delta in [(1, 1, 1e-9), (5, 1, 1e-6), (5, 3, 1e-9), (2, 4, 1e-12)]:
        scale, threshold = partition_threshold(k, 1.0, delta, keys)
        assert scale == pytest.approx(keys * k / 1.0)
        assert abs(threshold - (k + scale * math.log(keys / (2 * delta)))) <= 1
    assert partition_threshold(1, 1.0, 1e-12)[1] > partition_threshold(1, 1.0, 1e-6)[1]


def test_partition_selection_drops_rare_keys_and_keeps_common_ones() -> None:
    """A key held by one unit is dropped (P <= delta = 1e-12) and one held by 1000 units kept (P ~ e^-970)."""
    counts = {"rare-model": [1], "common-model": [1] * 1000, "empty": [0, 0]}
    for _ in range(20):
        assert select_partitions(counts, 1, 1.0, 1e-12) == {"common-model"}


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: noisy_count([1], 5, 0.0), "epsilon"),
        (lambda: noisy_count([1], 5, math.inf), "epsilon"),
        (lambda: noisy_count([1], 0, 1.0), "max_per_unit"),
        (lambda: noisy_sum([1.0], 5.0, 5.0, 1.0), "lower"),
        (lambda: noisy_quantiles([[1.0]], 1, [3.0, 2.0], [0.5], 1.0), "increasing"),
        (lambda: noisy_quantiles([[1.0]], 1, [1.0, 2.0], [1.0], 1.0), "alphas"),
        (lambda: select_partitions({"a": [1]}, 1, 1.0, 0.0), "delta"),
        (lambda: noisy_mean([1], [1, 1], 0, 1, 1, 1.0), "one value per unit"),
    ],
)
def test_bad_parameters_are_refused(call: Callable[[], object], match: str) -> None:
    """Invalid epsilon, bounds, candidates, alphas or delta raise ValueError before any release."""
    with pytest.raises(ValueError, match=match):
        call()


def test_histogram_noise_matches_the_scale_on_every_group() -> None:
    """A histogram release certifies epsilon for the whole vector at scale sensitivity/epsilon, and each entry's
    noise is discrete Laplace at that scale: mean |error| over N entries within 15% of E|X| (Chernoff)."""
    truth = list(range(0, 500, 10))  # 50 groups
    releases = [noisy_histogram(truth, 5, 0.5) for _ in range(N // len(truth))]
    r = releases[0]
    assert (r.mechanism, r.epsilon, r.delta, r.sensitivity, r.scale) == ("discrete_laplace(histogram)", 0.5, 0.0,
                                                                          5.0, 10.0)  # fmt: skip
    errors = [abs(v - t) for rel in releases for v, t in zip(rel.value, truth, strict=True)]  # type: ignore[arg-type]
    p = math.exp(-1 / 10)
    expected = 2 * p / (1 - p * p)
    lams = [i / 1000 for i in range(-300, 95) if i]
    assert chernoff(discrete_laplace_abs_log_mgf(10.0), 0.85 * expected, 1.15 * expected, len(errors), lams) < FAILURE
    assert 0.85 * expected <= sum(errors) / len(errors) <= 1.15 * expected


def test_quantiles_on_groups_share_one_calibration() -> None:
    """Disjoint groups get one scale, calibrated for d_in records in all groups together; each lands near its
    own median (the data is dense, so the rank error is small against the group sizes)."""
    low = [float(v % 100) for v in range(5000)]  # median ~50
    high = [1000.0 + v % 100 for v in range(5000)]  # median ~1050
    grid = [float(v) for v in range(0, 1200, 5)]
    a, b = private_quantiles([low, high], 2, grid, [0.5], 1.0)
    assert a.scale == b.scale and a.sensitivity == 2.0
    assert 35 <= a.value[0] <= 65 and 1035 <= b.value[0] <= 1065  # type: ignore[index]
