"""GET /metrics: who may read it, what it counts, and that every label stays in a bounded set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.fairness.metrics import outcome_audit
from gateway.observability import triton as triton_metrics
from gateway.observability.metrics import MAX_VALUES, Metrics
from gateway.settings import ModelRoute, Settings
from tests.conftest import TEST_MODELS, create_app, in_process, make_settings, new_key

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
CHAT = "/v1/chat/completions"


def _chat(model: str, text: str = "one two three four", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}  # fmt: skip


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over the series whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def _settings(triton: Any, tmp_path: Path, **overrides: Any) -> Settings:
    """The test settings, with the session Triton's metrics endpoint and an unreachable one."""
    backends = {
        "triton": {"kind": "triton", "url": triton.grpc_url, "timeout_s": 60,
                   "metrics_url": f"http://127.0.0.1:{triton.metrics_port}/metrics"},
        "nowhere": {"kind": "triton", "url": "127.0.0.1:9", "connect_timeout_s": 1, "timeout_s": 2,
                    "metrics_url": "http://127.0.0.1:9/metrics"},
    }  # fmt: skip
    return make_settings(triton, tmp_path, backends=backends, **overrides)


async def test_metrics_needs_a_credential_and_the_read_permission(triton: Any, tmp_path: Path) -> None:
    """/metrics is 401 without a key, 403 for a role without read on route:/metrics, 200 for role:metrics."""
    settings = _settings(triton, tmp_path)
    async with in_process(create_app(settings)) as c:
        anonymous = await c.get("/metrics")
        assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"].startswith("Bearer")
        user = await c.get("/metrics", headers={"authorization": f"Bearer {new_key(settings, 'user')}"})
        assert user.status_code == 403 and user.json()["error"]["code"] == "permission_denied"
        r = await c.get("/metrics", headers={"authorization": f"Bearer {new_key(settings, 'metrics')}"})
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        samples = parse(r.text)
        assert value(samples, "gateway_authn_failures_total") == 1
        assert value(samples, "gateway_authz_denials_total", reason="route") == 1
        assert value(samples, "gateway_http_requests_total", route="/metrics", status_class="4xx") == 2
        assert value(samples, "gateway_http_errors_total", route="/metrics", code="invalid_api_key") == 1
        assert value(samples, "gateway_http_errors_total", route="/metrics", code="permission_denied") == 1
        om = await c.get("/metrics", headers={"authorization": f"Bearer {new_key(settings, 'metrics')}",
                                              "accept": "application/openmetrics-text; version=1.0.0"})  # fmt: skip
        assert om.headers["content-type"].startswith("application/openmetrics-text") and om.text.endswith("# EOF\n")


