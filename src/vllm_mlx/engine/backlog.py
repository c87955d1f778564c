"""Output that a consumer has not taken yet, bounded in count and in size.

The engine produces deltas as fast as it decodes; a streamed request hands them to its HTTP client
only as fast as the client reads (uvicorn's send waits while the socket buffer is full). A client
that reads slowly, or not at all, would otherwise make the server hold the whole answer -- n rows,
logprobs and all. Every request's deltas wait in an :class:`OutputBacklog`; past either bound it
overflows: what it held is dropped and its owner stops the request (async_engine.py; the fan-in of
several prompts in openai_routes.py uses one backlog for the whole HTTP request).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from .request import GenerationOutput

# What one waiting delta costs in memory, roughly (measured with tracemalloc: a 1-token delta ~250 B;
# a logprob with k alternatives ~120 + 125 k B).
DELTA_BASE_BYTES = 256
TOKEN_BYTES = 40
LOGPROB_BYTES = 120
ALTERNATIVE_BYTES = 125


def delta_bytes(out: GenerationOutput | None) -> int:
    """Approximate memory held by one waiting delta."""
    if out is None:
        return DELTA_BASE_BYTES
    size = DELTA_BASE_BYTES + len(out.text) + TOKEN_BYTES * len(out.token_ids)
    for lp in out.logprobs or ():
        size += LOGPROB_BYTES + ALTERNATIVE_BYTES * len(lp.top)
    return size


class OutputBacklog:
    """A FIFO of items with their sizes; ``put`` reports an overflow once, then drops what comes."""

    def __init__(self, max_events: int | None = None, max_bytes: int | None = None):
        self.max_events, self.max_bytes = max_events, max_bytes
        self._items: deque[tuple[Any, int]] = deque()
        self._ready = asyncio.Event()
        self.events = 0
        self.bytes = 0
        self.overflow: str | None = None  # why it overflowed (then it holds only what force_put added)

    def put(self, item: Any, size: int) -> bool:
        """Queue ``item``; False when this put overflowed the backlog (it is then emptied)."""
        if self.overflow is not None:
            return True  # already overflowed: dropped (the owner has stopped the producer)
        if ((self.max_events is not None and self.events + 1 > self.max_events)
                or (self.max_bytes is not None and self.bytes + size > self.max_bytes)):
            self.overflow = (f"{self.events + 1} deltas ({(self.bytes + size) / 2**20:.1f} MiB) were waiting "
                             f"for the client, over the bound of {self.max_events} deltas / "
                             f"{(self.max_bytes or 0) / 2**20:g} MiB (--stream-buffer-events, --stream-buffer-mb)")
            self._items.clear()
            self.events = self.bytes = 0
            return False
        self.force_put(item, size)
        return True

    def force_put(self, item: Any, size: int = 0) -> None:
        """Queue ``item`` regardless of the bounds (a final marker after an overflow)."""
        self._items.append((item, size))
        self.events += 1
        self.bytes += size
        self._ready.set()

    def empty(self) -> bool:
        return not self._items

    def get_nowait(self) -> Any:
        item, size = self._items.popleft()
        self.events -= 1
        self.bytes -= size
        if not self._items:
            self._ready.clear()
        return item

    async def get(self) -> Any:
        while not self._items:
            await self._ready.wait()
        return self.get_nowait()
