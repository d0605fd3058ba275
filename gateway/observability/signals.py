"""The closed catalog of signals an alert rule may name, each readable by the gateway and as PromQL.

A signal is one of four kinds, each with the same meaning in the gateway's own evaluation (``evaluator``) and in
the exported Prometheus rules (``export``):

- ``ratio``: the increase of a numerator over the increase of a denominator within the window (a share such as
  the error rate, or a mean such as tokens per answer): ``sum(rate(num[w])) / sum(rate(den[w]))``;
- ``rate``: a counter's increase per second within the window: ``sum(rate(x[w]))``;
- ``increase``: a counter's increase within the window: ``sum(increase(x[w]))``;
- ``gauge``: a gauge's mean over the window: ``max(avg_over_time(x[w]))``.

Each has its series labels (``by``), all bounded (models, versions, backends, GPUs). Readers take the live
sources and return cumulative values (ratio: numerator and denominator) by label values.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from gateway.audit import AuditTrail
    from gateway.observability.metrics import Metrics
    from gateway.observability.triton import TritonScraper

Kind = Literal["ratio", "rate", "increase", "gauge"]
Key = tuple[str, ...]


@dataclass(frozen=True)
class Sources:
    """What signals are read from: the app's metrics, and (while serving) the ledger and Triton's readings."""

    metrics: Metrics
    triton: TritonScraper | None = None
    audit: AuditTrail | None = None


@dataclass(frozen=True)
class Signal:
    name: str
    level: Literal["hardware", "model", "business", "system"]
    kind: Kind
    by: tuple[str, ...]
    read: Callable[[Sources], Any]
    promql: tuple[str, ...]
    """The selector (ratio: numerator and denominator selectors) over the names of ``/metrics``."""
    description: str
    per_instance: bool = False
    """A property of one gateway process: exported rules keep Prometheus's ``instance`` label."""
    uses_triton: bool = False


def _sum(metric: Any, suffix: str, by: tuple[str, ...], where: Mapping[str, str] | None = None,
         match: Callable[[Mapping[str, str]], bool] | None = None) -> dict[Key, float]:  # fmt: skip
    """The samples of a prometheus-client metric ending in ``suffix``, summed by the labels ``by``."""
    out: dict[Key, float] = {}
    for family in metric.collect():
        for s in family.samples:
            if not s.name.endswith(suffix):
                continue
            if where and any(s.labels.get(k) != v for k, v in where.items()):
                continue
            if match is not None and not match(s.labels):
                continue
            key = tuple(s.labels.get(b, "") for b in by)
            out[key] = out.get(key, 0.0) + s.value
    return out


def _ratio(num: dict[Key, float], den: dict[Key, float]) -> dict[Key, tuple[float, float]]:
    return {k: (num.get(k, 0.0), d) for k, d in den.items()}


def _mean(attr: str, by: tuple[str, ...], match: Callable[[Mapping[str, str]], bool] | None = None,
          ) -> Callable[[Sources], dict[Key, tuple[float, float]]]:  # fmt: skip
    """A histogram's sum over its count (a mean within the window)."""

    def read(src: Sources) -> dict[Key, tuple[float, float]]:
        hist = getattr(src.metrics, attr)
        return _ratio(_sum(hist, "_sum", by, None, match), _sum(hist, "_count", by, None, match))

    return read


def _api(labels: Mapping[str, str]) -> bool:
    return labels.get("route", "").startswith("/v1/")


def _triton(metric: str, by: tuple[str, ...]) -> Callable[[Sources], dict[Key, float]]:
    def read(src: Sources) -> dict[Key, float]:
        if src.triton is None:
            return {}
        out: dict[Key, float] = {}
        for key, value in src.triton.values(metric).items():
            k = key[: len(by)]
            out[k] = out.get(k, 0.0) + value
        return out

    return read


def _rss(src: Sources) -> dict[Key, float]:
    try:
        with open("/proc/self/statm", "rb") as f:
            return {(): float(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))}
    except (OSError, ValueError, IndexError):
        return {}


def _cpu(src: Sources) -> dict[Key, float]:
    t = os.times()
    return {(): t.user + t.system}


def _ledger(attr: str) -> Callable[[Sources], dict[Key, float]]:
    def read(src: Sources) -> dict[Key, float]:
        if src.audit is None:
            return {}
        s = src.audit.ledger.status()
        return {(): float(s.ok if attr == "ok" else getattr(s, attr))}

    return read


def _anchoring_lag(src: Sources) -> dict[Key, float]:
    if src.audit is None or src.audit.anchorer is None:
        return {}
    return {(): src.audit.anchorer.status().lag_s}


def _dp_left(src: Sources) -> dict[Key, float]:
    left = src.metrics.dp_left
    return {(): min(left.values())} if left else {}


M = ("model", "version")
_TRITON_QUEUE = ("backend", "model", "version")


