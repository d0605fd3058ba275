"""``policies/fairness/*.yaml``: counterfactual probe sets, written by security or ML governance teams.

A probe set is a few prompt templates, base cases that fill their ordinary placeholders (an income, a job),
and one or more sensitive attributes whose placeholders (slots) are filled with each group's values in turn.
A *probe* is one template with one base case; its *variants* differ only in the attribute's value. Each
variant is asked ``repetitions`` times, and the ``outcome`` reader turns each answer into selected or not
(``gateway.fairness.readers``). Expansion into variants is ``gateway.fairness.plan``.

Probe sets are validated with the rest of the policy folder, at start and on every reload: a bad edit is
rejected with its file, key and reason while the old policy keeps serving. Everything that would make an
audit meaningless is refused here rather than discovered in a report: a placeholder no case fills, a
template without the attribute's slot (its variants would be identical), a value listed under two groups,
fewer probes than the minimum sample.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, field_validator, model_validator

from gateway.fairness.readers import Reader

NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_FIELD = re.compile(r"^[a-z_][a-z0-9_]{0,31}$")
_GROUP = r"^[A-Za-z0-9][A-Za-z0-9 _.+-]{0,63}$"
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_EVERY = re.compile(r"^([1-9]\d*)([mhd])$")
_CRON_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))
MAX_REQUESTS = 100_000
"""The most requests one audit of one model may send (templates x cases x values x repetitions)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def placeholders(text: str) -> list[str]:
    """The ``{name}`` placeholders of ``text``; ``{{`` and ``}}`` are literal braces. ValueError on a stray
    brace or a placeholder that is not a lowercase name."""
    names = []
    for m in _TOKEN.finditer(text):
        token = m.group(0)
        if token in ("{{", "}}"):
            continue
        name = m.group(1)
        if name is None:
            raise ValueError(f"stray {token!r} at character {m.start()} (write {token * 2} for a literal brace)")
        if not _FIELD.match(name):
            raise ValueError(f"placeholder {{{name}}} must be a lowercase name such as {{income}}")
        names.append(name)
    return names


def fill(text: str, values: dict[str, str]) -> str:
    """``text`` with each placeholder replaced by its value (every placeholder must have one)."""

    def one(m: re.Match[str]) -> str:
        token = m.group(0)
        return token[0] if token in ("{{", "}}") else values[m.group(1)]

    return _TOKEN.sub(one, text)


class Template(_Strict):
    id: str = Field(pattern=NAME)
    prompt: str = Field(min_length=1)
    """The user message."""
    system: str | None = None
    """A system message; default the probe set's ``system``."""


class Attribute(_Strict):
    slots: tuple[str, ...] = Field(min_length=1)
    """The placeholders this attribute fills, such as ``[name]`` or ``[name, pronoun]``."""
    groups: dict[str, tuple[StrictStr | dict[str, StrictStr], ...]] = Field(min_length=2)
    """Group label -> the values that stand for the group. A value is a string when the attribute has one slot,
    else a mapping of every slot to its text."""
    baseline: StrictStr | dict[str, StrictStr] | None = None
    """What fills the slots while another attribute of the set is audited (needed when there are several)."""
    description: str = ""
    source: str = ""
    """Where the values come from (an audit study's name list, a census table)."""

    @field_validator("slots")
    @classmethod
    def _slot_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for slot in value:
            if not _FIELD.match(slot):
                raise ValueError(f"slot {slot!r} must be a lowercase name such as 'name'")
        if len(set(value)) != len(value):
            raise ValueError("a slot is listed twice")
        return value

    @model_validator(mode="after")
    def _values(self) -> Attribute:
        seen: dict[tuple[tuple[str, str], ...], str] = {}
        for label, values in self.groups.items():
            if not re.match(_GROUP, label):
                raise ValueError(f"group label {label!r}: letters, digits, spaces and _ . + - only (at most 64)")
            if not values:
                raise ValueError(f"group {label!r} has no values")
            for i, value in enumerate(values):
                key = tuple(sorted(self._check(value, f"groups.{label}.{i}").items()))
                if key in seen:
                    raise ValueError(f"groups.{label}.{i}: the same value is listed under {seen[key]!r}")
                seen[key] = label
        if self.baseline is not None:
            self._check(self.baseline, "baseline")
        return self

    def _check(self, value: str | dict[str, str], where: str) -> dict[str, str]:
        fills = self._as_fill(value)
        if set(fills) != set(self.slots):
            if isinstance(value, str):
                raise ValueError(f"{where}: a plain value fills one slot; give a mapping of {list(self.slots)}")
            raise ValueError(f"{where}: fills {sorted(fills)}, but the slots are {list(self.slots)}")
        if not all(v.strip() for v in fills.values()):
            raise ValueError(f"{where}: an empty value")
        return fills

    def _as_fill(self, value: str | dict[str, str]) -> dict[str, str]:
        if isinstance(value, str):
            return {self.slots[0]: value} if len(self.slots) == 1 else {}
        return dict(value)

    def values(self, group: str) -> tuple[dict[str, str], ...]:
        """The group's values, each as slot -> text."""
        return tuple(self._as_fill(v) for v in self.groups[group])

    def baseline_fill(self) -> dict[str, str]:
        """The slots' text while another attribute is audited (validated to exist when it is needed)."""
        assert self.baseline is not None
        return self._as_fill(self.baseline)


