"""Counterfactual probe audits of generative models: selection rates per group and the counterfactual flip rate.

A probe is one prompt template with its slots filled, except the sensitive attribute; its variants fill that
slot with each group value (for example the same loan request signed by different names), and each variant
is asked ``repetition`` times. Each answer is scored 0/1 ("selected": approved, recommended, hired) by the
caller. A record is (probe_id, group, repetition, outcome); a (probe_id, group, repetition) triple appears at
most once.

Definitions (groups g, probes t, records of probe t and group g: n_tg of which o_tg have outcome 1):

- selection rate s_g = sum_t o_tg / sum_t n_tg, over all records of g; demographic parity difference
  max_g s_g - min_g s_g and ratio min_g s_g / max_g s_g (1 when every s_g is 0), as in ``metrics``.
- counterfactual flip rate. Per probe and group, the majority outcome over the repetitions:
  m_tg = 1 if o_tg > n_tg / 2, 0 if o_tg < n_tg / 2, and 1/2 on a tie. For each probe, every unordered
  pair {g, h} of the group values it was asked with is compared, contributing |m_tg - m_th|: 1 when the
  majorities differ, 1/2 when one is a tie, 0 when they agree. The flip rate is the sum of the contributions
  over all pairs of all probes divided by the number of pairs. A probe asked with one group value only has
  no pair and does not count.

Why majorities, not repetition r of one variant against repetition r of another. Sampled answers differ
between repetitions of the same prompt: pairing repetitions counts that noise as flips, at 2 p (1 - p) for a
model that says yes with probability p whatever the attribute, and more repetitions never lower that floor.
The majority converges to the model's typical answer as repetitions grow (5 repetitions at p = 0.8 agree
with it 94% of the time), so the flip rate measures how often changing only the attribute changes what the
model typically answers. With one repetition (greedy decoding) both definitions agree. Use an odd number of
repetitions to avoid ties.

Minimum sample size and intervals. The probes, not the records, are the units: the records of one probe
(its variants and repetitions) are not independent. A group's selection rate needs the group in at least
``min_probes`` probes, differences and ratios need that for every group, and the flip rate needs at least
``min_probes`` probes with two or more group values; below that the result is ``InsufficientData``. The
bootstrap resamples whole probes with replacement (``bootstrap.resample_clusters``; not stratified by group,
as the groups are inside each probe); rates get percentile intervals, the difference and ratio the
simultaneous-contrast intervals of ``metrics``, and the flip rate its percentile interval.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from gateway.fairness._inputs import as_binary, as_codes, as_ints, check_groups, check_lengths, check_settings
from gateway.fairness.bootstrap import FloatArray, percentile_interval, resample_clusters
from gateway.fairness.metrics import compare, rate_result
from gateway.fairness.results import Estimate, InsufficientData, ProbeAudit, ProbeGroup, Result


def _check_unique(
    t: np.ndarray[Any, Any],
    g: np.ndarray[Any, Any],
    rep: np.ndarray[Any, Any],
    probes: tuple[str, ...],
    labels: tuple[str, ...],
) -> None:
    """ValueError if a (probe, group, repetition) triple appears twice: a result recorded twice."""
    order = np.lexsort((rep, g, t))
    ts, gs, rs = t[order], g[order], rep[order]
    dup = (ts[1:] == ts[:-1]) & (gs[1:] == gs[:-1]) & (rs[1:] == rs[:-1])
    if dup.any():
        i = order[1:][dup][0]
        raise ValueError(
            f"probe {probes[t[i]]!r}, group {labels[g[i]]!r}, repetition {int(rep[i])} appears more than once"
        )


def probe_audit(
    probe_id: Iterable[Any],
    group: Iterable[Any],
    repetition: Iterable[Any],
    outcome: Iterable[Any],
    *,
    rng: np.random.Generator,
    resamples: int = 1000,
    confidence: float = 0.95,
    min_probes: int = 30,
) -> ProbeAudit:
    """Audit the records of counterfactual probes; columns of one value per record each.

    ``probe_id`` and ``group`` hold strings, ``repetition`` integers, ``outcome`` 0/1. Raises ValueError on
    mismatched lengths, empty input, outcomes other than 0/1, non-string ids or groups, and repeated
    (probe_id, group, repetition) triples. Definitions: see the module docstring.
    """
    check_settings(resamples, confidence, min_probes, "min_probes", rng)
    probes, t = as_codes(probe_id, "probe_id")
    labels, g = as_codes(group, "group")
    rep, y = as_ints(repetition, "repetition"), as_binary(outcome, "outcome")
    check_lengths(probe_id=len(t), group=len(g), repetition=len(rep), outcome=len(y))
    check_groups(labels, "group")
    _check_unique(t, g, rep, probes, labels)
    n_t, n_g = len(probes), len(labels)
    cell = t * n_g + g
    ones = np.bincount(cell, weights=y, minlength=n_t * n_g).reshape(n_t, n_g)
    count = np.bincount(cell, minlength=n_t * n_g).reshape(n_t, n_g).astype(np.float64)
    present = count > 0
    yes = (present & (2 * ones > count)).sum(axis=1)
    tie = (present & (2 * ones == count)).sum(axis=1)
    no = (present & (2 * ones < count)).sum(axis=1)
    variants = yes + tie + no
    flips = (yes * no + 0.5 * (yes + no) * tie).astype(np.float64)
    pairs = (variants * (variants - 1) // 2).astype(np.float64)

    totals = np.hstack([ones, count, flips[:, None], pairs[:, None]])
    boot = resample_clusters(totals, resamples, rng)
    with np.errstate(divide="ignore", invalid="ignore"):
        boot_rate: FloatArray = boot[:, :n_g] / boot[:, n_g : 2 * n_g]
        boot_flip: FloatArray = boot[:, -2] / boot[:, -1]
        boot_log: FloatArray = np.log(boot_rate)
    rate = ones.sum(axis=0) / count.sum(axis=0)
    in_probes = present.sum(axis=0)
    groups = tuple(
        ProbeGroup(
            group=labels[i],
            records=int(count[:, i].sum()),
            probes=int(in_probes[i]),
            selection_rate=rate_result(
                float(rate[i]), boot_rate[:, i], int(in_probes[i]), "probes", min_probes, confidence, labels[i]
            ),
        )
        for i in range(n_g)
    )
    short = {labels[i]: int(in_probes[i]) for i in range(n_g) if in_probes[i] < min_probes}
    pair_index = [(i, j) for i in range(n_g) for j in range(i + 1, n_g)]
    top = float(rate.max())
    compared = int((variants >= 2).sum())
    return ProbeAudit(
        groups=groups,
        demographic_parity_difference=compare(
            float(rate.max() - rate.min()), boot_rate, pair_index, short, "probes", min_probes, confidence, n_g
        ),
        demographic_parity_ratio=compare(
            float(rate.min()) / top if top > 0 else 1.0,
            boot_log,
            pair_index,
            short,
            "probes",
            min_probes,
            confidence,
            n_g,
            log_ratio=True,
        ),
        counterfactual_flip_rate=_flip_rate(flips, pairs, boot_flip, compared, n_g, min_probes, confidence),
        records=len(y),
        probes=n_t,
        compared_probes=compared,
        compared_pairs=int(pairs.sum()),
        min_probes=min_probes,
        resamples=resamples,
        confidence=confidence,
    )


def _flip_rate(
    flips: FloatArray, pairs: FloatArray, boot: FloatArray, compared: int, groups: int, minimum: int, confidence: float
) -> Result:
    """The flip rate and its percentile interval over resampled probes, or why there is none."""
    if groups < 2:
        return InsufficientData("only one group: a comparison needs at least two", (), minimum)
    if compared < minimum:
        return InsufficientData(
            f"{compared} probes asked with two or more group values, fewer than the minimum of {minimum}", (), minimum
        )
    interval = percentile_interval(boot, confidence)
    if interval is None:  # pragma: no cover - every resample would have to miss all compared probes
        return InsufficientData("no resample holds a compared probe", (), minimum)
    low, high, used = interval
    return Estimate(float(flips.sum() / pairs.sum()), low, high, confidence, used)
