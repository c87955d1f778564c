"""Batch-divergence monitor: do greedy outputs change when requests share a batch?

A probe runs a fixed set of greedy prompts one after another (each alone) and then all together
(batched with each other), and measures token-by-token agreement between the two runs. Below the
threshold the monitor either warns (``warn``) or switches the engine to one request at a time
(``serialize``): the engine's admission bound becomes 1, so the next request is admitted only when
the previous one has finished generating -- streamed requests included.

Serialization is sticky for the life of the process: once serialized, concurrent probes would
run one at a time too and could no longer measure divergence, so the periodic probe stops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

from prometheus_client.core import GaugeMetricFamily

from ..config import BATCH_DIVERGENCE_ACTIONS as ACTIONS
from ..config import ServerConfig
from ..engine.request import FinishReason, SamplingParams
from ..serving.requests import new_id
from ..serving.state import ServingState

logger = logging.getLogger(__name__)

PROBE_PROMPTS = (
    "The capital of France is",
    "1, 2, 3, 4, 5,",
    "def add(a, b):",
    "Once upon a time, there was a",
)
PROBE_TOKENS = 16


def token_agreement(serial: Sequence[Sequence[int]], batched: Sequence[Sequence[int]]) -> float:
    """Matching positions / compared positions; a position one run lacks counts as a mismatch."""
    matches = total = 0
    for a, b in zip(serial, batched, strict=True):
        total += max(len(a), len(b))
        matches += sum(x == y for x, y in zip(a, b))
    return 1.0 if total == 0 else matches / total


@dataclass
class DivergenceStatus:
    enabled: bool
    threshold: float
    action: str
    interval_s: float
    agreement: float | None = None  # of the last probe
    serialized: bool = False
    last_probe_at: float | None = None  # unix time
    last_probe_seconds: float | None = None
    probes: int = 0
    last_error: str | None = None


class DivergenceMonitor:
    def __init__(self, serving: Callable[[], ServingState], threshold: float = 0.95, action: str = "warn",
                 interval: float = 300.0, prompts: Sequence[str] = PROBE_PROMPTS, max_tokens: int = PROBE_TOKENS):
        if action not in ACTIONS:
            raise ValueError(f"batch-divergence action must be one of {ACTIONS}, not {action!r}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"batch-divergence threshold must be within 0..1, not {threshold}")
        self._serving = serving
        self._prompts = tuple(prompts)
        self._max_tokens = max_tokens
        self._task: asyncio.Task | None = None
        self.status = DivergenceStatus(True, threshold, action, interval)

    # -- probing ------------------------------------------------------------------
    async def _generate(self, state: ServingState, ids: list[int]) -> list[int]:
        params = SamplingParams(max_tokens=self._max_tokens, temperature=0.0)
        tokens: list[int] = []
        async for out in state.generate(new_id("divprobe"), ids, params):
            if out.finish_reason is FinishReason.ERROR:
                raise RuntimeError(out.error or "probe generation failed")
            tokens += out.token_ids
        return tokens

    async def probe(self) -> float:
        """One probe: serial run, concurrent run, agreement, and the action if it is too low."""
        state = self._serving()
        started = time.monotonic()
        prompts = [await state.tokenize(state.tokenizer.encode, p) for p in self._prompts]
        serial = [await self._generate(state, ids) for ids in prompts]
        batched = await asyncio.gather(*(self._generate(state, ids) for ids in prompts))
        agreement = token_agreement(serial, batched)
        s = self.status
        s.agreement, s.last_probe_at, s.probes = round(agreement, 4), time.time(), s.probes + 1
        s.last_probe_seconds, s.last_error = round(time.monotonic() - started, 3), None
        if agreement < s.threshold:
            if s.action == "serialize":
                self.serialize(state)
            logger.warning("batch divergence: greedy outputs agree on %.1f%% of tokens between serial and "
                           "batched runs (threshold %.1f%%)%s", 100 * agreement, 100 * s.threshold,
                           "; generation is now serialized (one request at a time)" if s.serialized else "")
        else:
            logger.info("batch-divergence probe: %.1f%% token agreement", 100 * agreement)
        return agreement

    def serialize(self, state: ServingState) -> None:
        if not self.status.serialized:
            state.engine.engine.set_max_num_seqs(1)
            self.status.serialized = True

    async def safe_probe(self) -> None:
        try:
            await self.probe()
        except Exception as exc:  # a failed probe must never take the server down
            logger.exception("batch-divergence probe failed")
            self.status.last_error = f"{type(exc).__name__}: {exc}"

    # -- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        """Probe once now (before traffic), then every ``interval`` seconds (0: startup only)."""
        await self.safe_probe()
        if self.status.interval_s > 0:
            self._task = asyncio.create_task(self._every_interval())

    async def _every_interval(self) -> None:
        while not self.status.serialized:
            await asyncio.sleep(self.status.interval_s)
            if not self.status.serialized:
                await self.safe_probe()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def snapshot(self) -> dict:
        return asdict(self.status)



class DivergenceMonitors:
    """The server's monitors: one per loaded model (the single model's included), started when the model
    has loaded, before its first request runs; stopped when it unloads."""

    def __init__(self, config: ServerConfig, app: Any, registry: Any):
        self.enabled = config.batch_divergence_monitor
        self._settings = (config.batch_divergence_threshold, config.batch_divergence_action,
                          config.batch_divergence_interval)
        self.monitors: dict[str, DivergenceMonitor] = {}
        self._registry = registry
        if not self.enabled:
            return
        app.state.metrics.registry.register(DivergenceCollector(self))
        registry.on_loaded, registry.on_unloading = self._model_loaded, self._model_unloading

    async def _model_loaded(self, entry: Any) -> None:
        """Probe the model before its first request."""
        if self.enabled:
            monitor = self.monitors[entry.name] = DivergenceMonitor(lambda: entry.serving, *self._settings)
            await monitor.start()

    async def _model_unloading(self, entry: Any) -> None:
        monitor = self.monitors.pop(entry.name, None)
        if monitor is not None:
            await monitor.stop()

    async def stop(self) -> None:
        for monitor in self.monitors.values():
            await monitor.stop()

    def snapshot(self) -> dict:
        """The single model's status, or {model name: status} in multi-model serving."""
        if self._registry.single:
            return next((m.snapshot() for m in self.monitors.values()), {"enabled": True, "probes": 0})
        return {name: m.snapshot() for name, m in self.monitors.items()}


