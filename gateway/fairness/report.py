"""What a probe audit returns and records: counts per group, the metrics, the checks, and the model audited.

``ProbeSetAudit.ledger_data`` is the ``data`` of the ``fairness.audit`` ledger entry (docs/ledger.md); it
holds numbers, labels and digests only, never a prompt or an answer. ``to_dict`` adds fairlearn's
``MetricFrame`` values, for reports.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import orjson

from gateway.fairness.reference import SelectionReference
from gateway.fairness.results import ProbeAudit
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