async def test_requests_models_and_backends_are_counted(triton: Any, tmp_path: Path) -> None:
    """Answers, errors, tokens, time to first token, fallbacks, the ledger and Triton's own metrics appear."""
    settings = _settings(triton, tmp_path)
    async with in_process(create_app(settings), new_key(settings, "admin")) as c:
        assert (await c.post(CHAT, json=_chat("echo"))).status_code == 200
        assert (await c.post(CHAT, json=_chat("echo", stream=True))).status_code == 200
        assert (await c.post(CHAT, json=_chat("broken"))).headers["x-gateway-fallback"] == "true"
        assert (await c.post(CHAT, json=_chat("broken-alone"))).status_code >= 500
        assert (await c.post("/v1/embeddings", json={"model": "e5-small", "input": "hello"})).status_code == 200
        samples = parse((await c.get("/metrics")).text)
    assert value(samples, "gateway_http_requests_total", route=CHAT, status_class="2xx") == 3
    assert value(samples, "gateway_http_requests_total", route=CHAT, status_class="5xx") == 1
    assert value(samples, "gateway_http_errors_total", route=CHAT, status_class="5xx") == 1
    assert value(samples, "gateway_http_request_duration_seconds_count", route=CHAT) == 4
    ok = {"outcome": "ok", "fallback": "false"}
    assert value(samples, "gateway_model_requests_total", model="echo", **ok) == 2
    assert value(samples, "gateway_model_requests_total", model="broken", outcome="ok", fallback="true") == 1
    assert value(samples, "gateway_model_requests_total", model="broken-alone", outcome="error") == 1
    assert value(samples, "gateway_model_requests_total", model="e5-small", **ok) == 1
    assert value(samples, "gateway_model_responses_total", model="echo") == 2
    assert value(samples, "gateway_model_responses_total", model="counter") == 1  # the fallback answered
    assert value(samples, "gateway_model_tokens_total", model="echo", direction="out") >= 8
    assert value(samples, "gateway_model_tokens_total", model="e5-small", direction="in") >= 1
    assert value(samples, "gateway_model_tokens_total", model="e5-small", direction="out") == 0
    assert value(samples, "gateway_model_output_tokens_count", model="echo") == 2
    assert value(samples, "gateway_model_output_tokens_count", model="e5-small") == 0
    assert value(samples, "gateway_model_time_to_first_token_seconds_count", model="echo") == 2
    assert value(samples, "gateway_model_inter_token_latency_seconds_count", model="echo") == 2  # word by word
    assert value(samples, "gateway_model_refusals_total") == 0
    assert value(samples, "gateway_audit_events_total", kind="request.admitted") == 5
    assert value(samples, "gateway_ledger_commit_seconds_count") >= 5
    assert value(samples, "gateway_ledger_up") == 1 and value(samples, "gateway_ledger_entries") > 0
    assert value(samples, "process_resident_memory_bytes") > 0 and "process_cpu_seconds_total" in _names(samples)
    assert value(samples, "gateway_triton_up", backend="triton") == 1
    assert value(samples, "gateway_triton_up", backend="nowhere") == 0
    assert value(samples, "gateway_triton_requests_total", backend="triton", model="echo", outcome="success") >= 2
    assert ("gateway_triton_requests_total", frozenset({("backend", "triton"), ("model", "broken"), ("version", "1"),
                                                        ("outcome", "failure")})) in samples  # fmt: skip
    assert ("gateway_triton_queue_seconds_total", frozenset({("backend", "triton"), ("model", "echo"),
                                                             ("version", "1")})) in samples  # fmt: skip
    assert "gateway_triton_gpu_utilization" not in _names(samples)  # a CPU-only Triton reports no GPU


def _names(samples: Samples) -> set[str]:
    return {n for n, _ in samples}


async def test_labels_hold_no_caller_path_or_text(triton: Any, tmp_path: Path) -> None:
    """Unknown paths, personal data, key ids and unknown models never become label values."""
    settings = _settings(triton, tmp_path)
    key = new_key(settings, "admin", owner="alice@example.com")
    secret = "jane.doe@example.com"
    async with in_process(create_app(settings), key) as c:
        assert (await c.get(f"/v1/nope/{secret}?q={secret}")).status_code == 404
        assert (await c.get(f"/v1/models/{secret}")).status_code == 404
        assert (await c.post(CHAT, json=_chat("no-such-model", secret))).status_code == 404
        assert (await c.post(CHAT, json=_chat("echo", f"my SSN is 536-22-8431, mail {secret}"))).status_code == 403
        assert (await c.post(CHAT, json=_chat("echo", f"mail {secret}"))).status_code == 200
        text = (await c.get("/metrics")).text
    samples = parse(text)
    assert value(samples, "gateway_pii_events_total", event="blocked") == 1
    assert value(samples, "gateway_http_requests_total", route="unmatched", status_class="4xx") == 1
    assert value(samples, "gateway_http_requests_total", route="/v1/models/{model:path}", status_class="4xx") == 1
    for needle in (secret, "alice", "nope", "no-such-model", "536-22", key[:12], "apikey:"):
        assert needle not in text
    routes = {r.path for r in create_app(settings).routes} | {"unmatched"}  # type: ignore[attr-defined]
    models = {m["name"] for m in TEST_MODELS} | {"other"}
    for _, labels in samples:
        for name, label in labels:
            if name == "route":
                assert label in routes
            elif name == "model":
                assert label in models