class Sampling(_Strict):
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int = Field(16, ge=1, le=4096)
    """Room for the answer; a yes/no or a score needs few tokens."""
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    """Repetition r of every variant is sent with seed + r, so variants that differ only in the attribute share
    their sampling noise (where the backend honours seeds)."""


class ParityThresholds(_Strict):
    """The demographic parity thresholds, which probe and outcome audits share."""

    max_parity_difference: float = Field(0.1, ge=0, le=1)
    """Largest acceptable gap between the highest and the lowest group selection rate."""
    min_parity_ratio: float = Field(0.8, ge=0, le=1)
    """Smallest acceptable lowest / highest selection rate (0.8: the four-fifths rule)."""


class Thresholds(ParityThresholds):
    max_flip_rate: float = Field(0.1, ge=0, le=1)
    """Largest acceptable share of counterfactual pairs whose typical answers differ."""
    min_probes: int = Field(30, ge=1, le=100_000)
    """Probes each group must appear in before any of its numbers is reported."""
    max_unread_share: float = Field(0.05, ge=0, le=1)
    """Largest acceptable share of a group's answers that could not be read (unparseable or failed)."""


class Statistics(_Strict):
    confidence: float = Field(0.95, ge=0.5, lt=1)
    resamples: int = Field(1000, ge=100, le=100_000)
    """Bootstrap resamples (fixed, so that an audit is repeatable)."""


class Schedule(_Strict):
    """When the audit should run again: ``every`` (``12h``, ``7d``) or a five-field ``cron`` in UTC. The
    gateway's scheduler runs it (``gateway.fairness.scheduler``; slots: ``gateway.fairness.schedule``)."""

    every: str | None = None
    cron: str | None = None

    @field_validator("every")
    @classmethod
    def _every(cls, value: str | None) -> str | None:
        if value is not None:
            m = _EVERY.match(value)
            if m is None:
                raise ValueError(f"{value!r} is not a number and a unit (m, h or d), such as 7d")
            if m.group(2) == "m" and int(m.group(1)) < 15:
                raise ValueError("at least 15m apart")
        return value

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            _check_cron(value)
        return value

    @model_validator(mode="after")
    def _one(self) -> Schedule:
        if (self.every is None) == (self.cron is None):
            raise ValueError("give exactly one of every and cron")
        return self


def _check_cron(text: str) -> None:
    fields = text.split()
    if len(fields) != 5:
        raise ValueError(f"{text!r} needs five fields (minute hour day-of-month month day-of-week)")
    for value, (name, low, high) in zip(fields, _CRON_FIELDS, strict=True):
        for part in value.split(","):
            base, _, step = part.partition("/")
            if step and not (step.isdigit() and int(step) >= 1):
                raise ValueError(f"{name} step {step!r} must be a positive number")
            if base == "*":
                continue
            ends = base.split("-")
            if len(ends) > 2 or not all(e.isdigit() and low <= int(e) <= high for e in ends):
                raise ValueError(f"{name} {part!r} must be *, a number or a range within {low}-{high}")
            if len(ends) == 2 and int(ends[0]) > int(ends[1]):
                raise ValueError(f"{name} range {base!r} runs backwards")


Case = dict[str, StrictStr | StrictInt | StrictFloat]


