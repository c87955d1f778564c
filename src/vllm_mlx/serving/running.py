"""The generations a served model is running now, by the id their API response carries, and cancelling
one on an operator's request (``POST /v1/requests/{id}/cancel``).

Every engine stream a :class:`~.state.ServingState` opens is tracked here under its *public* id — the
``id`` of the HTTP response (``chatcmpl-…``, ``cmpl-…``, ``resp_…``, ``msg_…``), which one HTTP
request may share among several engine requests (the prompts of a completions request, the rounds of
an MCP tool loop). A cancel aborts them in the engine like a client disconnect does, but the stream's
consumer is still there: the engine's final ABORT delta reaches it as ``FinishReason.CANCELLED``, and
the API wing ends its answer the way that API ends one (a final chunk, ``response.incomplete``, a
``message_delta``) instead of treating it as a failure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, AsyncIterator, Callable

from ..engine.request import FinishReason, GenerationOutput

# Which API a public id came from, by the prefix the wings give their ids.
API_BY_PREFIX = (("chatcmpl-", "chat.completions"), ("cmpl-", "completions"), ("resp_", "responses"),
                 ("msg_", "messages"), ("warm-", "warm-up"), ("divprobe-", "divergence probe"))


def api_of(public_id: str) -> str:
    return next((api for prefix, api in API_BY_PREFIX if public_id.startswith(prefix)), "internal")


@dataclass
class RunningRequest:
    """One engine request of a running generation, and what it has done so far."""

    engine_id: str
    public_id: str
    n: int
    prompt_tokens: int
    abort: Callable[[str], None]  # the engine's abort(engine_id)
    created: float = field(default_factory=time.time)  # wall clock, for display
    started: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    last_token: float | None = None
    completion: dict[int, int] = field(default_factory=dict)  # tokens per continuation
    cached_tokens: int = 0
    finished: set[int] = field(default_factory=set)  # continuations that ended
    submitted: bool = False  # handed to the engine (its first delta was asked for)
    cancelled: bool = False

    @property
    def completion_tokens(self) -> int:
        return sum(self.completion.values())

    def observe(self, out: GenerationOutput) -> None:
        if out.prompt_tokens:
            self.prompt_tokens = out.prompt_tokens
            self.cached_tokens = out.cached_tokens
        if out.completion_tokens:
            self.completion[out.index] = out.completion_tokens
        if out.token_ids:
            self.last_token = time.monotonic()
            self.first_token = self.first_token or self.last_token
        if out.finished:
            self.finished.add(out.index)


class RunningRequests:
    """The running generations of one served model (its engine)."""

    def __init__(self) -> None:
        self._requests: dict[str, RunningRequest] = {}  # engine id -> its record
        self.cancelled_total = 0  # requests (public ids) cancelled since start; disconnects are not counted

    def track(self, stream: AsyncIterator[GenerationOutput], engine_id: str, public_id: str, n: int,
              prompt_tokens: int, abort: Callable[[str], None]) -> "TrackedStream":
        record = RunningRequest(engine_id, public_id, n, prompt_tokens, abort)
        self._requests[engine_id] = record
        return TrackedStream(stream, record, self)

    def _done(self, record: RunningRequest) -> None:
        if self._requests.get(record.engine_id) is record:
            del self._requests[record.engine_id]

    def __len__(self) -> int:
        return len(self._requests)

    def find(self, public_id: str) -> list[RunningRequest]:
        return [r for r in self._requests.values() if r.public_id == public_id]

    def cancel(self, public_id: str) -> list[RunningRequest]:
        """Cancel every engine request of ``public_id``; returns them (empty: none is running)."""
        found = self.find(public_id)
        if any(not r.cancelled for r in found):
            self.cancelled_total += 1
        for record in found:
            if not record.cancelled:
                record.cancelled = True
                if record.submitted:  # not yet submitted: its stream ends at its first read instead
                    record.abort(record.engine_id)
        return found

    def snapshot(self, model: str) -> list[dict[str, Any]]:
        """The running requests, one entry per public id (its engine requests summed), oldest first."""
        now = time.monotonic()
        groups: dict[str, list[RunningRequest]] = {}
        for record in self._requests.values():
            groups.setdefault(record.public_id, []).append(record)
        out = []
        for public_id, records in groups.items():
            started = min(r.started for r in records)
            prompt = sum(r.prompt_tokens for r in records)
            cached = sum(r.cached_tokens for r in records)
            completion = sum(r.completion_tokens for r in records)
            firsts = [r.first_token for r in records if r.first_token is not None]
            decoding_s = now - min(firsts) if firsts else 0.0
            out.append({
                "id": public_id,
                "object": "request",
                "api": api_of(public_id),
                "model": model,
                "created": int(min(r.created for r in records)),
                "state": "cancelling" if any(r.cancelled for r in records)
                else "decoding" if firsts else "waiting or prefilling",
                "elapsed_s": round(now - started, 3),
                "prompt_tokens": prompt,
                "cached_tokens": cached,
                "cache_hit_rate": round(cached / prompt, 4) if prompt else None,
                "completion_tokens": completion,
                "ttft_s": round(min(firsts) - started, 3) if firsts else None,
                "tokens_per_s": round(completion / decoding_s, 2) if completion and decoding_s > 0 else None,
                "n": sum(r.n for r in records),
            })
        return sorted(out, key=lambda e: -e["elapsed_s"])


class TrackedStream:
    """An engine stream that keeps its :class:`RunningRequest` up to date and ends it as cancelled."""

    def __init__(self, stream: AsyncIterator[GenerationOutput], record: RunningRequest, owner: RunningRequests):
        self._stream = stream
        self._record = record
        self._owner = owner
        self._pending: list[GenerationOutput] = []  # the final deltas of a cancel, still to give out

    @property
    def cancelled(self) -> bool:
        return self._record.cancelled

    def __aiter__(self) -> "TrackedStream":
        return self

    async def __anext__(self) -> GenerationOutput:
        record = self._record
        if self._pending:
            return self._pending.pop(0)
        if record.cancelled and not record.submitted:  # cancelled before it reached the engine
            await self._close_inner()
            return self._end_cancelled()
        record.submitted = True
        try:
            out = await self._stream.__anext__()
        except StopAsyncIteration:
            if record.cancelled and len(record.finished) < record.n:
                return self._end_cancelled()
            self._owner._done(record)
            raise
        except BaseException:
            self._owner._done(record)
            raise
        if record.cancelled and out.finish_reason is FinishReason.ABORT:
            out = replace(out, finish_reason=FinishReason.CANCELLED)
        record.observe(out)
        if out.finish_reason in (FinishReason.ERROR, FinishReason.ABORT) or len(record.finished) >= record.n:
            self._owner._done(record)  # over, even if its consumer reads no further
        return out

    def _end_cancelled(self) -> GenerationOutput:
        """CANCELLED deltas for the continuations the engine did not end itself (the engine stream stops
        at the first ABORT of an n > 1 request; a request cancelled before submission has none)."""
        record = self._record
        self._pending = [GenerationOutput(record.engine_id, index=i, finish_reason=FinishReason.CANCELLED,
                                          prompt_tokens=record.prompt_tokens, cached_tokens=record.cached_tokens,
                                          completion_tokens=record.completion.get(i, 0))
                         for i in range(record.n) if i not in record.finished]
        for out in self._pending:
            record.finished.add(out.index)
        self._owner._done(record)
        if not self._pending:
            raise StopAsyncIteration
        return self._pending.pop(0)

    async def _close_inner(self) -> None:
        try:
            await self._stream.aclose()
        except Exception:
            pass

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            self._owner._done(self._record)

    def __del__(self):  # a stream that was never read to its end (or never read) is not running
        self._owner._done(self._record)
