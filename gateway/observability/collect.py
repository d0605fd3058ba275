"""Values read at scrape time: the ledger and its anchoring, the privacy budget, and Triton's own metrics.

The collector is registered once, with the app's registry; the lifespan binds the running ledger and Triton
scraper to it (``bind``), and until then it yields nothing of them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from gateway.audit import AuditTrail
    from gateway.observability.metrics import Metrics
    from gateway.observability.triton import TritonScraper


class GatewayCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.audit: AuditTrail | None = None
        self.triton: TritonScraper | None = None

    def bind(self, audit: AuditTrail | None, triton: TritonScraper | None) -> None:
        self.audit, self.triton = audit, triton

    def describe(self) -> list[Metric]:
        return []  # the series depend on what is bound: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        if self.audit is not None:
            yield from ledger_families(self.audit)
        left = self.metrics.dp_left
        if left:
            yield GaugeMetricFamily("gateway_dp_budget_remaining_epsilon_min", "Smallest remaining privacy budget "
                                    "(epsilon) among the consumers this replica answered in the current budget "
                                    "period.", value=min(left.values()))  # fmt: skip
        if self.triton is not None:
            yield from self.triton.collect()


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def ledger_families(audit: AuditTrail) -> Iterator[Metric]:
    """The ledger's state, as ``/readyz`` reports it, and how far anchoring lags."""
    s = audit.ledger.status()
    yield _gauge("gateway_ledger_up", "1 while the ledger writes; 0 while requests are refused (fail closed).",
                 1.0 if s.ok else 0.0)  # fmt: skip
    yield _gauge("gateway_ledger_entries", "Entries in this replica's log.", s.size)
    yield _gauge("gateway_ledger_queued_entries", "Entries waiting for the next group commit.", s.queued)
    yield _gauge("gateway_ledger_unsigned_entries", "Entries not yet covered by a signed checkpoint.",
                 max(0, s.size - s.checkpoint_size))  # fmt: skip
    if s.checkpoint_time is not None:
        yield _gauge("gateway_ledger_checkpoint_age_seconds", "Age of the newest signed checkpoint.",
                     max(0.0, time.time() - s.checkpoint_time))  # fmt: skip
    if audit.anchorer is not None:
        a = audit.anchorer.status()
        yield _gauge("gateway_ledger_anchoring_up", "1 unless the last anchoring attempt failed.",
                     0.0 if a.error else 1.0)  # fmt: skip
        yield _gauge("gateway_ledger_anchored_entries", "Size of the newest checkpoint anchored on the chain.",
                     a.anchored_size)  # fmt: skip
        yield _gauge("gateway_ledger_anchoring_lag_entries", "Entries signed but not yet anchored.", a.lag_entries)
        yield _gauge("gateway_ledger_anchoring_lag_seconds", "How long the oldest unanchored checkpoint has waited.",
                     a.lag_s)  # fmt: skip
