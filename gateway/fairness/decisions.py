"""Outcome audit definitions: ``policies/fairness/*.yaml`` files with ``kind: outcome``.

A probe set tests a generative model with synthetic prompts; an *outcome audit* watches a decision model (a
credit or fraud screener served behind the gateway) at work. For every request to one of its ``models`` the
gateway records the decision, read from the answer by ``prediction`` (a ``gateway.fairness.readers`` reader:
1 is the positive decision, such as approve), and the caller's sensitive attribute, taken from the request
header or body field that ``attribute`` names. Business teams later upload what really happened (ground truth,
1 for the outcome the positive decision bets on, such as repaid), keyed by request id, and the audit compares
decisions with outcomes group by group (``gateway.fairness.metrics.outcome_audit``).

The records are audit data with a retention (``retention_days``), never ledger entries, and never hold the
prompt or the answer: the request id, the model and version, the decision (0, 1, or unreadable), the group and
the time. A file without ``kind`` (or with ``kind: probe``) is a probe set; the two share the folder, the name
space (``gateway fairness run NAME``) and the ``schedule`` section.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from gateway.fairness.probeset import _GROUP, NAME, ParityThresholds, Schedule, Statistics, _Strict
from gateway.fairness.readers import Label, Number, YesNo
from gateway.fairness.schedule import every_seconds

_HEADER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")
_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}(\.[A-Za-z_][A-Za-z0-9_]{0,63}){0,3}$")
_READ_BY_GATEWAY = frozenset({"model", "messages", "prompt", "stream", "stream_options", "max_tokens",
                              "max_completion_tokens", "temperature", "top_p", "stop", "seed", "n", "user",
                              "echo", "logprobs", "best_of", "suffix"})  # fmt: skip
_WINDOW = re.compile(r"^([1-9]\d*)([hd])$")

Prediction = Annotated[YesNo | Number | Label, Field(discriminator="kind")]


def _window(value: str) -> str:
    if not _WINDOW.match(value):
        raise ValueError(f"{value!r} is not a number of hours or days, such as 30d or 12h")
    return value


class Attribute(_Strict):
    """Where a request's sensitive attribute comes from: exactly one of ``header`` and ``field``."""

    name: str = Field("group", pattern=r"^[a-z_][a-z0-9_]{0,31}$")
    """What reports call the attribute (``age_band``, ``group``)."""
    header: str | None = None
    """A request header, such as ``X-Audit-Group``."""
    field: str | None = None
    """A dotted path into the JSON body, such as ``metadata.group``. The value is taken out of the body before
    anything else sees it: it is neither screened for personal data nor forwarded to the model."""
    groups: tuple[str, ...] = Field(min_length=2)
    """The values a caller may send; anything else is refused (400) or, when not ``required``, not recorded."""
    required: bool = True
    """Refuse (400) a request to the model without a valid value, so that no decision escapes the audit."""

    @field_validator("header")
    @classmethod
    def _header(cls, value: str | None) -> str | None:
        if value is not None and not _HEADER.match(value):
            raise ValueError(f"{value!r} is not a header name (letters, digits and -)")
        return value

    @field_validator("field")
    @classmethod
    def _field(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not _PATH.match(value):
            raise ValueError(f"{value!r} is not a dotted path of at most four names, such as metadata.group")
        if value.split(".")[0] in _READ_BY_GATEWAY:
            raise ValueError(f"{value!r} is inside a field the gateway reads; use one of its own, such as metadata")
        return value

    @field_validator("groups")
    @classmethod
    def _groups(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for g in value:
            if not re.match(_GROUP, g):
                raise ValueError(f"group {g!r}: letters, digits, spaces and _ . + - only (at most 64)")
        if len(set(value)) != len(value):
            raise ValueError("a group is listed twice")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Attribute:
        if (self.header is None) == (self.field is None):
            raise ValueError("give exactly one of header and field")
        return self


class OutcomeThresholds(ParityThresholds):
    max_equal_opportunity_difference: float = Field(0.1, ge=0, le=1)
    """Largest acceptable gap between group true-positive rates."""
    max_equalized_odds_difference: float = Field(0.1, ge=0, le=1)
    """Largest acceptable gap between group true-positive rates or between group false-positive rates."""
    max_accuracy_difference: float = Field(0.1, ge=0, le=1)
    """Largest acceptable gap between group accuracies."""
    max_accuracy_drop: float = Field(0.03, ge=0, le=1)
    """Largest acceptable fall of the accuracy below its baseline (0.03: 3 points)."""
    accuracy_baseline: float | None = Field(None, ge=0, le=1)
    """The accuracy to hold the model to; default the mean of its audits' accuracies over ``baseline_window``
    before this one (none yet: no drop check)."""
    baseline_window: Annotated[str, Field(pattern=_WINDOW.pattern)] = "30d"
    min_group_size: int = Field(30, ge=1, le=1_000_000)
    """Rows a rate's denominator needs before it is reported (``metrics.outcome_audit``)."""
    max_unread_share: float = Field(0.05, ge=0, le=1)
    """Largest acceptable share of a group's labelled decisions whose answer could not be read as 0 or 1."""


class DecisionAudit(_Strict):
    kind: Literal["outcome"]
    name: str = Field(pattern=NAME)
    description: str = Field(min_length=1)
    models: tuple[str, ...] = Field(min_length=1)
    """Public model names (routes) whose decisions are recorded and audited."""
    prediction: Prediction
    """How an answer reads as a decision: 1 (selected, approved) or 0, else unreadable."""
    attribute: Attribute
    window: str = "30d"
    """An audit looks at the decisions of this long before it (the ones with uploaded outcomes)."""
    retention_days: int = Field(180, ge=1, le=3650)
    """Decision records older than this are deleted, labelled or not."""
    on_record_error: Literal["fail_closed", "log"] = "fail_closed"
    """When a decision cannot be recorded: refuse the answer (503, or a final error event in a stream), or
    serve it and log, count and ledger the gap (``fairness.unrecorded``)."""
    thresholds: OutcomeThresholds = OutcomeThresholds()
    statistics: Statistics = Statistics()
    schedule: Schedule | None = None

    @field_validator("window")
    @classmethod
    def _window_format(cls, value: str) -> str:
        return _window(value)

    @model_validator(mode="after")
    def _consistent(self) -> DecisionAudit:
        if len(set(self.models)) != len(self.models):
            raise ValueError("models: a model is listed twice")
        if every_seconds(self.window) > self.retention_days * 86400:
            raise ValueError(f"window: {self.window} reaches past retention_days ({self.retention_days})")
        return self


@dataclass(frozen=True)
class DecisionAuditFile:
    """A validated outcome audit and its file: ``path`` relative to the policy folder, SHA-256 of its bytes."""

    path: str
    digest: str
    audit: DecisionAudit
