"""The asyncio side of the engine: submit requests, stream their deltas, abort on cancel.

The engine's deltas carry token ids; their text is made here, per continuation
(:class:`~.text_stream.TextStream`: detokenizing, stop strings, logprobs released with their text),
so the engine's step loop -- in its own process with ``--engine-process`` -- does none of it.

Each request's deltas wait for its consumer in a bounded :class:`OutputBacklog`: a consumer that
falls too far behind (a streaming client that stopped reading) has its request stopped in the engine,
and it gets a final error delta instead of the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import cached_property
from typing import AsyncIterator

from .backlog import OutputBacklog, delta_bytes
from .detokenizer import streaming_backend
from .config import EngineConfig
from .engine import LLMEngine
from .request import FinishReason, GenerationOutput, GenerationRequest
from .text_stream import TextStream

logger = logging.getLogger(__name__)

ENGINE_CHECK_S = 2.0  # how often, while requests wait, the engine is checked to be alive
YIELD_EVERY = 64  # deltas taken without waiting before the consumer lets the event loop run others


class AsyncEngine:
    """Bridges the engine thread and the event loop it was started from."""

    def __init__(self, load, config: EngineConfig, engine_factory=LLMEngine):
        self._backlogs: dict[str, OutputBacklog] = {}
        self.metrics = None  # optional: an object with observe_stream(started, first, last, tokens)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watcher: asyncio.Task | None = None  # ends the waiting requests if the engine dies
        self.stream_bounds = (config.stream_buffer_events, config.stream_buffer_bytes)
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
        return len(self._backlogs)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.engine.start()

    def shutdown(self) -> None:
        self.engine.shutdown()
        watcher, loop = self._watcher, self._loop
        if watcher is not None and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(watcher.cancel)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationOutput]:
        """Yield the request's deltas until it finishes; aborts it if the consumer stops early."""
        if request.request_id in self._backlogs:
            raise ValueError(f"duplicate request id {request.request_id}")
        backlog = OutputBacklog(*self.stream_bounds)
        self._backlogs[request.request_id] = backlog
        n = unfinished = request.sampling.n
        texts = [self._text_stream(request) for _ in range(n)]
        started, first, last, tokens = time.monotonic(), None, None, 0
        streak = 0
        try:
            if not self.engine.alive:
                raise RuntimeError("the engine is not running")
            if self._watcher is None or self._watcher.done():
                self._watcher = asyncio.ensure_future(self._watch_engine())
            self.engine.add_request(request)
            while unfinished:
                if backlog.empty():
                    streak = 0
                else:
                    streak += 1
                    if streak % YIELD_EVERY == 0:  # a long backlog (or a gone client) must not hog the loop
                        await asyncio.sleep(0)
                out = await self._next(backlog)
                # A consumer that fell behind gets the queued deltas of its one continuation as one.
                while n == 1 and not out.finished and not backlog.empty():
                    out = out.merged_with(backlog.get_nowait())
                text = texts[out.index]
                if text.done:  # ended here by a stop string: the rest the engine made is dropped
                    continue
                delta = text.feed(out)
                if delta is None:
                    continue
                if delta.finished:
                    unfinished -= 1
                    if not out.finished:  # a stop string: the engine ends the row (cached as finished)
                        self.engine.finish_row(request.request_id, out.index)
                if delta.token_ids:
                    last = time.monotonic()
                    first = first or last
                    tokens += len(delta.token_ids)
                yield delta
                if delta.finish_reason in (FinishReason.ERROR, FinishReason.ABORT):
                    break
        finally:
            if self.metrics is not None:
                self.metrics.observe_stream(started, first, last, tokens)
            self._backlogs.pop(request.request_id, None)
            if unfinished:  # consumer gone, or one continuation failed: stop the rest
                self.engine.abort(request.request_id)

    @cached_property
    def _detokenizer_backend(self):
        """The tokenizer's streaming decoder, if it has one (looked up once, on the first request)."""
        return streaming_backend(self.engine.loaded.tokenizer)

    def _text_stream(self, request: GenerationRequest) -> TextStream:
        return TextStream(self.engine.loaded.tokenizer, request.prompt_token_ids, request.sampling,
                          request.keep_special_tokens, self._detokenizer_backend)

    async def _next(self, backlog: OutputBacklog) -> GenerationOutput:
        """The next delta (no timer per delta: :meth:`_watch_engine` ends the wait if the engine dies)."""
        if not backlog.empty():  # the common case under load
            return backlog.get_nowait()
        return await backlog.get()

    async def _watch_engine(self) -> None:
        """While requests wait, check every ``ENGINE_CHECK_S`` that the engine is alive; if it died
        without ending them, each gets a final error delta (none waits forever)."""
        while self._backlogs:
            await asyncio.sleep(ENGINE_CHECK_S)
            if not self.engine.alive:
                for request_id, backlog in list(self._backlogs.items()):
                    backlog.force_put(GenerationOutput(request_id, finish_reason=FinishReason.ERROR,
                                                       error="the engine stopped"))
                return

    def _on_outputs(self, outputs: list[GenerationOutput]) -> None:
        """Called on the engine thread: hand the step's deltas to the event loop."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._dispatch, outputs)

    def _dispatch(self, outputs: list[GenerationOutput]) -> None:
        for out in outputs:
            backlog = self._backlogs.get(out.request_id)
            if backlog is not None and not backlog.put(out, delta_bytes(out)):
                self._overflowed(out.request_id, backlog)

    def _overflowed(self, request_id: str, backlog: OutputBacklog) -> None:
        """The consumer fell too far behind: stop the request; its consumer gets an error delta."""
        logger.warning("request %s stopped: its client is not reading the stream (%s)", request_id, backlog.overflow)
        self.engine.abort(request_id)
        backlog.force_put(GenerationOutput(request_id, finish_reason=FinishReason.ERROR,
                                           error=f"the client did not read the stream: {backlog.overflow}"))
