"""The engine across several ranks: rank 0 leads, the others follow step by step.

Every rank holds one shard of the model and the same engine state (scheduler,
decode batch, prefix cache), so each forward pass runs on all ranks at once
with the same shapes, and the collectives inside the sharded model line up.

Rank 0 (:class:`LeaderEngine`) is the ordinary engine: between scheduling a
step and running it, it sends the step's :class:`~.step_record.StepRecord`,
which its core builds as every core does -- the decisions only rank 0 can make
(requests that arrived, aborts, rows ended by their consumer, failures, cache
clears and evictions), the rows that finished at the previous step's end (with
their tokens), the step's schedule, and the tokens it feeds the decode forward.
The other ranks (:class:`FollowerEngine`) apply the record
(:meth:`FollowerCore.apply`): they replay its events on the same core methods,
schedule the same step (a mismatch ends the job), and run the same forwards.
Sampling happens once, on rank 0: every rank feeds the record's tokens to the
decode forward.

Every forward is evaluated at once on every rank (:class:`LockstepRunner`),
so the order of collectives is the order of forwards, whatever each rank does
lazily around them. While idle, rank 0 sends a heartbeat every ``idle_wait``
seconds (a record without a schedule: the events since the last one), so a
follower's watchdog tells an idle leader from a lost one.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import mlx.core as mx

from .core import EngineCore
from .engine import LLMEngine
from .lockstep import LockstepChannel, LockstepLost, Watchdog, exit_process
from .model_runner import ModelRunner
from .prefix_reuse import PrefixReuse
from .request import FinishReason, GenerationRequest, SamplingParams
from .rollback import drop_rejected, recurrent_states, snapshot
from .rows import RowArrays
from .scheduler import StepPlan
from .sequence import Sequence
from .step_record import (Aborted, Added, CacheCleared, CacheShrunk, Event, FinishedRow, RowEnded, RowsFailed,
                          Schedule, SpecStep, StepRecord)

logger = logging.getLogger(__name__)

HEARTBEAT_S = 1.0


class LockstepRunner(ModelRunner):
    """A runner whose every forward completes before the next one starts, on every rank."""

    # followers learn what each row kept a step later, so every rank rolls back by re-running (rollback.py)
    keeps_positions = False

    def prefill(self, seq: Sequence, num_tokens: int) -> mx.array | None:
        logits = super().prefill(seq, num_tokens)  # a chunk that is not the last is evaluated there
        if logits is not None:
            _eval(logits, [c.state for c in seq.cache])
        return logits

    def prefill_together(self, seqs: list[Sequence]) -> tuple[list[Any], mx.array]:
        cache, logits = super().prefill_together(seqs)
        _eval(logits, [c.state for c in cache])
        return cache, logits

    def decode(self, tokens: mx.array | None = None) -> mx.array:
        logits = super().decode(tokens)
        _eval(logits, self.written())
        return logits

    def verify(self, tokens: mx.array) -> mx.array:
        logits = super().verify(tokens)
        _eval(logits, self.written())
        return logits

    def batch_model(self, tokens: mx.array, cache: list[Any]) -> mx.array:
        logits = super().batch_model(tokens, cache)  # also the rollback's re-forward after a verify step
        _eval(logits, self.written())
        return logits


def _eval(*arrays: Any) -> None:
    try:
        mx.eval(*arrays)
    except Exception as exc:  # a failed collective leaves the ranks out of step for good
        raise LockstepLost(f"a forward pass failed across ranks: {exc}") from exc


# -- rank 0 ---------------------------------------------------------------------------------------

class Followers:
    """Rank 0's :class:`~.engine.StepPeers`: the other ranks, reached over the group's collectives. A
    stalled exchange or step (past ``timeout``) fails the requests in flight (``on_stall``) and ends the
    process, as does a lost rank (:class:`LockstepLost`)."""

    def __init__(self, group: Any, timeout: float, on_stall: Any):
        self.channel = LockstepChannel(group)
        self.idle_wait = HEARTBEAT_S
        self.lost = False
        self._on_stall = on_stall
        self._watchdog = Watchdog(timeout, self._stalled)

    def share_cache_budget(self, budget: int | None) -> None:
        self.channel.exchange({"prefix_cache_bytes": budget})

    def send(self, record: StepRecord) -> None:
        self.channel.exchange({"record": record.to_wire()})

    def stop(self) -> None:
        self.channel.exchange({"stop": True})

    def guard(self, what: str):
        return self._watchdog.guard(what)

    def ended(self, exc: BaseException) -> bool:
        if not isinstance(exc, LockstepLost):
            return False
        self.lost = True
        exit_process(str(exc), delay=1.0)  # let /health say 503 and the error events go out
        return True

    def _stalled(self, reason: str) -> None:
        """From the watchdog thread, while the engine thread is stuck in a collective."""
        self.lost = True
        self._on_stall(f"distributed serving stopped: {reason}")
        exit_process(reason, delay=1.0)


class LeaderEngine(LLMEngine):
    """Rank 0: the ordinary engine with the other ranks as its step peers (:class:`Followers`) and its
    forwards in lockstep with theirs."""

    verifies_restores = False  # a re-check's extra forwards would not be run on the other ranks
    runner_class = LockstepRunner

    def __init__(self, load, config, on_outputs, *, group: Any, timeout: float):
        super().__init__(load, config, on_outputs, peers=Followers(group, timeout, self.fail_in_flight))


# -- ranks 1..N-1 --------------------------------------------------------------------------------

class FollowerCore(EngineCore):
    """A follower's core: the same state as rank 0's, advanced by rank 0's step records."""

    def __init__(self, *args: Any, rank: int):
        super().__init__(*args)
        self.rank = rank
        self._prefilled: list = []  # groups prefilled this step, joined at the step's end

    def sample_first(self, seqs: list[Sequence], logits: mx.array) -> RowArrays:
        # Placeholders: the decode forward feeds the tokens rank 0 sampled (from the step record).
        return RowArrays(len(seqs), tokens=mx.zeros((len(seqs),), dtype=mx.int32))

    def apply(self, record: StepRecord) -> None:
        """Rank 0's record: its events in order (the previous step's end where it came among them),
        then its step up to the read-back."""
        events = record.events
        if record.finished is not None:
            self.replay(events[:record.end_at])
            self.end_step(record.finished)
            events = events[record.end_at:]
        self.replay(events)
        if record.schedule is not None and record.speculative is not None:
            self.follow_speculative_step(record.schedule, record.speculative)
        elif record.schedule is not None:
            self.follow_step(record.schedule, record.tokens)
        self.take_record()  # this core's own record of what it replayed goes nowhere

    def replay(self, events: list[Event]) -> None:
        """Rank 0's decisions, on the same core methods."""
        for event in events:
            if isinstance(event, Added):
                self.add(GenerationRequest(event.request_id, event.prompt_ids, SamplingParams(n=event.n),
                                           checkpoints=tuple(event.checkpoints)))
            elif isinstance(event, Aborted):
                self.abort(event.request_id)
            elif isinstance(event, RowEnded):
                seq = self.scheduler.find_row(event.request_id, event.index)
                if seq is not None:  # the same tokens cached as on rank 0
                    seq.output_ids = event.output_ids or []
                self.finish_row(event.request_id, event.index)
            elif isinstance(event, CacheCleared):
                self.clear_prefix_cache()
            elif isinstance(event, CacheShrunk):
                self.shrink_prefix_cache(event.num_bytes)
            elif isinstance(event, RowsFailed):
                self.drop(*filter(None, (self.scheduler.find_row(*row) for row in event.rows)))

    def same_schedule(self, schedule: Schedule) -> StepPlan:
        """Schedule the step rank 0 scheduled (a mismatch ends the job); returns its plan."""
        self._prefilled = []  # left over only when rank 0's step failed as a whole: never joined there
        plan, mine = self.plan_step()  # no make_room: rank 0 decides evictions (its shrinks are events)
        if mine.schedule != schedule:
            raise LockstepLost(f"rank {self.rank} diverged from rank 0: scheduled {mine.schedule}, rank 0 {schedule}")
        return plan

    def follow_step(self, schedule: Schedule, tokens: list[int]) -> None:
        """Rank 0's step up to its read-back: the same schedule, the decode forward, the prefill."""
        plan = self.same_schedule(schedule)
        if self.runner.batch_seqs:
            self.runner.decode(mx.array(tokens, dtype=mx.int32))
        self._prefilled = self.prefill(plan.prefill)

    def follow_speculative_step(self, schedule: Schedule, spec: SpecStep) -> None:
        """Rank 0's speculative step (``Speculator.step``): drop what the previous verify step rejected,
        retire the rows that finished there, run the verify (or one-token) forward, prefill and join."""
        plan = self.same_schedule(schedule)
        runner = self.runner
        if spec.junk is not None:
            drop_rejected(runner, spec.junk)
        self.retire(self.finished_here(spec.done), unfed=int(runner.rows["junk"] is not None), announce=False)
        if spec.verify is not None:
            inputs = mx.array(spec.verify)
            before = recurrent_states(runner.batch_cache, runner.recurrent)
            runner.verify(inputs)
            runner.rows["junk"] = mx.zeros((inputs.shape[0],), dtype=mx.int32)  # rank 0 sends the real ones
            if runner.recurrent:
                snapshot(runner.rows, before, runner.recurrent, inputs)
        else:
            runner.rows["junk"] = None
            if runner.batch_seqs:
                runner.decode(mx.array(spec.tokens, dtype=mx.int32))
        for seqs, logits, merged in self.prefill(plan.prefill):
            self.join_isolated(seqs, logits, merged)

    def finished_here(self, finished: list[FinishedRow]) -> list[Sequence]:
        """Rank 0's finished rows as this core's sequences, with their tokens and finish reasons."""
        done = []
        for row in finished:
            seq = self.scheduler.find_row(row.request_id, row.index)
            if seq is None:
                raise LockstepLost(f"rank {self.rank}: finished row {row.request_id}/{row.index} is unknown here")
            seq.output_ids = row.output_ids or []
            seq.finish_reason = FinishReason(row.reason)
            self.scheduler.finish(seq)
            done.append(seq)
        return done

    def end_step(self, finished: list[FinishedRow]) -> None:
        """Rank 0's end of a step: cache and drop the finished rows, join the prefilled prompts."""
        self.retire(self.finished_here(finished))
        prefilled, self._prefilled = self._prefilled, []
        for seqs, logits, merged in prefilled:
            self.join(seqs, logits, merged)


