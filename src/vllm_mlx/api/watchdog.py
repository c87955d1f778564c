"""Engine watchdog: /health turns 503 while an engine step runs far too long, and recovers when the
engine moves again; after a longer stall (if configured) the server shuts itself down cleanly so a
supervisor can restart it."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

from ..limits import WatchdogConfig

logger = logging.getLogger(__name__)


class EngineWatchdog:
    def __init__(self, engines, config: WatchdogConfig):
        self._engines = engines  # () -> the running LLMEngines; each publishes step_started while a step runs
        self.config = config
        self.stalled_for = 0.0  # seconds the current step has run, once over the stall threshold
        self.stalls = 0  # stalls seen since start
        self._exiting = False
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def problem(self) -> str | None:
        """Why the engine is unhealthy now, or None."""
        if not self.stalled_for:
            return None
        return (f"engine loop stalled: the current step has run {self.stalled_for:.1f} s "
                f"(threshold {self.config.stall_s:g} s)")

    def check(self, now: float | None = None) -> None:
        now = now or time.monotonic()
        started = [e.step_started for e in self._engines() if e.step_started is not None]
        running = max((now - t for t in started), default=0.0)
        if running > self.config.stall_s:
            if not self.stalled_for:
                self.stalls += 1
                logger.error("watchdog: engine step running for %.1f s; /health reports unhealthy", running)
            self.stalled_for = running
            if self.config.exit_s and running > self.config.exit_s and not self._exiting:
                self._exiting = True
                logger.critical("watchdog: engine stalled for %.1f s (> %g s); shutting down", running,
                                self.config.exit_s)
                os.kill(os.getpid(), signal.SIGTERM)  # the normal graceful shutdown path
        elif self.stalled_for:
            logger.warning("watchdog: engine loop moving again after a %.1f s stall", self.stalled_for)
            self.stalled_for = 0.0

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.config.interval_s)
            self.check()