def test_open_label_values_are_capped() -> None:
    """Past MAX_VALUES distinct error codes or ledger kinds, new ones count as 'other'."""
    m = Metrics([ModelRoute(name="m", backend="b")])
    for i in range(MAX_VALUES + 10):
        m.http_done("/v1/models", 400, f"code_{i}", 0.001)
        m.audit_event(f"kind.{i}", "user:x", {}, None)
    samples = parse(prometheus_client.generate_latest(m.registry).decode())
    codes = {dict(ls)["code"] for n, ls in samples if n == "gateway_http_errors_total"}
    kinds = {dict(ls)["kind"] for n, ls in samples if n == "gateway_audit_events_total"}
    assert len(codes) == len(kinds) == MAX_VALUES + 1 and "other" in codes and "other" in kinds
    assert value(samples, "gateway_http_errors_total", code="other") == 10


def test_each_app_has_its_own_registry() -> None:
    """Two apps count separately, and the process-wide default registry holds none of the gateway's metrics."""
    a, b = Metrics([]), Metrics([])
    a.http_done("/healthz", 200, None, 0.001)
    assert (
        parse(prometheus_client.generate_latest(b.registry).decode()).get(
            ("gateway_http_requests_total", frozenset({("route", "/healthz"), ("status_class", "2xx")}))
        )
        is None
    )
    assert "gateway_http_requests_total" not in prometheus_client.generate_latest().decode()


@pytest.mark.parametrize(
    ("kind", "data", "metric", "labels"),
    [
        ("authn.failed", {"reason": "x"}, "gateway_authn_failures_total", {}),
        ("authz.decision", {"object": "model:x", "allowed": False}, "gateway_authz_denials_total", {"reason": "model"}),
        ("authz.limit", {"reason": "rate_limit"}, "gateway_authz_denials_total", {"reason": "rate_limit"}),
        ("authz.limit", {"reason": "made-up"}, "gateway_authz_denials_total", {"reason": "other"}),
        ("pii.unavailable", {"reason": "x"}, "gateway_pii_events_total", {"event": "fail_closed"}),
        ("pii.vault_unreadable", {"reason": "x"}, "gateway_pii_events_total", {"event": "fail_closed"}),
        ("pii.fail_open", {"reason": "x"}, "gateway_pii_events_total", {"event": "fail_open"}),
        ("stats.released", {"epsilon": 0.5}, "gateway_dp_epsilon_spent_total", {}),
        (
            "stats.refused",
            {"period": "2026-01", "remaining": {"epsilon": 0.25}},
            "gateway_dp_releases_total",
            {"outcome": "refused"},
        ),
    ],
)
def test_ledger_entries_update_the_security_metrics(kind: str, data: dict[str, Any], metric: str,
                                                    labels: dict[str, str]) -> None:  # fmt: skip
    """Each security-relevant ledger kind moves its metric (allowed decisions move none)."""
    m = Metrics([])
    m.audit_event("authz.decision", "user:x", {"object": "route:/x", "allowed": True}, None)
    m.audit_event(kind, "user:x", data, 0.002)
    samples = parse(prometheus_client.generate_latest(m.registry).decode())
    assert value(samples, metric, **labels) == (0.5 if metric == "gateway_dp_epsilon_spent_total" else 1)
    assert value(samples, "gateway_authz_denials_total") == (1 if metric == "gateway_authz_denials_total" else 0)
    assert value(samples, "gateway_ledger_commit_seconds_count") == 1


