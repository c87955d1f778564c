"""The engine across several ranks: rank 0 leads, the others follow step by step.

Every rank holds one shard of the model and the same engine state (scheduler,
decode batch, prefix cache), so each forward pass runs on all ranks at once
with the same shapes, and the collectives inside the sharded model line up.

Rank 0 (:class:`LeaderEngine`) is the ordinary engine plus a record of every
decision only it can make -- requests that arrived, aborts, cache clears and
evictions, which rows finished (with their tokens) or failed -- and sends the
record before each step together with a digest of the step it scheduled. The
other ranks (:class:`FollowerEngine`) replay the record on the same engine
code, schedule the same step (a digest mismatch ends the job), and run the
same forwards. Sampling happens once, on rank 0: the step message carries the
tokens rank 0 sampled, which every rank feeds to the decode forward.

Every forward is evaluated at once on every rank (:class:`LockstepRunner`),
so the order of collectives is the order of forwards, whatever each rank does
lazily around them. While idle, rank 0 sends a heartbeat every ``idle_wait``
seconds, so a follower's watchdog tells an idle leader from a lost one.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import mlx.core as mx

from .engine import LLMEngine
from .lockstep import LockstepChannel, LockstepLost, Watchdog, exit_process
from .model_runner import ModelRunner
from .request import FinishReason, GenerationRequest, SamplingParams
from .rows import RowArrays
from .scheduler import StepPlan
from .sequence import Sequence

logger = logging.getLogger(__name__)

HEARTBEAT_S = 1.0


class LockstepRunner(ModelRunner):
    """A runner whose every forward completes before the next one starts, on every rank."""

    def __init__(self, model: Any, deterministic: bool, channel: LockstepChannel):
        super().__init__(model, deterministic)
        self.channel = channel

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
        _eval(logits)
        return logits


def _eval(*arrays: Any) -> None:
    try:
        mx.eval(*arrays)
    except Exception as exc:  # a failed collective leaves the ranks out of step for good
        raise LockstepLost(f"a forward pass failed across ranks: {exc}") from exc


def plan_digest(engine: LLMEngine, plan: StepPlan) -> list:
    """What both sides must agree on before running a step."""
    sched = engine.scheduler
    chunks = [[s.request_id, s.index, n, s.num_computed, s.num_cached_tokens] for s, n in plan.prefill]
    return [chunks, len(sched.running), len(sched.prefilling), len(sched.waiting), len(engine.runner.batch_seqs)]


class LeaderEngine(LLMEngine):
    """Rank 0: the ordinary engine, recording its decisions for the other ranks."""

    verifies_restores = False  # a re-check's extra forwards would not be run on the other ranks

    idle_wait = HEARTBEAT_S

    def __init__(self, load, config, on_outputs, *, group: Any, timeout: float):
        super().__init__(load, config, on_outputs)
        self.channel = LockstepChannel(group)
        self._records: list[list] = []
        self._watchdog = Watchdog(timeout, self._stalled)
        self._lost = False

    # -- the record ---------------------------------------------------------------
    def _send(self, **message: Any) -> None:
        records, self._records = self._records, []
        self.channel.exchange({"records": records, **message})

    def _add(self, request: GenerationRequest) -> None:
        sampling = request.sampling
        self._records.append(["add", request.request_id, list(request.prompt_token_ids), sampling.n,
                              list(request.checkpoints)])
        super()._add(request)

    def _abort(self, request_id: str) -> None:
        self._records.append(["abort", request_id])
        super()._abort(request_id)

    def _clear_prefix_cache(self) -> None:
        self._records.append(["clear"])
        super()._clear_prefix_cache()

    def _make_room(self) -> None:
        if self.prefix_cache is not None and self.prefix_cache.stats.bytes:
            excess = mx.get_active_memory() - self._memory_limit
            if excess > 0:
                self._records.append(["shrink", int(excess)])
                self.prefix_cache.shrink(excess)

    def _fail(self, seqs: list[Sequence], exc: BaseException) -> None:
        self._records.append(["fail", [[s.request_id, s.index] for s in seqs]])
        super()._fail(seqs, exc)

    def _remember_finished(self, done: list[Sequence]) -> None:
        """Called once per step between reading tokens back and updating the batch: the step's end."""
        keep = self.prefix_cache is not None
        self._records.append(["end", [
            [s.request_id, s.index, s.finish_reason.value, s.output_ids if keep else None] for s in done
        ]])
        super()._remember_finished(done)

    # -- the exchanges --------------------------------------------------------------
    def _make_prefix_cache(self):
        if getattr(self.loaded, "parallelism", "tensor") == "pipeline":
            # Pipeline stages hold different layers, so their cached blocks differ in size and
            # evictions could not be kept identical: no prefix cache in pipeline mode.
            logger.warning("prefix cache off: not supported with pipeline parallelism")
            cache = None
        else:
            cache = super()._make_prefix_cache()
        self.channel.exchange({"prefix_cache_bytes": cache.stats.budget_bytes if cache is not None else None})
        return cache

    def _make_runner(self) -> ModelRunner:
        return LockstepRunner(self.loaded.model, self.config.deterministic, self.channel)

    def _step_safely(self) -> None:
        with self._watchdog.guard("an engine step"):
            super()._step_safely()

    def _step(self, plan: StepPlan):
        tokens = self.runner.rows["tokens"].tolist() if self.runner.batch_seqs else []
        self._send(step=plan_digest(self, plan), tokens=tokens)
        return super()._step(plan)

    def _on_idle(self) -> None:
        with self._watchdog.guard("a heartbeat"):
            self._send(step=None)

    def _drain_commands(self, block: bool) -> bool:
        going = super()._drain_commands(block)
        if not going:
            with self._watchdog.guard("the stop message"):
                self._send(stop=True)
        return going

    # -- losing a rank ----------------------------------------------------------------
    def _run(self) -> None:
        try:
            super()._run()  # on LockstepLost it fails every request, reports "failed", re-raises
        except LockstepLost as exc:
            self._lost = True
            exit_process(str(exc), delay=1.0)  # let /health say 503 and the error events go out

    def _stalled(self, reason: str) -> None:
        """From the watchdog thread, while the engine thread is stuck in a collective."""
        self._lost = True
        try:
            seqs = self.scheduler.all_sequences()
            outputs = []
            for seq in seqs:
                out = seq.finish(FinishReason.ERROR)
                out.error = f"distributed serving stopped: {reason}"
                outputs.append(out)
            self._emit(outputs)
            self._publish_stats("failed")
        except Exception:  # best effort: the process ends either way
            logger.exception("could not fail the requests in flight")
        exit_process(reason, delay=1.0)

    @property
    def alive(self) -> bool:
        return super().alive and not self._lost


