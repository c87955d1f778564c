"""One engine step's decisions as data, like vLLM v1's ``SchedulerOutput``.

:class:`~.core.EngineCore` builds a :class:`StepRecord` as it schedules each step
(:meth:`~.core.EngineCore.schedule`): everything about the step that only the rank
that schedules can decide, so that another core holding the same state can replay
it and run the same forwards (:mod:`.distributed`'s followers do):

* ``events``: the decisions since the previous record, in the order they were made
  -- requests added, aborted, rows their consumer ended (``finish_row``), rows that
  failed, prefix-cache clears and evictions (shrinks). Order matters: an abort of a
  request added just before it, a clear between two adds;
* ``finished``: the rows that finished at the previous step's end (with their
  tokens when the prefix cache keeps them), applied after the first ``end_at``
  events (those made during that step, before its end: a prompt chunk that failed);
  ``None`` when no step ended since the previous record (a step that failed as a
  whole, or none ran);
* ``schedule``: this step's prompt chunks and the counts both sides must agree on
  (``None``: no step, a record that only carries events -- a distributed heartbeat);
* ``tokens``: the tokens fed to this step's decode forward (the rows' pending tokens,
  read back to the host only when the core is asked to: ``EngineCore.record_tokens``);
* ``speculative``: for a speculative step (``--speculative ngram``), what its forward
  feeds and what the previous verify step left to drop (:class:`SpecStep`).

Events are collected with one list append per decision and handed over, then reset,
with each record. :meth:`StepRecord.to_wire` / :meth:`StepRecord.from_wire` convert
to and from JSON-able data (lists, numbers, strings) without loss.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Union

import msgspec

if TYPE_CHECKING:
    from .scheduler import Scheduler, StepPlan
    from .sequence import Sequence


# -- the events only the scheduling rank decides (each one a call on EngineCore) --------------

class Added(msgspec.Struct, tag="add", array_like=True):
    """``EngineCore.add``: what another core needs of the request to schedule it the same way."""

    request_id: str
    prompt_ids: list[int]
    n: int
    checkpoints: list[int]


class Aborted(msgspec.Struct, tag="abort", array_like=True):
    request_id: str


class RowEnded(msgspec.Struct, tag="finish", array_like=True):
    """``EngineCore.finish_row``: a row its consumer ended (its tokens when the prefix cache keeps them)."""

    request_id: str
    index: int
    output_ids: Union[list[int], None]


class RowsFailed(msgspec.Struct, tag="fail", array_like=True):
    rows: list[tuple[str, int]]  # (request id, index)


class CacheCleared(msgspec.Struct, tag="clear", array_like=True):
    pass


class CacheShrunk(msgspec.Struct, tag="shrink", array_like=True):
    num_bytes: int


Event = Union[Added, Aborted, RowEnded, RowsFailed, CacheCleared, CacheShrunk]


# -- the step -----------------------------------------------------------------------------------

class FinishedRow(msgspec.Struct, array_like=True):
    """A row that finished at a step's end."""

    request_id: str
    index: int
    reason: str  # a FinishReason value
    output_ids: Union[list[int], None]  # when the prefix cache keeps finished rows


class Chunk(msgspec.Struct, array_like=True):
    """One prompt chunk of a step: ``num_tokens`` more tokens of a prompt."""

    request_id: str
    index: int
    num_tokens: int
    num_computed: int
    num_cached_tokens: int


class Schedule(msgspec.Struct, array_like=True):
    """A step's prompt work, and the scheduler's counts after scheduling it."""

    chunks: list[Chunk]
    running: int
    prefilling: int
    waiting: int
    batch_rows: int


class SpecStep(msgspec.Struct, array_like=True):
    """A speculative step's decisions (rank 0 reads the previous step back before sending them): the
    positions each row drops from the previous verify step (``None`` after a plain step), the rows that
    finished there (retired before this step's forward), and this step's forward -- each row's verify
    inputs (its newest token, then its proposals, right-padded), or, when ``verify`` is ``None``, one
    token per row (``tokens``)."""

    junk: Union[list[int], None]
    done: list[FinishedRow]
    verify: Union[list[list[int]], None]
    tokens: list[int]


class StepRecord(msgspec.Struct):
    events: list[Event] = msgspec.field(default_factory=list)
    finished: Union[list[FinishedRow], None] = None
    end_at: int = 0  # how many of ``events`` came before the previous step's end
    schedule: Union[Schedule, None] = None
    tokens: list[int] = msgspec.field(default_factory=list)
    speculative: Union[SpecStep, None] = None  # a speculative step's decisions (``tokens`` unused then)

    def to_wire(self) -> dict[str, Any]:
        """JSON-able data (lists, numbers, strings)."""
        return msgspec.to_builtins(self)

    @classmethod
    def from_wire(cls, data: Any) -> "StepRecord":
        return msgspec.convert(data, cls)


def schedule_of(plan: "StepPlan", scheduler: "Scheduler", batch_rows: int) -> Schedule:
    chunks = [Chunk(s.request_id, s.index, n, s.num_computed, s.num_cached_tokens) for s, n in plan.prefill]
    return Schedule(chunks, len(scheduler.running), len(scheduler.prefilling), len(scheduler.waiting), batch_rows)


def finished_rows(done: "list[Sequence]", with_tokens: bool) -> list[FinishedRow]:
    return [FinishedRow(s.request_id, s.index, s.finish_reason.value, s.output_ids if with_tokens else None)
            for s in done]