def _catalog() -> dict[str, Signal]:
    s = [
        Signal("gpu_utilization", "hardware", "gauge", ("backend", "gpu"),
               _triton("gateway_triton_gpu_utilization", ("backend", "gpu")), ("gateway_triton_gpu_utilization",),
               "GPU utilization (0 to 1) from Triton's metrics; absent on CPU.", uses_triton=True),
        Signal("gateway_cpu", "hardware", "rate", (), _cpu, ("process_cpu_seconds_total",),
               "CPU cores the gateway process uses.", per_instance=True),
        Signal("gateway_memory", "hardware", "gauge", (), _rss, ("process_resident_memory_bytes",),
               "Resident memory of the gateway process, in bytes.", per_instance=True),
        Signal("output_tokens", "model", "ratio", M,
               _mean("output_tokens", M),
               ("gateway_model_output_tokens_sum", "gateway_model_output_tokens_count"),
               "Mean completion tokens per completed answer."),
        Signal("refusal_rate", "model", "ratio", M,
               lambda src: _ratio(_sum(src.metrics.model_refusals, "_total", M),
                                  _sum(src.metrics.model_responses, "_total", M)),
               ("gateway_model_refusals_total", "gateway_model_responses_total"),
               "Share of completed answers that are refusals."),
        Signal("fallback_rate", "model", "ratio", M,
               lambda src: _ratio(_sum(src.metrics.model_requests, "_total", M, {"fallback": "true"}),
                                  _sum(src.metrics.model_requests, "_total", M)),
               ('gateway_model_requests_total{fallback="true"}', "gateway_model_requests_total"),
               "Share of a model's requests answered by its fallback."),
        Signal("model_error_rate", "model", "ratio", M,
               lambda src: _ratio(_sum(src.metrics.model_requests, "_total", M, {"outcome": "error"}),
                                  _sum(src.metrics.model_requests, "_total", M)),
               ('gateway_model_requests_total{outcome="error"}', "gateway_model_requests_total"),
               "Share of a model's admitted requests that failed."),
        Signal("time_to_first_token", "model", "ratio", M,
               _mean("ttft", M),
               ("gateway_model_time_to_first_token_seconds_sum", "gateway_model_time_to_first_token_seconds_count"),
               "Mean time to first token, in seconds."),
        Signal("inter_token_latency", "model", "ratio", M,
               _mean("itl", M),
               ("gateway_model_inter_token_latency_seconds_sum", "gateway_model_inter_token_latency_seconds_count"),
               "Mean inter-token latency, in seconds."),
        Signal("queue_time", "model", "ratio", _TRITON_QUEUE,
               lambda src: _ratio(_triton("gateway_triton_queue_seconds", _TRITON_QUEUE)(src),
                                  _triton("gateway_triton_requests", _TRITON_QUEUE)(src)),
               ("gateway_triton_queue_seconds_total", "gateway_triton_requests_total"),
               "Mean time a request waits in Triton's queue, in seconds.", uses_triton=True),
        Signal("accuracy", "business", "gauge", M, lambda src: _sum(src.metrics.accuracy, "", M),
               ("gateway_model_accuracy",), "Accuracy of the model's decisions in its latest outcome audit."),
        Signal("demographic_parity_difference", "business", "gauge", M,
               lambda src: _sum(src.metrics.fairness, "", M, {"metric": "demographic_parity_difference"}),
               ('gateway_fairness_metric{metric="demographic_parity_difference"}',),
               "Demographic parity difference in the model's latest fairness audit."),
        Signal("fairness_breaches", "business", "increase", ("audit", "model", "version"),
               lambda src: _sum(src.metrics.fairness_breaches, "_total", ("audit", "model", "version")),
               ("gateway_fairness_breaches_total",),
               "Failed checks of fairness audits (probe or outcome) within the window, per audit, model and "
               "version; counted by the gateway that ran the audit."),
        Signal("error_rate", "system", "ratio", (),
               lambda src: _ratio(_sum(src.metrics.http_requests, "_total", (), {"status_class": "5xx"}, _api),
                                  _sum(src.metrics.http_requests, "_total", (), None, _api)),
               ('gateway_http_requests_total{route=~"/v1/.*",status_class="5xx"}',
                'gateway_http_requests_total{route=~"/v1/.*"}'),
               "Share of API (/v1/) answers that are server errors (5xx)."),
        Signal("latency", "system", "ratio", (),
               _mean("http_duration", (), _api),
               ('gateway_http_request_duration_seconds_sum{route=~"/v1/.*"}',
                'gateway_http_request_duration_seconds_count{route=~"/v1/.*"}'),
               "Mean time to the last byte of an API answer, in seconds."),
        Signal("authn_failures", "system", "increase", (), lambda src: _sum(src.metrics.authn_failures, "_total", ()),
               ("gateway_authn_failures_total",), "Requests refused with 401 within the window."),
        Signal("authz_denials", "system", "increase", (), lambda src: _sum(src.metrics.authz_denials, "_total", ()),
               ("gateway_authz_denials_total",), "Requests refused by policy within the window."),
        Signal("pii_fail_closed", "system", "increase", (),
               lambda src: _sum(src.metrics.pii_events, "_total", (), {"event": "fail_closed"}),
               ('gateway_pii_events_total{event="fail_closed"}',),
               "Requests refused because personal-data screening could not run."),
        Signal("ledger_up", "system", "gauge", (), _ledger("ok"), ("gateway_ledger_up",),
               "1 while the ledger writes, 0 while requests are refused.", per_instance=True),
        Signal("ledger_queued", "system", "gauge", (), _ledger("queued"), ("gateway_ledger_queued_entries",),
               "Ledger entries waiting for the next group commit.", per_instance=True),
        Signal("ledger_commit_time", "system", "ratio", (),
               _mean("ledger_commit", ()),
               ("gateway_ledger_commit_seconds_sum", "gateway_ledger_commit_seconds_count"),
               "Mean wait until a ledger entry is durable (append lag), in seconds."),
        Signal("anchoring_lag", "system", "gauge", (), _anchoring_lag, ("gateway_ledger_anchoring_lag_seconds",),
               "How long the oldest unanchored checkpoint has waited, in seconds.", per_instance=True),
        Signal("dp_budget_remaining", "system", "gauge", (), _dp_left,
               ("gateway_dp_budget_remaining_epsilon_min",),
               "Smallest remaining privacy budget (epsilon) among this period's statistics consumers.",
               per_instance=True),
    ]  # fmt: skip
    return {signal.name: signal for signal in s}


SIGNALS = _catalog()