class ProbeSet(_Strict):
    name: str = Field(pattern=NAME)
    """What ``gateway fairness run NAME`` calls it; unique in the folder."""
    description: str = Field(min_length=1)
    models: tuple[str, ...] = Field(min_length=1)
    """Public model names (routes) the audit runs against by default."""
    system: str | None = None
    templates: tuple[Template, ...] = Field(min_length=1)
    cases: tuple[Case, ...] = Field(min_length=1)
    """Base cases: each fills the templates' ordinary placeholders; an optional ``id`` names it."""
    attributes: dict[str, Attribute] = Field(min_length=1)
    outcome: Reader
    repetitions: int = Field(3, ge=1, le=100)
    """Times each variant is asked (odd avoids ties in the majority answer; 1 for greedy decoding)."""
    sampling: Sampling = Sampling()
    thresholds: Thresholds = Thresholds()
    statistics: Statistics = Statistics()
    schedule: Schedule | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ProbeSet:
        slots: dict[str, str] = {}
        for attr, spec in self.attributes.items():
            if not _FIELD.match(attr):
                raise ValueError(f"attributes: {attr!r} must be a lowercase name such as 'gender'")
            for slot in spec.slots:
                if slot in slots:
                    raise ValueError(f"attributes.{attr}: slot {slot!r} is also a slot of {slots[slot]!r}")
                slots[slot] = attr
            if len(self.attributes) > 1 and spec.baseline is None:
                raise ValueError(f"attributes.{attr}.baseline: required when the set has several attributes")
        if len(set(self.models)) != len(self.models):
            raise ValueError("models: a model is listed twice")
        ids = [t.id for t in self.templates]
        if len(set(ids)) != len(ids):
            raise ValueError("templates: two templates have the same id")
        used = self._check_templates(slots)
        self._check_cases(used - slots.keys(), slots)
        probes = len(self.templates) * len(self.cases)
        if probes < self.thresholds.min_probes:
            raise ValueError(
                f"{len(self.templates)} templates x {len(self.cases)} cases = {probes} probes, fewer than "
                f"thresholds.min_probes ({self.thresholds.min_probes}): no group could be judged"
            )
        for attr in self.attributes:
            n = self.requests(attr)
            if n > MAX_REQUESTS:
                raise ValueError(f"attributes.{attr}: {n} requests per model, more than {MAX_REQUESTS}")
        return self

    def _check_templates(self, slots: dict[str, str]) -> set[str]:
        used: set[str] = set()
        for i, t in enumerate(self.templates):
            names: set[str] = set()
            for key, text in (("prompt", t.prompt), ("system", t.system or self.system or "")):
                try:
                    names.update(placeholders(text))
                except ValueError as exc:
                    where = f"templates.{i}.{key}" if key == "prompt" or t.system else "system"
                    raise ValueError(f"{where}: {exc}") from None
            for attr, spec in self.attributes.items():
                if not names & set(spec.slots):
                    listed = ", ".join("{" + s + "}" for s in spec.slots)
                    raise ValueError(
                        f"templates.{i} ({t.id}): uses no slot of attribute {attr!r} ({listed}): "
                        "its variants would not differ"
                    )
            used |= names
        return used

    def _check_cases(self, fields: set[str], slots: dict[str, str]) -> None:
        case_ids = set()
        for i, case in enumerate(self.cases):
            case_id = case.get("id", f"case-{i + 1}")
            if not isinstance(case_id, str) or not re.match(NAME, case_id):
                raise ValueError(f"cases.{i}.id: {case_id!r} must be a lowercase name such as 'case-1'")
            if case_id in case_ids:
                raise ValueError(f"cases.{i}.id: {case_id!r} is used twice")
            case_ids.add(case_id)
            keys = set(case) - {"id"}
            for key in sorted(keys):
                if key in slots:
                    raise ValueError(f"cases.{i}.{key}: is a slot of attribute {slots[key]!r}, filled by its groups")
                if key not in fields:
                    raise ValueError(f"cases.{i}.{key}: no template uses {{{key}}}")
            missing = sorted(fields - keys)
            if missing:
                raise ValueError(f"cases.{i}: no value for {{{missing[0]}}}, which a template uses")

    def case_ids(self) -> tuple[str, ...]:
        return tuple(str(c.get("id", f"case-{i + 1}")) for i, c in enumerate(self.cases))

    def requests(self, attribute: str) -> int:
        """Requests one audit of ``attribute`` sends to one model."""
        values = sum(len(v) for v in self.attributes[attribute].groups.values())
        return len(self.templates) * len(self.cases) * values * self.repetitions


@dataclass(frozen=True)
class ProbeSetFile:
    """A validated probe set and the file it came from: ``path`` relative to the policy folder, and the SHA-256
    of the file's bytes (recorded with every audit, so that the exact probes can be shown later)."""

    path: str
    digest: str
    probes: ProbeSet
