"""The gateway's Prometheus metrics, on a registry of its own per app (never the process-wide default one).

Labels are bounded by construction: routes are Starlette's route templates (``unmatched`` for any other path),
models are the configured public names, statuses are classes (``2xx``...), outcomes and reasons are closed sets,
and error codes and ledger kinds are constants of the code (past ``MAX_VALUES`` distinct ones, ``other``). No
label ever holds a caller, a key, a raw path or a text.

The request path only increments children bound once (a dict lookup and an add); what is costly or changes by
itself (the ledger, anchoring, Triton's own metrics, the process) is read at scrape time (``collect``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from backends.base import Usage
from gateway.fairness.results import Estimate, OutcomeAudit, ProbeAudit
from gateway.observability.collect import GatewayCollector
from gateway.settings import ModelRoute

MAX_VALUES = 64
"""Distinct values of one open label (error codes, ledger kinds) before the rest count as ``other``."""
UNMATCHED = "unmatched"

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_TTFT = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_ITL = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_TOKENS = (1, 4, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
_COMMIT = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_LIMIT_REASONS = frozenset({"rate_limit", "max_tokens", "stream", "rate_limiter_unavailable"})
_PII_EVENTS = {"pii.blocked": "blocked", "pii.unavailable": "fail_closed", "pii.vault_unreadable": "fail_closed",
               "pii.fail_open": "fail_open"}  # fmt: skip
_FAIRNESS = ("demographic_parity_difference", "demographic_parity_ratio", "equal_opportunity_difference",
             "equalized_odds_difference", "accuracy_difference", "counterfactual_flip_rate")  # fmt: skip


class Metrics:
    """Every metric of one app. Built once in ``create_app``; the request path calls the ``*_done`` methods."""

    def __init__(self, models: Sequence[ModelRoute]) -> None:
        self.registry = r = CollectorRegistry()
        self._versions = {m.name: m.version for m in models}
        self._embedding = {m.name for m in models if m.kind == "embedding"}
        self._children: dict[tuple[Any, ...], Any] = {}
        self._kinds: dict[str, Any] = {}  # ledger kind -> its child of audit_events
        self._open: dict[int, set[str]] = {}
        self.dp_left: dict[str, float] = {}
        self.dp_period: str | None = None
        # system
        self.http_requests = Counter("gateway_http_requests", "HTTP requests answered, by route template and "
                                     "status class.", ["route", "status_class"], registry=r)  # fmt: skip
        self.http_errors = Counter("gateway_http_errors", "Error answers, by route template, status class and "
                                   "OpenAI error code.", ["route", "status_class", "code"], registry=r)  # fmt: skip
        self.http_duration = Histogram("gateway_http_request_duration_seconds", "Time from a request's arrival "
                                       "to the last byte of its answer.", ["route"], buckets=_LATENCY,
                                       registry=r)  # fmt: skip
        self.in_flight = Gauge("gateway_http_requests_in_flight", "Requests being answered now.", registry=r)
        self.authn_failures = Counter("gateway_authn_failures", "Requests refused with 401 (no valid credential).",
                                      registry=r)  # fmt: skip
        self.authz_denials = Counter("gateway_authz_denials", "Requests refused by policy: route or model "
                                     "permission, or a role limit.", ["reason"], registry=r)  # fmt: skip
        self.pii_events = Counter("gateway_pii_events", "Personal-data screening events: blocked kinds (403), "
                                  "fail_closed (503) and fail_open (allowed by policy).", ["event"],
                                  registry=r)  # fmt: skip
        self.audit_events = Counter("gateway_audit_events", "Ledger entries appended, by kind.", ["kind"], registry=r)
        self.ledger_commit = Histogram("gateway_ledger_commit_seconds", "Time from appending an entry to its being "
                                       "durable, for entries a request waits on.", buckets=_COMMIT,
                                       registry=r)  # fmt: skip
        self.dp_releases = Counter("gateway_dp_releases", "Statistics queries: released (budget spent), cached "
                                   "(spent nothing) or refused (budget exhausted).", ["outcome"],
                                   registry=r)  # fmt: skip
        self.dp_epsilon = Counter("gateway_dp_epsilon_spent", "Privacy budget (epsilon) spent by statistics "
                                  "releases.", registry=r)  # fmt: skip
        # model: requests by the model asked for; the rest by the model that answered
        self.model_requests = Counter("gateway_model_requests", "Generation and embedding requests by the model "
                                      "asked for, outcome (ok, error, cancelled) and whether a fallback answered.",
                                      ["model", "version", "outcome", "fallback"], registry=r)  # fmt: skip
        self.model_responses = Counter("gateway_model_responses", "Answers completed, by the model that "
                                       "answered.", ["model", "version"], registry=r)  # fmt: skip
        self.model_refusals = Counter("gateway_model_refusals", "Completed answers that are refusals (a refusal "
                                      "field, or finish_reason content_filter).", ["model", "version"],
                                      registry=r)  # fmt: skip
        self.model_tokens = Counter("gateway_model_tokens", "Tokens in (prompt) and out (completion).",
                                    ["model", "version", "direction"], registry=r)  # fmt: skip
        self.output_tokens = Histogram("gateway_model_output_tokens", "Completion tokens per completed answer.",
                                       ["model", "version"], buckets=_TOKENS, registry=r)  # fmt: skip
        self.ttft = Histogram("gateway_model_time_to_first_token_seconds", "Time from a request's arrival to its "
                              "first generated delta.", ["model", "version"], buckets=_TTFT, registry=r)  # fmt: skip
        self.itl = Histogram("gateway_model_inter_token_latency_seconds", "Mean time between the generated deltas "
                             "of one answer (one value per answer with two or more).", ["model", "version"],
                             buckets=_ITL, registry=r)  # fmt: skip
        # business
        self.accuracy = Gauge("gateway_model_accuracy", "Accuracy of the model's decisions in its latest outcome "
                              "audit.", ["model", "version"], registry=r)  # fmt: skip
        self.fairness = Gauge("gateway_fairness_metric", "Point values of the latest fairness audit of the model.",
                              ["model", "version", "metric"], registry=r)  # fmt: skip
        self.fairness_breaches = Counter("gateway_fairness_breaches", "Failed checks of the fairness audits this "
                                         "gateway ran, by audit, model and audited version.",
                                         ["audit", "model", "version"], registry=r)  # fmt: skip
        self.fairness_decisions = Counter("gateway_fairness_decisions", "Answers of decision models by what became "
                                          "of their decision record: recorded, failed (not recorded) or no_attribute "
                                          "(no valid sensitive attribute, where it is optional).",
                                          ["model", "version", "result"], registry=r)  # fmt: skip
        # alerts
        self.alerts_firing = Gauge("gateway_alerts_firing", "Series of each alert rule firing now.",
                                   ["alert", "severity"], registry=r)  # fmt: skip
        self.breaker_state = Gauge("gateway_model_breaker_state", "Circuit breaker of each model route: 0 closed, "
                                   "1 half open, 2 open.", ["model"], registry=r)  # fmt: skip
        self.breaker_transitions = Counter("gateway_model_breaker_transitions", "Circuit breaker transitions, by "
                                           "the state entered.", ["model", "state"], registry=r)  # fmt: skip
        for m in models:
            self.breaker_state.labels(m.name).set(0)
        self.webhook_failures = Counter("gateway_alert_webhook_failures", "Alert messages the webhook did not "
                                        "take after every retry.", registry=r)  # fmt: skip
        ProcessCollector(registry=r)  # the gateway's CPU seconds, resident memory, open files
        self.collector = GatewayCollector(self)  # ledger, anchoring, budget and Triton, read at scrape time
        r.register(self.collector)

    def _child(self, metric: Any, *values: str) -> Any:
        key = (id(metric), *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def _bounded(self, metric: Any, value: str) -> str:
        seen = self._open.setdefault(id(metric), set())
        if value in seen:
            return value
        if len(seen) >= MAX_VALUES:
            return "other"
        seen.add(value)
        return value

    def model(self, name: str) -> tuple[str, str]:
        """(model, version) labels of a configured public name; anything else is ``other``."""
        version = self._versions.get(name)
        return ("other", "") if version is None else (name, version)

    # ----- the request path

    def http_done(self, route: str, status: int, code: str | None, seconds: float) -> None:
        cls = f"{status // 100}xx"
        self._child(self.http_requests, route, cls).inc()
        self._child(self.http_duration, route).observe(seconds)
        if status >= 400:
            self._child(self.http_errors, route, cls, self._bounded(self.http_errors, code or "none")).inc()

    def model_done(self, requested: str, served: str | None, outcome: str, *, fallback: bool, usage: Usage | None,
                   ttft_s: float | None = None, itl_s: float | None = None, refused: bool = False) -> None:  # fmt: skip
        """One generation or embedding request has ended (``outcome``: ok, error, cancelled)."""
        self._child(self.model_requests, *self.model(requested), outcome, "true" if fallback else "false").inc()
        if served is None:
            return
        labels = self.model(served)
        if usage is not None:
            self._child(self.model_tokens, *labels, "in").inc(usage.prompt_tokens)
            if usage.completion_tokens:
                self._child(self.model_tokens, *labels, "out").inc(usage.completion_tokens)
        if ttft_s is not None:
            self._child(self.ttft, *labels).observe(ttft_s)
        if itl_s is not None:
            self._child(self.itl, *labels).observe(itl_s)
        if outcome == "ok":
            self._child(self.model_responses, *labels).inc()
            if refused:
                self._child(self.model_refusals, *labels).inc()
            if usage is not None and served not in self._embedding:
                self._child(self.output_tokens, *labels).observe(usage.completion_tokens)

    def audit_event(self, kind: str, actor: str, data: Mapping[str, Any], wait_s: float | None) -> None:
        """A ledger entry was appended (``wait_s``: how long its writer waited for it to be durable)."""
        child = self._kinds.get(kind)
        if child is None:
            child = self._kinds[kind] = self._child(self.audit_events, self._bounded(self.audit_events, kind))
        child.inc()
        if wait_s is not None:
            self.ledger_commit.observe(wait_s)
        handle = _ON_AUDIT.get(kind)
        if handle is not None:
            handle(self, actor, data)

    def decision(self, model: str, result: str) -> None:
        """A decision model's answer was recorded, failed to be, or had no attribute (``result``)."""
        self._child(self.fairness_decisions, *self.model(model), result).inc()

    def dp_answered(self, consumer: str, budget: Mapping[str, Any], *, cached: bool) -> None:
        """A statistics answer (its ``budget`` part: period and remaining) went to ``consumer``."""
        if cached:
            self._child(self.dp_releases, "cached").inc()
        self._dp_left(consumer, str(budget["period"]), float(budget["remaining"]["epsilon"]))

    def _dp_left(self, consumer: str, period: str, epsilon: float) -> None:
        if period != self.dp_period:  # a new budget period: every consumer starts afresh
            self.dp_period, self.dp_left = period, {}
        self.dp_left[consumer] = epsilon

    # ----- the business level

    def observe_audit(self, model: str, audit: OutcomeAudit | ProbeAudit) -> None:
        """The results of a fairness audit of ``model`` (``gateway.fairness``): accuracy and group metrics."""
        labels = self.model(model)
        if isinstance(audit, OutcomeAudit):
            rows = [(g.accuracy.value, g.count) for g in audit.groups if isinstance(g.accuracy, Estimate)]
            total = sum(n for _, n in rows)
            if total:
                self.accuracy.labels(*labels).set(sum(a * n for a, n in rows) / total)
        for name in _FAIRNESS:
            result = getattr(audit, name, None)
            if isinstance(result, Estimate):
                self.fairness.labels(*labels, name).set(result.value)

    def fairness_breach(self, audit: str, model: str, version: str, checks: int) -> None:
        """``checks`` checks of a fairness audit of ``model`` at ``version`` failed (the alert's signal)."""
        name, _ = self.model(model)
        self.fairness_breaches.labels(self._bounded(self.fairness_breaches, audit), name, version).inc(checks)


