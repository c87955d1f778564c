"""Prometheus metrics at /metrics (prometheus-client, one registry per app — no global state)."""

from __future__ import annotations

import bisect
import threading
import time
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString
from starlette.requests import Request
from starlette.responses import Response

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class RepeatedHistogram:
    """A histogram that takes one value observed many times in one call (a stream's mean gap, once per
    token gap): prometheus-client's Histogram observes one at a time, a Python call per token."""

    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]):
        self.name, self.help_text, self.bounds = name, help_text, tuple(buckets)
        self._counts = [0] * (len(self.bounds) + 1)  # the last: above every bound
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float, times: int = 1) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self.bounds, value)] += times
            self._sum += value * times

    def collect(self):
        with self._lock:
            counts, total_sum = list(self._counts), self._sum
        cumulative, buckets = 0, []
        for bound, count in zip((*map(floatToGoString, self.bounds), "+Inf"), counts):
            cumulative += count
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(self.name, self.help_text, buckets=buckets, sum_value=total_sum)


class EngineCollector:
    """Gauges read from the engine's latest stats snapshot at scrape time."""

    def __init__(self, stats: Callable[[], Any]):
        self._stats = stats

    def collect(self):
        stats = self._stats()
        if stats is None:
            return
        for name, help_text, value in (
            ("vllm_mlx_running_requests", "Sequences in the decode batch", stats.running),
            ("vllm_mlx_waiting_requests", "Requests queued for admission", stats.waiting),
            ("vllm_mlx_prefilling_requests", "Prompts being prefilled", stats.prefilling),
            ("vllm_mlx_prompt_tokens_processed", "Prompt tokens computed since start", stats.prompt_tokens),
            ("vllm_mlx_generation_tokens_processed", "Tokens generated since start", stats.generation_tokens),
        ):
            yield GaugeMetricFamily(name, help_text, value=value)
        if getattr(stats, "pid", None) is not None:  # --engine-process
            yield CounterMetricFamily("vllm_mlx_engine_restarts", "Restarts of the engine process after it died",
                                      value=stats.restarts)
        cache = stats.prefix_cache
        if cache:
            yield GaugeMetricFamily("vllm_mlx_prefix_cache_bytes", "Bytes held by the prefix cache", value=cache["bytes"])
            yield GaugeMetricFamily("vllm_mlx_prefix_cache_token_hit_rate",
                                    "Prompt tokens reused / prompt tokens looked up", value=cache["token_hit_rate"])
            for key, help_text in (
                    ("checkpoints", "Checkpoints (state copies of recurrent / sliding-window layers) held"),
                    ("checkpoint_bytes", "Bytes held by checkpoints"),
                    ("hit_tokens", "Prompt tokens restored from the prefix cache since start"),
                    ("restore_failures", "Cache hits that could not be assembled (prefilled cold instead)"),
                    ("verified_restores", "Restores re-checked against a fresh prefill (--verify-cache-restores)"),
                    ("restore_mismatches", "Re-checked restores whose logits differed from a fresh prefill")):
                yield GaugeMetricFamily(f"vllm_mlx_prefix_cache_{key}", help_text, value=cache.get(key, 0))
            if "disk_rejected" in cache:
                yield GaugeMetricFamily("vllm_mlx_prefix_cache_disk_rejected",
                                        "Cache files refused (foreign, damaged or edited) and deleted",
                                        value=cache["disk_rejected"])
        spec = getattr(stats, "speculative", None)
        if spec:
            for key, help_text in (("proposed", "Tokens proposed by speculative decoding"),
                                   ("accepted", "Proposed tokens the model agreed with"),
                                   ("verify_steps", "Engine steps that verified proposals"),
                                   ("rollback_forwards", "Verify steps whose recurrent layers were rolled back by "
                                    "a second forward")):
                family = CounterMetricFamily(f"vllm_mlx_speculative_{key}", help_text, labels=["method"])
                family.add_metric([spec["method"]], spec[key])
                yield family
            yield GaugeMetricFamily("vllm_mlx_speculative_acceptance_rate", "Accepted / proposed tokens",
                                    value=spec["acceptance_rate"])
        lora = getattr(stats, "lora", None)
        if lora:
            yield CounterMetricFamily("vllm_mlx_lora_adapter_loads", "LoRA adapters read into a slot (first use, "
                                      "or again after giving their slot up)", value=lora["loads"])
            resident = GaugeMetricFamily("vllm_mlx_lora_adapter_resident", "Whether a served LoRA adapter holds a "
                                         "slot now", labels=["adapter"])
            for name in lora["adapters"]:
                resident.add_metric([name], float(name in lora["resident"]))
            yield resident
        vision = getattr(stats, "vision_cache", None)
        if vision:
            for key, help_text in (("hits", "Media whose vision embedding came from the cache"),
                                   ("misses", "Media encoded by the vision tower"),
                                   ("bytes", "Bytes held by the vision-embedding cache"),
                                   ("encode_seconds", "Seconds spent in the vision tower")):
                yield GaugeMetricFamily(f"vllm_mlx_vision_cache_{key}", help_text, value=vision[key])


class ServerMetrics:
    def __init__(self, engine_stats: Callable[[], Any]):
        self.registry = CollectorRegistry()
        self.requests = Counter("vllm_mlx_http_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.request_seconds = Histogram("vllm_mlx_http_request_duration_seconds", "HTTP request duration",
                                         ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.ttft = Histogram("vllm_mlx_time_to_first_token_seconds", "Time from submission to the first token",
                              buckets=LATENCY_BUCKETS, registry=self.registry)
        self.inter_token = RepeatedHistogram("vllm_mlx_inter_token_latency_seconds", "Time between streamed tokens",
                                             LATENCY_BUCKETS)
        self.registry.register(self.inter_token)
        self.registry.register(EngineCollector(engine_stats))

    def observe_stream(self, started: float, first: float | None, last: float | None, tokens: int) -> None:
        """A finished generation: its TTFT and its mean inter-token latency, once per token gap."""
        if first is None:
            return
        self.ttft.observe(first - started)
        if tokens > 1 and last is not None:
            self.inter_token.observe((last - first) / (tokens - 1), tokens - 1)

    def response(self) -> Response:
        return Response(generate_latest(self.registry), media_type="text/plain; version=0.0.4; charset=utf-8")


class MetricsMiddleware:
    """Counts every HTTP request by its route template (not the raw path) and status."""

    def __init__(self, app, metrics: ServerMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.monotonic()
        status = {"code": 500}

        async def record_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(name, str(status["code"])).inc()
            self.metrics.request_seconds.labels(name).observe(time.monotonic() - started)


async def metrics_endpoint(request: Request) -> Response:
    return request.app.state.metrics.response()