class FollowerEngine(LLMEngine):
    """Ranks 1..N-1: replay rank 0's record and run the same forwards; no outputs of its own."""

    verifies_restores = False

    def __init__(self, load, config, *, group: Any, timeout: float):
        super().__init__(load, config, lambda outputs: None)
        self.channel = LockstepChannel(group)
        self._timeout = timeout
        self._prefilled: list = []  # groups prefilled this step, joined at the step's end

    def _make_prefix_cache(self):
        budget = self.channel.exchange()["prefix_cache_bytes"]
        if budget is None:
            return None
        # The leader's budget, not this machine's free memory: evictions must match.
        self.config = dataclasses.replace(self.config, cache_memory_bytes=budget, kv_cache_dir=None)
        return super()._make_prefix_cache()

    def _make_runner(self) -> ModelRunner:
        return LockstepRunner(self.loaded.model, self.config.deterministic, self.channel)

    def _make_room(self) -> None:  # rank 0 decides evictions ("shrink" records)
        pass

    def _sample_first(self, seqs: list[Sequence], logits: mx.array) -> RowArrays:
        # Placeholders: the decode forward feeds the tokens rank 0 sampled (from the step message).
        return RowArrays(len(seqs), tokens=mx.zeros((len(seqs),), dtype=mx.int32))

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
                    for record in message["records"]:
                        self._apply(record)
                    if message.get("step") is not None:
                        self._follow_step(message["step"], message["tokens"])
        except BaseException as exc:  # nothing to serve without rank 0: end (and so end the job)
            logger.exception("rank %d cannot follow rank 0", self.channel.rank)
            exit_process(str(exc))
            return
        logger.info("rank %d: rank 0 stopped; exiting", self.channel.rank)
        mx.synchronize()

    def _apply(self, record: list) -> None:
        kind, *args = record
        if kind == "add":
            request_id, prompt, n, checkpoints = args
            self._add(GenerationRequest(request_id, prompt, SamplingParams(n=n), checkpoints=tuple(checkpoints)))
        elif kind == "abort":
            self._abort(args[0])
        elif kind == "clear":
            self._clear_prefix_cache()
        elif kind == "shrink":
            self.prefix_cache.shrink(args[0])
        elif kind == "fail":
            self._drop(*self._find(args[0]))
        elif kind == "end":
            self._end_step(args[0])

    def _find(self, keys: list) -> list[Sequence]:
        by_key = {(s.request_id, s.index): s for s in self.scheduler.all_sequences()}
        return [by_key[k] for k in map(tuple, keys) if k in by_key]

    def _end_step(self, finished: list) -> None:
        """Rank 0's end of a step: cache and drop the finished rows, join the prefilled prompts."""
        done = []
        for request_id, index, reason, output_ids in finished:
            seq = next(iter(self._find([[request_id, index]])), None)
            if seq is None:
                raise LockstepLost(f"rank {self.channel.rank}: finished row {request_id}/{index} is unknown here")
            seq.output_ids = output_ids or []
            seq.finish_reason = FinishReason(reason)
            self.scheduler.finish(seq)
            done.append(seq)
        self._remember_finished(done)
        self._drop(*done)
        prefilled, self._prefilled = self._prefilled, []
        for seqs, logits, merged in prefilled:
            self._join(seqs, logits, merged)

    def _follow_step(self, digest: list, tokens: list[int]) -> None:
        self._prefilled = []  # left over only when rank 0's step failed as a whole: never joined there
        plan = self.scheduler.schedule()
        mine = plan_digest(self, plan)
        if mine != digest:
            raise LockstepLost(f"rank {self.channel.rank} diverged from rank 0: scheduled {mine}, rank 0 {digest}")
        if self.runner.batch_seqs:
            self.runner.decode(mx.array(tokens, dtype=mx.int32))
        self._prefilled = self._prefill(plan.prefill)
