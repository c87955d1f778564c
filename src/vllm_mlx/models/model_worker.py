"""One model on one dedicated thread, loaded on first use (or at startup when asked).

MLX arrays and streams belong to the thread that made them, so everything a model does -- loading
included -- runs on the single thread of its :class:`ModelWorker`.  Calls are serialized there:
the worker is also the bound on what a model kind may hold (one model, one call at a time).
Callers on the asyncio loop ``await worker.run(fn, ...)``; ``fn(model, ...)`` runs on the thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

logger = logging.getLogger(__name__)

Result = TypeVar("Result")


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the next call tries again."""


@dataclass
class WorkerStats:
    loaded: bool = False
    load_seconds: float | None = None
    calls: int = 0
    busy_seconds: float = 0.0


class ModelWorker:
    """Holds one model of one kind (``embedding``, ``transcription``, ``speech``) on its own thread."""

    def __init__(self, kind: str, name: str, load: Callable[[], Any]):
        self.kind = kind
        self.name = name
        self._load = load
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"vllm-mlx-{kind}")
        self._model: Any = None
        self._stats = WorkerStats()
        self._stats_lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def stats(self) -> WorkerStats:
        with self._stats_lock:
            return WorkerStats(**vars(self._stats))

    # -- on the worker thread -------------------------------------------------
    def _ensure_loaded(self) -> Any:
        if self._model is None:
            start = time.perf_counter()
            logger.info("loading %s model %s", self.kind, self.name)
            try:
                model = self._load()
            except Exception as exc:
                logger.exception("could not load %s model %s", self.kind, self.name)
                raise ModelLoadError(f"could not load {self.kind} model {self.name!r}: {exc}") from exc
            elapsed = time.perf_counter() - start
            self._model = model
            with self._stats_lock:
                self._stats.loaded, self._stats.load_seconds = True, round(elapsed, 3)
            logger.info("%s model %s loaded in %.2fs", self.kind, self.name, elapsed)
        return self._model

    def _call(self, fn: Callable[..., Result], args: tuple) -> Result:
        model = self._ensure_loaded()
        start = time.perf_counter()
        try:
            return fn(model, *args)
        finally:
            with self._stats_lock:
                self._stats.calls += 1
                self._stats.busy_seconds = round(self._stats.busy_seconds + time.perf_counter() - start, 4)

    # -- from anywhere ----------------------------------------------------------
    def submit(self, fn: Callable[..., Result], *args: Any) -> concurrent.futures.Future:
        """Queue ``fn(model, *args)`` on the worker thread (loading the model first if needed)."""
        return self._executor.submit(self._call, fn, args)

    async def run(self, fn: Callable[..., Result], *args: Any) -> Result:
        """Await ``fn(model, *args)`` run on the worker thread."""
        return await asyncio.wrap_future(self.submit(fn, *args))

    async def preload(self) -> None:
        await asyncio.wrap_future(self._executor.submit(self._ensure_loaded))

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
