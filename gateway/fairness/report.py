"""What an audit returns and records: counts per group, the metrics, the checks, and the model audited.

``ProbeSetAudit`` (probe audits) and ``OutcomeAuditReport`` (outcome audits): ``ledger_data`` is the ``data``
of the ``fairness.audit`` ledger entry (docs/ledger.md); it holds numbers, labels and digests only, never a
prompt or an answer. ``to_dict`` adds fairlearn's values, for reports and the results store (``record_of``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import orjson

from gateway.fairness.reference import ReferenceMetrics, SelectionReference
from gateway.fairness.results import Estimate, OutcomeAudit, ProbeAudit
from gateway.fairness.store import AuditRecord
from gateway.fairness.verdict import Check, Status


@dataclass(frozen=True)
class GroupCounts:
    """A group's requests and what came of them: ``read`` = ``requests`` - ``unparseable`` - ``failed``, of which
    ``selected`` were read as selected; ``refused`` counts refusals (read as the outcome reader says)."""

    group: str
    requests: int
    read: int
    selected: int
    refused: int
    unparseable: int
    failed: int


@dataclass(frozen=True)
class AttributeReport:
    """The audit of one sensitive attribute. ``metrics`` and ``reference`` are None when no answer was read."""

    attribute: str
    status: Status
    checks: tuple[Check, ...]
    counts: tuple[GroupCounts, ...]
    metrics: ProbeAudit | None
    reference: SelectionReference | None


@dataclass(frozen=True)
class ProbeSetAudit:
    """One probe set run against one model."""

    audit_id: str
    probe_set: str
    file: str
    """The probe set's file, relative to the policy folder."""
    digest: str
    """SHA-256 of that file's bytes."""
    model: str
    """The public model name (route) audited."""
    backend: str
    backend_model: str
    version: str | None
    """The pinned backend model version; None when the route leaves it to the server."""
    policy_version: int
    requested_by: str
    requests: int
    status: Status
    attributes: tuple[AttributeReport, ...]
    thresholds: dict[str, Any]
    statistics: dict[str, Any]
    """``confidence``, ``resamples`` and the bootstrap ``seed`` (from the digest: the same records give the same
    intervals)."""
    seq: int = -1
    """The ``fairness.audit`` entry's position in the ledger."""

    def ledger_data(self) -> dict[str, Any]:
        """The ``fairness.audit`` entry: JSON types only."""
        data = asdict(self)
        del data["seq"]
        for attr in data["attributes"]:
            del attr["reference"]
        return _plain(data)

    def to_dict(self) -> dict[str, Any]:
        """Everything, fairlearn's values included, JSON-ready."""
        return _plain(asdict(self))


def _plain(value: dict[str, Any]) -> dict[str, Any]:
    """Tuples as lists, exactly as JSON will carry them."""
    out: dict[str, Any] = orjson.loads(orjson.dumps(value))
    return out


@dataclass(frozen=True)
class GroupCoverage:
    """A group's decisions in an outcome audit's window: ``recorded``, of which ``labelled`` have an uploaded
    outcome, of which ``unreadable`` had an answer that could not be read as a decision (left out of the
    metrics)."""

    group: str
    recorded: int
    labelled: int
    unreadable: int


@dataclass(frozen=True)
class OutcomeAuditReport:
    """One outcome audit of one version of a decision model over a window of its recorded decisions."""

    audit_id: str
    audit: str
    """The outcome audit's name (``policies/fairness/*.yaml``)."""
    file: str
    digest: str
    """SHA-256 of the definition file's bytes."""
    model: str
    version: str | None
    """The model version the decisions were made by (None: the server's default, unpinned)."""
    attribute: str
    window: dict[str, str]
    """``from`` and ``to`` (exclusive), ISO 8601 UTC: when the audited decisions were made."""
    policy_version: int
    requested_by: str
    status: Status
    checks: tuple[Check, ...]
    coverage: tuple[GroupCoverage, ...]
    accuracy: Estimate | None
    """Accuracy over all groups' readable labelled decisions, with its Wilson interval."""
    baseline: dict[str, Any] | None
    """``accuracy``, and its ``source``: ``policy`` or ``previous audits`` (with their count); None: none yet."""
    metrics: OutcomeAudit | None
    reference: ReferenceMetrics | None
    """fairlearn's values for the same decisions (the metrics agree with them to 1e-12)."""
    thresholds: dict[str, Any]
    statistics: dict[str, Any]
    kind: str = "outcome"
    seq: int = -1

    def ledger_data(self) -> dict[str, Any]:
        """The ``fairness.audit`` entry: JSON types only, fairlearn's duplicate values left out."""
        data = asdict(self)
        del data["seq"], data["reference"]
        return _plain(data)

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))


def record_of(report: ProbeSetAudit | OutcomeAuditReport, *, started: float, finished: float,
              log: str) -> AuditRecord:  # fmt: skip
    """The results-store row of a finished audit (``log``: the ledger log holding its entry)."""
    if isinstance(report, OutcomeAuditReport):
        name, kind, accuracy = report.audit, "outcome", report.accuracy.value if report.accuracy else None
    else:
        name, kind, accuracy = report.probe_set, "probe", None
    return AuditRecord(report.audit_id, name, kind, report.model, report.version or "", report.status, started,
                       finished, report.requested_by, log, report.seq, accuracy, report.to_dict())  # fmt: skip
