"""Counterfactual probe audits: the flip rate on hand-built records, planted disparities found, none invented,
and insufficient data below the minimum number of probes."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.fairness.probes import probe_audit
from gateway.fairness.results import Estimate, InsufficientData, ProbeAudit

Record = tuple[str, str, int, int]


def run(records: list[Record], **kw: int) -> ProbeAudit:
    probe, group, rep, outcome = zip(*records, strict=True)
    return probe_audit(probe, group, rep, outcome, rng=np.random.default_rng(0), **kw)


def majority(probe: str, group: str, answer: int, reps: int = 3) -> list[Record]:
    """``reps`` records whose majority is ``answer``: the last repetition disagrees."""
    return [(probe, group, r, answer if r < reps - 1 else 1 - answer) for r in range(reps)]


def test_flip_rate_by_hand() -> None:
    """p1 majorities (a 1, b 1, c 0): pairs ab 0, ac 1, bc 1; p2 all 0: three pairs, no flip; p3 (a 1, b 0):
    one flip; p4 asked with a only: no pair. Flips 3 over 7 pairs."""
    records = (
        majority("p1", "a", 1)
        + majority("p1", "b", 1)
        + majority("p1", "c", 0)
        + majority("p2", "a", 0)
        + majority("p2", "b", 0)
        + majority("p2", "c", 0)
        + majority("p3", "a", 1)
        + majority("p3", "b", 0)
        + majority("p4", "a", 1)
    )
    a = run(records, min_probes=1)
    flip = a.counterfactual_flip_rate
    assert isinstance(flip, Estimate)
    assert flip.value == pytest.approx(3 / 7, abs=1e-15)
    assert (a.probes, a.compared_probes, a.compared_pairs, a.records) == (4, 3, 7, 27)
    assert 0.0 <= flip.low <= flip.value <= flip.high <= 1.0


def test_a_tie_counts_half() -> None:
    """Two repetitions split 1/1 for b against a clear 1 for a: half a flip; against another tie: none."""
    records = [("p", "a", 0, 1), ("p", "a", 1, 1), ("p", "b", 0, 1), ("p", "b", 1, 0)]
    assert run(records, min_probes=1).counterfactual_flip_rate == Estimate(0.5, 0.5, 0.5, 0.95, 1000)
    ties = [("p", "a", 0, 0), ("p", "a", 1, 1), ("p", "b", 0, 1), ("p", "b", 1, 0)]
    flip = run(ties, min_probes=1).counterfactual_flip_rate
    assert isinstance(flip, Estimate) and flip.value == 0.0


def test_selection_rates_count_every_record() -> None:
    """A group's selection rate is its share of outcome 1 over all its records and repetitions."""
    records = [("p1", "a", 0, 1), ("p1", "a", 1, 1), ("p1", "a", 2, 0), ("p1", "b", 0, 0), ("p2", "b", 0, 1)]
    a = run(records, min_probes=1)
    rates = {g.group: g.selection_rate for g in a.groups}
    assert isinstance(rates["a"], Estimate) and rates["a"].value == pytest.approx(2 / 3, abs=1e-15)
    assert isinstance(rates["b"], Estimate) and rates["b"].value == 0.5
    assert [(g.records, g.probes) for g in a.groups] == [(3, 1), (2, 2)]


def planted(seed: int, rate_a: float, rate_b: float, probes: int = 80, reps: int = 3) -> list[Record]:
    """Each probe asked with a and b, ``reps`` times each; outcomes drawn at each group's rate."""
    rng = np.random.default_rng(seed)
    return [
        (f"p{t}", g, r, int(rng.random() < p))
        for t in range(probes)
        for g, p in (("a", rate_a), ("b", rate_b))
        for r in range(reps)
    ]


def test_planted_probe_disparity_is_found() -> None:
    """a selected at 0.6, b at 0.3 over 80 probes x 3 repetitions: DP difference interval covers 0.3, not 0,
    and the majorities flip on many probes."""
    a = run(planted(1, 0.6, 0.3))
    dp, flip = a.demographic_parity_difference, a.counterfactual_flip_rate
    assert isinstance(dp, Estimate) and isinstance(flip, Estimate)
    assert dp.low < 0.3 < dp.high and dp.low > 0.1
    assert flip.low > 0.2
    ratio = a.demographic_parity_ratio
    assert isinstance(ratio, Estimate) and ratio.high < 0.8


def test_no_probe_disparity_is_invented() -> None:
    """The attribute changes nothing (each probe's answer depends on the probe only): no flip, [0, 0], and a
    DP difference of 0 in an interval that contains 0."""
    rng = np.random.default_rng(2)
    answer = rng.random(60) < 0.5
    records = [(f"p{t}", g, r, int(answer[t])) for t in range(60) for g in ("a", "b", "c") for r in range(3)]
    a = run(records)
    assert a.counterfactual_flip_rate == Estimate(0.0, 0.0, 0.0, 0.95, 1000)
    dp = a.demographic_parity_difference
    assert isinstance(dp, Estimate) and dp.value == 0.0 and dp.low == 0.0
    ratio = a.demographic_parity_ratio
    assert isinstance(ratio, Estimate) and ratio.value == 1.0 and ratio.high == 1.0


def test_insufficient_probes() -> None:
    """Ten probes with min_probes 30: rates, comparisons and the flip rate are all insufficient data."""
    a = run(planted(3, 0.5, 0.5, probes=10))
    assert isinstance(a.groups[0].selection_rate, InsufficientData)
    assert isinstance(a.demographic_parity_difference, InsufficientData)
    assert a.demographic_parity_difference.groups == ("a", "b")
    flip = a.counterfactual_flip_rate
    assert isinstance(flip, InsufficientData) and "10 probes" in flip.reason and flip.minimum == 30


def test_group_in_too_few_probes() -> None:
    """A group asked in 5 of 40 probes: its rate and the comparisons are insufficient; the flip rate is not."""
    records = planted(4, 0.5, 0.5, probes=40) + [(f"p{t}", "c", 0, 1) for t in range(5)]
    a = run(records)
    assert [g.probes for g in a.groups] == [40, 40, 5]
    assert isinstance(a.groups[2].selection_rate, InsufficientData)
    dp = a.demographic_parity_difference
    assert isinstance(dp, InsufficientData) and dp.groups == ("c",)
    assert isinstance(a.counterfactual_flip_rate, Estimate)


def test_repeated_record_is_refused() -> None:
    """The same (probe, group, repetition) twice is a recording error, not a second answer."""
    with pytest.raises(ValueError, match=r"probe 'p1', group 'a', repetition 0 appears more than once"):
        run([("p1", "a", 0, 1), ("p1", "b", 0, 1), ("p1", "a", 0, 0)], min_probes=1)