def test_dp_budget_remaining_is_the_smallest_of_the_current_period() -> None:
    """The remaining-budget gauge is the least of the consumers answered this period; a new period starts over."""
    m = Metrics([])
    m.dp_answered("apikey:a", {"period": "2026-01", "remaining": {"epsilon": 1.5}}, cached=False)
    m.audit_event("stats.refused", "apikey:b", {"period": "2026-01", "remaining": {"epsilon": 0.1}}, 0.001)
    m.dp_answered("apikey:c", {"period": "2026-01", "remaining": {"epsilon": 0.9}}, cached=True)
    samples = parse(prometheus_client.generate_latest(m.registry).decode())
    assert value(samples, "gateway_dp_budget_remaining_epsilon_min") == pytest.approx(0.1)
    assert value(samples, "gateway_dp_releases_total", outcome="cached") == 1
    m.dp_answered("apikey:a", {"period": "2026-02", "remaining": {"epsilon": 2.0}}, cached=False)
    samples = parse(prometheus_client.generate_latest(m.registry).decode())
    assert value(samples, "gateway_dp_budget_remaining_epsilon_min") == 2.0


def test_outcome_audits_set_accuracy_and_fairness_gauges() -> None:
    """An outcome audit's accuracy (over all rows) and its group differences become the business gauges."""
    rng = np.random.default_rng(7)
    group = np.array(["a"] * 300 + ["b"] * 200)
    truth = rng.integers(0, 2, 500)
    pred = np.where(rng.random(500) < 0.8, truth, 1 - truth)
    audit = outcome_audit(truth, pred, group, rng=np.random.default_rng(1), resamples=50)
    m = Metrics([ModelRoute(name="credit", backend="b", version="3")])
    m.observe_audit("credit", audit)
    samples = parse(prometheus_client.generate_latest(m.registry).decode())
    assert value(samples, "gateway_model_accuracy", model="credit", version="3") == pytest.approx(
        float(np.mean(truth == pred))
    )
    assert value(samples, "gateway_fairness_metric", model="credit", metric="demographic_parity_difference") == (
        pytest.approx(audit.demographic_parity_difference.value)
    )


GPU_TEXT = """# HELP nv_gpu_utilization GPU utilization rate [0.0 - 1.0)
# TYPE nv_gpu_utilization gauge
nv_gpu_utilization{gpu_uuid="GPU-1"} 0.93
nv_gpu_utilization{gpu_uuid="GPU-2"} 0.1
# TYPE nv_gpu_memory_used_bytes gauge
nv_gpu_memory_used_bytes{gpu_uuid="GPU-1"} 7.5e+09
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="llm",reason="BACKEND",version="1"} 3
nv_inference_request_failure{model="llm",reason="REJECTED",version="1"} 2
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="llm",version="1"} 2500000
# TYPE nv_energy_consumption counter
nv_energy_consumption{gpu_uuid="GPU-1"} 99
"""


def test_triton_text_is_reexported_with_bounded_labels() -> None:
    """GPU series keep the GPU, model series model and version; other labels are summed away, units converted."""
    series = triton_metrics.parse(GPU_TEXT)
    assert series["gateway_triton_gpu_utilization"] == {("GPU-1",): 0.93, ("GPU-2",): 0.1}
    assert series["gateway_triton_gpu_memory_used_bytes"] == {("GPU-1",): 7.5e9}
    assert series["gateway_triton_requests"] == {("llm", "1", "failure"): 5}
    assert series["gateway_triton_queue_seconds"] == {("llm", "1"): 2.5}
    assert not any("energy" in k for k in series)


def test_triton_metrics_urls(tmp_path: Path) -> None:
    """auto: the gRPC host on 8002, the embedded server's metrics port; null: none; a URL: itself."""
    s = Settings.load(None, state_dir=tmp_path, local_triton={"enabled": True, "metrics_port": 9102}, backends={
        "local": {"kind": "triton"},
        "gpu": {"kind": "triton", "url": "triton:8001"},
        "off": {"kind": "triton", "url": "t:8001", "metrics_url": None},
        "set": {"kind": "triton", "url": "t:8001", "metrics_url": "http://t:9999/metrics"},
        "vllm": {"kind": "openai", "base_url": "http://vllm:8000/v1"},
    }, models=[{"name": "x", "backend": "local"}])  # fmt: skip
    assert triton_metrics.metrics_urls(s) == {"local": "http://127.0.0.1:9102/metrics",
                                              "gpu": "http://triton:8002/metrics",
                                              "set": "http://t:9999/metrics"}  # fmt: skip