def _decision(m: Metrics, actor: str, data: Mapping[str, Any]) -> None:
    if data.get("allowed") is False:
        reason = "route" if str(data.get("object", "")).startswith("route:") else "model"
        m._child(m.authz_denials, reason).inc()


def _limit(m: Metrics, actor: str, data: Mapping[str, Any]) -> None:
    reason = str(data.get("reason"))
    m._child(m.authz_denials, reason if reason in _LIMIT_REASONS else "other").inc()


def _released(m: Metrics, actor: str, data: Mapping[str, Any]) -> None:
    m._child(m.dp_releases, "released").inc()
    m.dp_epsilon.inc(float(data.get("epsilon") or 0.0))


def _refused(m: Metrics, actor: str, data: Mapping[str, Any]) -> None:
    m._child(m.dp_releases, "refused").inc()
    m._dp_left(actor, str(data.get("period")), float(data.get("remaining", {}).get("epsilon", 0.0)))


_BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


def _breaker(m: Metrics, actor: str, data: Mapping[str, Any]) -> None:
    model, state = m.model(str(data.get("model")))[0], str(data.get("to"))
    if state in _BREAKER_STATES and model != "other":
        m.breaker_state.labels(model).set(_BREAKER_STATES[state])
        m._child(m.breaker_transitions, model, state).inc()


def _pii(event: str) -> Callable[[Metrics, str, Mapping[str, Any]], None]:
    return lambda m, actor, data: m._child(m.pii_events, event).inc()


_ON_AUDIT: dict[str, Callable[[Metrics, str, Mapping[str, Any]], None]] = {
    "authn.failed": lambda m, actor, data: m.authn_failures.inc(),
    "authz.decision": _decision,
    "authz.limit": _limit,
    "stats.released": _released,
    "stats.refused": _refused,
    "breaker.changed": _breaker,
    **{kind: _pii(event) for kind, event in _PII_EVENTS.items()},
}