class DivergenceCollector:
    """Prometheus gauges of every monitor's status (label ``model``), read at scrape time."""

    def __init__(self, monitors: DivergenceMonitors):
        self._monitors = monitors

    def collect(self):
        families = {
            "serialized": GaugeMetricFamily("vllm_mlx_batch_divergence_serialized",
                                            "1 when generation is serialized because of batch divergence",
                                            labels=["model"]),
            "threshold": GaugeMetricFamily("vllm_mlx_batch_divergence_threshold",
                                           "Token agreement below which the monitor acts", labels=["model"]),
            "probes": GaugeMetricFamily("vllm_mlx_batch_divergence_probes", "Divergence probes completed",
                                        labels=["model"]),
            "agreement": GaugeMetricFamily("vllm_mlx_batch_divergence_agreement",
                                           "Token agreement of serial and batched greedy outputs in the last probe",
                                           labels=["model"]),
            "last_probe_at": GaugeMetricFamily("vllm_mlx_batch_divergence_last_probe_timestamp_seconds",
                                               "Unix time of the last probe", labels=["model"]),
        }
        for name, monitor in list(self._monitors.monitors.items()):
            s = monitor.status
            for key, family in families.items():
                value = getattr(s, key)
                if value is not None:
                    family.add_metric([name], float(value))
        yield from families.values()
