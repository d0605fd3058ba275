"""A probe set expanded into the requests of one audit: template x base case x group value x repetition.

For the audited attribute, each probe (one template with one base case) is asked with every value of every
group, each ``repetitions`` times; the slots of the set's other attributes hold their ``baseline``. The
metrics (``gateway.fairness.probes``) see a record per request: the probe, the group, and a repetition number
unique within the probe and group (value v, repetition r -> 1000 v + r), so a group's answer to a probe is
the majority over all its values and repetitions. A group is judged by all the names (or other values) that
stand for it, never by one of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.fairness.probeset import ProbeSet, fill


@dataclass(frozen=True, slots=True)
class Variant:
    """One request of an audit."""

    attribute: str
    probe: str
    """``<template id>/<case id>``."""
    group: str
    value: int
    """Index of the group value used."""
    repetition: int
    """Index of this repetition of the same variant (0 .. repetitions - 1)."""
    messages: tuple[dict[str, str], ...]
    seed: int | None

    @property
    def record_repetition(self) -> int:
        """The repetition number the metrics see: unique per (probe, group)."""
        return self.value * 1_000 + self.repetition  # repetitions are at most 100 (probeset.ProbeSet)


def expand(probes: ProbeSet, attribute: str) -> list[Variant]:
    """Every request of an audit of ``attribute``, in a fixed order (probe, group, value, repetition)."""
    spec = probes.attributes[attribute]
    others: dict[str, str] = {}
    for name, other in probes.attributes.items():
        if name != attribute:
            others.update(other.baseline_fill())
    seed = probes.sampling.seed
    out: list[Variant] = []
    for template in probes.templates:
        system = template.system if template.system is not None else probes.system
        for case_id, case in zip(probes.case_ids(), probes.cases, strict=True):
            base = {k: str(v) for k, v in case.items() if k != "id"} | others
            for group in spec.groups:
                for v, value in enumerate(spec.values(group)):
                    fills = base | value
                    messages = ([{"role": "system", "content": fill(system, fills)}] if system else []) + [
                        {"role": "user", "content": fill(template.prompt, fills)}
                    ]
                    out.extend(
                        Variant(
                            attribute,
                            f"{template.id}/{case_id}",
                            group,
                            v,
                            r,
                            tuple(messages),
                            None if seed is None else seed + r,
                        )
                        for r in range(probes.repetitions)
                    )
    return out
