"""What every API wing's responses share: the one SSE framer, the one disconnect watcher, and
gathering whole generations for non-streamed answers."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable

from fastapi import Request

from ..engine.request import FinishReason, GenerationOutput, TokenLogprob
from .errors import generation_failure
from ..serving.errors import APIError

DISCONNECT_POLL_S = 0.25
KEEPALIVE_COMMENT = ": keepalive\n\n"  # an SSE comment: every SSE parser skips it


async def with_keepalive(stream: AsyncIterator[GenerationOutput], interval: float
                         ) -> AsyncIterator[GenerationOutput | None]:
    """The engine stream, with ``None`` yielded every ``interval`` seconds while its first output has
    not come (the request queues, or a long prompt prefills): the wing sends a keepalive then, so
    clients and proxies with idle timeouts keep the connection. ``interval`` 0: no keepalives."""
    if interval <= 0:
        async for out in stream:
            yield out
        return
    first = asyncio.ensure_future(stream.__anext__())
    try:
        while not first.done():
            await asyncio.wait({first}, timeout=interval)
            if not first.done():
                yield None
        try:
            out = first.result()
        except StopAsyncIteration:
            return
        yield out
        async for out in stream:
            yield out
    finally:  # the client went away (or the stream ended): nothing may keep the generation running
        if not first.done():
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


def keepalive_interval(raw: Request) -> float:
    config = getattr(raw.app.state, "config", None)
    return float(getattr(config, "sse_keepalive", 0.0) or 0.0)


def request_id_headers(request_id: str) -> dict[str, str]:
    """The response headers naming a generation's id (the ``id`` of its body): what
    ``POST /v1/requests/{id}/cancel`` takes; the OpenAI SDK shows it as ``._request_id``."""
    return {"x-request-id": request_id}


def sse(payload: dict | str, event: str | None = None) -> str:
    """One server-sent event: ``data:`` (JSON unless already a string), after ``event:`` when named."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return (f"event: {event}\n" if event else "") + f"data: {data}\n\n"


async def until_disconnected(raw: Request, work: Awaitable[Any], on_disconnect=None,
                             timeout: float | None = None) -> Any:
    """Await ``work`` unless the client goes away first: then cancel it (and run ``on_disconnect``)
    and answer 499, so an abandoned non-streamed request frees its engine rows at once. Past
    ``timeout`` seconds (``--timeout``) the same, answered 504."""
    task = asyncio.ensure_future(work)
    deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
    while True:
        done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S if deadline is None else
                                     max(min(DISCONNECT_POLL_S, deadline - asyncio.get_running_loop().time()), 0))
        if done:
            return task.result()
        timed_out = deadline is not None and asyncio.get_running_loop().time() >= deadline
        if timed_out or await raw.is_disconnected():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            if on_disconnect is not None:
                await on_disconnect()
            if timed_out:
                raise APIError(504, f"the request ran longer than the server's timeout of {timeout:g} s (--timeout) "
                                    f"and was stopped; stream it, or ask for fewer tokens", code="request_timeout")
            raise APIError(499, "client disconnected")


def request_timeout(raw: Request) -> float | None:
    """``--timeout``: seconds a non-streamed request may run (None: no limit)."""
    return getattr(getattr(raw.app.state, "config", None), "request_timeout", None)


@dataclass
class Choice:
    """One continuation gathered whole (non-streaming)."""

    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    last: GenerationOutput | None = None


async def collect(stream: AsyncIterator[GenerationOutput], raw: Request, n: int) -> list[Choice]:
    """Gather whole generations; stops them (freeing their slots) if the client disconnects."""

    async def consume() -> list[Choice]:
        choices = [Choice() for _ in range(n)]
        async for out in stream:
            choice = choices[out.index]
            choice.text += out.text
            choice.logprobs += out.logprobs or []
            choice.last = out
            if out.finish_reason is FinishReason.ERROR:
                raise generation_failure(out)
        return choices

    return await until_disconnected(raw, consume(), stream.aclose, request_timeout(raw))
