"""The memory guardrail (``--memory-action``, ``--memory-warn-threshold``, ``--memory-limit-threshold``,
``--memory-monitor-interval``): a thread reads this process's memory every interval, as a percent of
the machine's physical memory (the larger of its resident set and what MLX's allocator holds, active
plus cached; with ``--engine-process`` plus what each engine process reports of its own), and acts while
it is above the limit:

* ``warn``: a warning in the log when the reading crosses the warn or the limit threshold (and a line
  when it is back under);
* ``reject-new``: new generations (chat, completions, Responses, Messages) get 503 with Retry-After,
  in the shape of their API, until the reading is back under the limit; running ones go on;
* ``reduce-context``: the context budget of every served model is halved for new requests (a longer
  prompt gets the API's context-overflow error, so agents compact), and restored once under the limit;
* ``off``: no thread.

``/v1/status`` and ``/health/diagnostics`` show the last reading.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from ..platform import physical_memory_bytes, process_memory
from .errors import error_response_for

logger = logging.getLogger(__name__)

GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages")
RETRY_AFTER_S = 5


def memory_bytes(m: dict) -> int:
    """What one process holds: the larger of its resident set and MLX's active plus cached memory."""
    return max(m["rss_bytes"], m["mlx_active_bytes"] + m["mlx_cache_bytes"])


class MemoryGuard:
    def __init__(self, config: Any, servings: Callable[[], list]):
        self.action = config.memory_action
        self.warn_pct = config.memory_warn_threshold
        self.limit_pct = config.memory_limit_threshold
        self.interval_s = config.memory_monitor_interval
        self._servings = servings  # the loaded models' serving states (for reduce-context)
        try:
            self.total_bytes = physical_memory_bytes()
        except (ValueError, OSError, AttributeError):  # the system does not say: no percent to act on
            self.total_bytes = 0
        self.used_bytes = 0  # this process's memory, and the engine processes' (--engine-process)
        self.engine_bytes = 0
        self.level = "ok"  # ok, warn, limit
        self.readings = 0
        self.rejected = 0  # requests answered 503 by reject-new
        self._reduced: dict[int, tuple[Any, int]] = {}  # id(serving) -> (serving, its own budget)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.action != "off" and self.total_bytes > 0

    @property
    def percent(self) -> float:
        return 100.0 * self.used_bytes / self.total_bytes if self.total_bytes else 0.0

    @property
    def over_limit(self) -> bool:
        return self.enabled and self.level == "limit"

    def start(self) -> None:
        if self.enabled and self._thread is None:
            self.read()
            self._thread = threading.Thread(target=self._run, name="memory-guard", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.read()
            except Exception:  # a failed reading must not end the monitor
                logger.exception("memory guard: reading failed")

    def read(self) -> None:
        """One reading, and what the action does about it."""
        engines = [state.engine.stats.memory for state in self._servings()]
        self.engine_bytes = sum(memory_bytes(m) for m in engines if m)  # --engine-process: their own reports
        self.used_bytes = memory_bytes(process_memory()) + self.engine_bytes
        self.readings += 1
        pct = self.percent
        level = "limit" if pct >= self.limit_pct else "warn" if pct >= self.warn_pct else "ok"
        if level != self.level:
            if level == "ok":
                logger.info("memory guard: process memory back to %.1f%% of the machine (under %g%%)", pct,
                            self.warn_pct)
            else:
                threshold = self.limit_pct if level == "limit" else self.warn_pct
                consequence = {"reject-new": "; new requests get 503", "reduce-context": "; the context budget "
                               "of new requests is halved"}.get(self.action, "") if level == "limit" else ""
                logger.warning("memory guard: process memory at %.1f%% of the machine (%.0f MiB), above the "
                               "%s threshold of %g%%%s", pct, self.used_bytes / 2**20, level, threshold,
                               consequence)
        self.level = level
        if self.action == "reduce-context":
            self._reduce_context(level == "limit")

    def _reduce_context(self, over: bool) -> None:
        if over:
            for serving in self._servings():
                if id(serving) not in self._reduced:
                    self._reduced[id(serving)] = (serving, serving.max_model_len)
                    serving.max_model_len = max(serving.max_model_len // 2, 1)
        else:
            for serving, budget in self._reduced.values():
                serving.max_model_len = budget
            self._reduced.clear()

    def snapshot(self) -> dict:
        return {"action": self.action, "enabled": self.enabled, "level": self.level if self.enabled else None,
                "process_bytes": self.used_bytes, "engine_process_bytes": self.engine_bytes, "machine_bytes": self.total_bytes,
                "percent": round(self.percent, 3), "warn_threshold": self.warn_pct,
                "limit_threshold": self.limit_pct, "interval_s": self.interval_s, "readings": self.readings,
                "rejected": self.rejected, "context_reduced": bool(self._reduced)}


class RejectNewMiddleware:
    """``--memory-action reject-new``: new generations get 503 while memory is above the limit."""

    def __init__(self, app, guard: MemoryGuard):
        self.app = app
        self.guard = guard

    async def __call__(self, scope, receive, send):
        if (scope["type"] == "http" and scope.get("method") == "POST" and self.guard.over_limit
                and scope.get("path", "").rstrip("/") in GENERATION_PATHS):
            self.guard.rejected += 1
            g = self.guard
            response = error_response_for(
                scope["path"], 503, f"the server is above its memory limit ({g.percent:.1f}% of the machine's "
                f"memory in use, limit {g.limit_pct:g}%); new requests are refused until it is back under",
                code="memory_limit")
            response.headers["Retry-After"] = str(RETRY_AFTER_S)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
