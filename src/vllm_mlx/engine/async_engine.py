"""The asyncio side of the engine: submit requests, stream their deltas, abort on cancel."""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

from .config import EngineConfig
from .engine import LLMEngine
from .request import FinishReason, GenerationOutput, GenerationRequest


ENGINE_CHECK_S = 2.0  # how often a waiting request checks that the engine thread is alive


class AsyncEngine:
    """Bridges the engine thread and the event loop it was started from."""

    def __init__(self, load, config: EngineConfig, engine_factory=LLMEngine):
        self._queues: dict[str, asyncio.Queue[GenerationOutput]] = {}
        self.metrics = None  # optional: an object with observe_stream(started, first, last, tokens)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.engine = engine_factory(load, config, self._on_outputs)

    @property
    def loaded(self):
        return self.engine.loaded

    @property
    def stats(self):
        return self.engine.stats

    @property
    def in_flight(self) -> int:
        """Generations submitted and not yet finished (or abandoned) by their consumers."""
        return len(self._queues)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.engine.start()

    def shutdown(self) -> None:
        self.engine.shutdown()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationOutput]:
        """Yield the request's deltas until it finishes; aborts it if the consumer stops early."""
        if request.request_id in self._queues:
            raise ValueError(f"duplicate request id {request.request_id}")
        queue: asyncio.Queue[GenerationOutput] = asyncio.Queue()
        self._queues[request.request_id] = queue
        unfinished = request.sampling.n
        started, first, last, tokens = time.monotonic(), None, None, 0
        try:
            if not self.engine.alive:
                raise RuntimeError("the engine is not running")
            self.engine.add_request(request)
            while unfinished:
                out = await self._next(queue)
                # A consumer that fell behind gets the queued deltas of one continuation as one.
                while unfinished == 1 and not out.finished and not queue.empty():
                    out = out.merged_with(queue.get_nowait())
                if out.finished:
                    unfinished -= 1
                if out.token_ids:
                    last = time.monotonic()
                    first = first or last
                    tokens += len(out.token_ids)
                yield out
                if out.finish_reason in (FinishReason.ERROR, FinishReason.ABORT):
                    break
        finally:
            if self.metrics is not None:
                self.metrics.observe_stream(started, first, last, tokens)
            self._queues.pop(request.request_id, None)
            if unfinished:  # consumer gone, or one continuation failed: stop the rest
                self.engine.abort(request.request_id)

    async def _next(self, queue: asyncio.Queue[GenerationOutput]) -> GenerationOutput:
        """The next delta; never waits forever on an engine thread that has died."""
        if not queue.empty():  # the common case under load: no timer task per delta
            return queue.get_nowait()
        while True:
            try:
                return await asyncio.wait_for(queue.get(), timeout=ENGINE_CHECK_S)
            except asyncio.TimeoutError:
                if not self.engine.alive:
                    raise RuntimeError("the engine stopped") from None

    def _on_outputs(self, outputs: list[GenerationOutput]) -> None:
        """Called on the engine thread: hand the step's deltas to the event loop."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._dispatch, outputs)

    def _dispatch(self, outputs: list[GenerationOutput]) -> None:
        for out in outputs:
            queue = self._queues.get(out.request_id)
            if queue is not None:
                queue.put_nowait(out)
