"""Read Triton's own metrics endpoint and re-export what the gateway's operators need, with bounded labels.

Triton serves Prometheus text on its metrics port (8002; the embedded PyTriton server too, at
``local_triton.metrics_port``). At scrape and alert-evaluation time the gateway reads it (aiohttp,
``trust_env=False``, a short deadline, readings reused for ``metrics.triton_max_age_s``) and re-exports GPU
utilization and memory (absent on a CPU-only server: then simply not there), the host's CPU and memory as Triton
sees them, and per model and version: requests, queue time, request and compute time, pending requests. Labels
are the backend's configured name, the GPU's UUID, and Triton's model and version: all bounded by the
deployment. An unreachable Triton is ``gateway_triton_up 0``, never an error of ``/metrics``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from gateway.settings import Settings, TritonBackendSettings

log = logging.getLogger(__name__)

MAX_SERIES = 2000
"""Most series re-exported per Triton metric (a guard; a real repository has far fewer)."""

# Triton's name -> (the gateway's name, kind, scale, labels kept, help)
_GPU = ("gpu_uuid",)
_MODEL = ("model", "version")
_MAP: dict[str, tuple[str, str, float, tuple[str, ...], str]] = {
    "nv_gpu_utilization": ("gateway_triton_gpu_utilization", "gauge", 1.0, _GPU, "GPU utilization (0 to 1)."),
    "nv_gpu_memory_used_bytes": ("gateway_triton_gpu_memory_used_bytes", "gauge", 1.0, _GPU, "GPU memory used."),
    "nv_gpu_memory_total_bytes": ("gateway_triton_gpu_memory_total_bytes", "gauge", 1.0, _GPU, "GPU memory."),
    "nv_cpu_utilization": ("gateway_triton_cpu_utilization", "gauge", 1.0, (), "Triton host CPU utilization."),
    "nv_cpu_memory_used_bytes": ("gateway_triton_cpu_memory_used_bytes", "gauge", 1.0, (), "Triton host memory used."),
    "nv_inference_request_success": ("gateway_triton_requests", "counter", 1.0, _MODEL, "Inference requests."),
    "nv_inference_request_failure": ("gateway_triton_requests", "counter", 1.0, _MODEL, "Inference requests."),
    "nv_inference_queue_duration_us": ("gateway_triton_queue_seconds", "counter", 1e-6, _MODEL,
                                       "Time requests waited in Triton's queues."),
    "nv_inference_request_duration_us": ("gateway_triton_request_seconds", "counter", 1e-6, _MODEL,
                                         "End-to-end time of inference requests inside Triton."),
    "nv_inference_compute_infer_duration_us": ("gateway_triton_compute_seconds", "counter", 1e-6, _MODEL,
                                               "Time spent computing inferences."),
    "nv_inference_pending_request_count": ("gateway_triton_pending_requests", "gauge", 1.0, _MODEL,
                                           "Requests received and not yet executed."),
}  # fmt: skip
_OUTCOME = {"nv_inference_request_success": "success", "nv_inference_request_failure": "failure"}


def metrics_urls(settings: Settings) -> dict[str, str]:
    """Backend name -> Triton metrics URL, for the Triton backends that have one."""
    urls: dict[str, str] = {}
    for name, cfg in settings.backends.items():
        if not isinstance(cfg, TritonBackendSettings) or cfg.metrics_url is None:
            continue
        if cfg.metrics_url != "auto":
            urls[name] = cfg.metrics_url
        elif cfg.url == "embedded":
            urls[name] = f"http://127.0.0.1:{settings.local_triton.metrics_port}/metrics"
        else:
            urls[name] = f"http://{cfg.url.rpartition(':')[0] or cfg.url}:8002/metrics"
    return urls


@dataclass
class Reading:
    """One backend's last reading: series by the gateway's metric name, label values and value."""

    ok: bool = False
    at: float = 0.0
    series: dict[str, dict[tuple[str, ...], float]] = field(default_factory=dict)


def parse(text: str) -> dict[str, dict[tuple[str, ...], float]]:
    """The series of Triton's text that the gateway re-exports, summed over the labels it drops."""
    out: dict[str, dict[tuple[str, ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name.removesuffix("_total")
            spec = _MAP.get(name)
            if spec is None:
                continue
            ours, _, scale, keep, _ = spec
            labels = tuple(sample.labels.get(k, "") for k in keep)
            if name in _OUTCOME:
                labels = (*labels, _OUTCOME[name])
            series = out.setdefault(ours, {})
            if labels in series or len(series) < MAX_SERIES:
                series[labels] = series.get(labels, 0.0) + sample.value * scale
    return out


class TritonScraper:
    """Reads every configured Triton's metrics endpoint; readings are kept for the collector and the alerts."""

    def __init__(self, settings: Settings) -> None:
        self.urls = metrics_urls(settings)
        self.timeout_s = settings.metrics.triton_timeout_s
        self.max_age_s = settings.metrics.triton_max_age_s
        self.readings: dict[str, Reading] = {name: Reading() for name in self.urls}
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        """Read every endpoint whose reading is older than ``max_age_s`` (at once, each within the deadline)."""
        if not self.urls:
            return
        async with self._lock:  # concurrent scrapes share one reading
            now = time.monotonic()
            stale = [n for n, r in self.readings.items() if not r.at or now - r.at >= self.max_age_s]
            if not stale:
                return
            if self._session is None:
                self._session = aiohttp.ClientSession(trust_env=False,
                                                      timeout=aiohttp.ClientTimeout(total=self.timeout_s))  # fmt: skip
            await asyncio.gather(*(self._read(n) for n in stale))

    async def _read(self, name: str) -> None:
        assert self._session is not None
        reading = self.readings[name]
        try:
            async with self._session.get(self.urls[name]) as resp:
                resp.raise_for_status()
                text = await resp.text()
            series = await asyncio.to_thread(parse, text)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            if reading.ok or not reading.at:
                log.warning("cannot read Triton metrics of backend %s at %s: %r", name, self.urls[name], exc)
            self.readings[name] = Reading(ok=False, at=time.monotonic())
            return
        self.readings[name] = Reading(ok=True, at=time.monotonic(), series=series)

    def values(self, metric: str) -> dict[tuple[str, ...], float]:
        """The last values of one re-exported metric, keyed by (backend, *labels)."""
        return {(backend, *labels): v for backend, r in self.readings.items()
                for labels, v in r.series.get(metric, {}).items()}  # fmt: skip

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("gateway_triton_up", "1 if the backend's Triton metrics were read at the last try.",
                               labels=["backend"])  # fmt: skip
        for backend, r in self.readings.items():
            up.add_metric([backend], 1.0 if r.ok else 0.0)
        yield up
        done: set[str] = set()
        for ours, kind, _, keep, doc in _MAP.values():
            if ours in done:
                continue
            done.add(ours)
            labels = ["backend", *("gpu" if k == "gpu_uuid" else k for k in keep)]
            if ours == "gateway_triton_requests":
                labels.append("outcome")
            family = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(ours, doc, labels=labels)
            values = self.values(ours)
            for key, value in values.items():
                family.add_metric(list(key), value)
            if values:
                yield family

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
