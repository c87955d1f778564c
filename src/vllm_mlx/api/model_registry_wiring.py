"""How the model registry meets the HTTP app: the models a request holds, and its Prometheus gauges."""

from __future__ import annotations

import time

from prometheus_client.core import GaugeMetricFamily

from .model_registry import LEASES, ModelEntry, ModelRegistry


class ModelLeaseMiddleware:
    """Releases the models a request held once its response has been sent (streams included)."""

    def __init__(self, app, registry: ModelRegistry):
        self.app = app
        self.registry = registry

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        held: list[ModelEntry] = []
        scope.setdefault("state", {})[LEASES] = held
        try:
            await self.app(scope, receive, send)
        finally:
            for entry in held:
                entry.leases -= 1
                entry.last_used = time.monotonic()


class ModelRegistryCollector:
    """Prometheus gauges of the served models: which are loaded, their weights, loads and unloads."""

    def __init__(self, registry: ModelRegistry):
        self._registry = registry

    def collect(self):
        loaded = GaugeMetricFamily("vllm_mlx_model_loaded", "1 while the model is loaded", labels=["model"])
        weights = GaugeMetricFamily("vllm_mlx_model_weight_bytes", "Weight bytes of the model (measured once "
                                    "loaded, estimated from its files before)", labels=["model"])
        loads = GaugeMetricFamily("vllm_mlx_model_loads", "Times the model was loaded", labels=["model"])
        unloads = GaugeMetricFamily("vllm_mlx_model_unloads", "Times the model was unloaded", labels=["model"])
        for e in list(self._registry.entries.values()):
            loaded.add_metric([e.name], int(e.loaded))
            weights.add_metric([e.name], e.weight_bytes)
            loads.add_metric([e.name], e.loads)
            unloads.add_metric([e.name], e.unloads)
        yield from (loaded, weights, loads, unloads)