class FollowerEngine(LLMEngine):
    """Ranks 1..N-1: apply rank 0's step records and run the same forwards; no outputs of its own."""

    verifies_restores = False
    runner_class = LockstepRunner

    def __init__(self, load, config, *, group: Any, timeout: float):
        # rank 0 runs the drafter and sends its proposals: none here (never asked). An MTP head stays: its
        # entries in every cache keep this rank's prefix cache (and its evictions) the same as rank 0's
        if config.draft_model and config.speculative in ("draft", "auto"):
            config = dataclasses.replace(config, speculative="ngram", draft_model=None)
        super().__init__(load, config, lambda outputs: None)
        self.channel = LockstepChannel(group)
        self._timeout = timeout

    def _make_prefix_cache(self):
        budget = self.channel.exchange()["prefix_cache_bytes"]
        if budget is None:
            return None
        # The leader's budget, not this machine's free memory: evictions must match.
        self.config = dataclasses.replace(self.config, cache_memory_bytes=budget, kv_cache_dir=None)
        return super()._make_prefix_cache()

    def _make_core(self, runner: ModelRunner, prefix: PrefixReuse) -> FollowerCore:
        return FollowerCore(self.loaded, self.config, runner, prefix, self._emit, rank=self.channel.rank)

    def _run(self) -> None:
        try:
            self._setup()
        except BaseException as exc:
            self._load_error = exc
            self._ready.set()
            return
        self._ready.set()
        watchdog = Watchdog(self._timeout, lambda reason: exit_process(reason))
        logger.info("rank %d of %d ready; following rank 0", self.channel.rank, self.channel.size)
        try:
            while True:
                with watchdog.guard("waiting for rank 0"):
                    message = self.channel.exchange()
                if message.get("stop"):
                    break
                with watchdog.guard("an engine step"):
                    self.core.apply(StepRecord.from_wire(message["record"]))
        except BaseException as exc:  # nothing to serve without rank 0: end (and so end the job)
            logger.exception("rank %d cannot follow rank 0", self.channel.rank)
            exit_process(str(exc))
            return
        logger.info("rank %d: rank 0 stopped; exiting", self.channel.rank)
        mx.synchronize()
