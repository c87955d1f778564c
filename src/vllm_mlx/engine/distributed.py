"""The engine across several ranks: rank 0 leads, the others follow step by step.

Every rank holds one shard of the model and the same engine state (scheduler,
decode batch, prefix cache), so each forward pass runs on all ranks at once
with the same shapes, and the collectives inside the sharded model line up.

Rank 0 (:class:`LeaderEngine`) is the ordinary engine whose core
(:class:`LeaderCore`) records every decision only it can make -- requests that
arrived, aborts, cache clears and evictions, which rows finished (with their
tokens) or failed -- and sends the record before each step together with a
digest of the step it scheduled. The other ranks (:class:`FollowerEngine`)
replay the record on the same core methods (:class:`FollowerCore`), schedule
the same step (a digest mismatch ends the job), and run the same forwards. Sampling happens once, on rank 0: the step message carries the
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

from .core import EngineCore
from .engine import LLMEngine
from .lockstep import LockstepChannel, LockstepLost, Watchdog, exit_process
from .model_runner import ModelRunner
from .prefix_reuse import PrefixReuse
from .request import FinishReason, GenerationRequest, SamplingParams
from .rows import RowArrays
from .scheduler import StepPlan
from .sequence import Sequence

logger = logging.getLogger(__name__)

HEARTBEAT_S = 1.0


class LockstepRunner(ModelRunner):
    """A runner whose every forward completes before the next one starts, on every rank."""

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


def plan_digest(core: EngineCore, plan: StepPlan) -> list:
    """What both sides must agree on before running a step."""
    sched = core.scheduler
    chunks = [[s.request_id, s.index, n, s.num_computed, s.num_cached_tokens] for s, n in plan.prefill]
    return [chunks, len(sched.running), len(sched.prefilling), len(sched.waiting), len(core.runner.batch_seqs)]


# -- rank 0 ---------------------------------------------------------------------------------------

class LeaderCore(EngineCore):
    """Rank 0's core: records every decision only rank 0 can make, and sends the record before each step.

    Each recorded method is the one a follower replays (:meth:`FollowerEngine._apply`)."""

    def __init__(self, *args: Any, channel: LockstepChannel):
        super().__init__(*args)
        self.channel = channel
        self.records: list[list] = []

    def send(self, **message: Any) -> None:
        records, self.records = self.records, []
        self.channel.exchange({"records": records, **message})

    def add(self, request: GenerationRequest) -> None:
        sampling = request.sampling
        self.records.append(["add", request.request_id, list(request.prompt_token_ids), sampling.n,
                             list(request.checkpoints)])
        super().add(request)

    def abort(self, request_id: str) -> None:
        self.records.append(["abort", request_id])
        super().abort(request_id)

    def finish_row(self, request_id: str, index: int) -> None:
        seq = self.scheduler.find_row(request_id, index)
        if seq is not None:  # followers cache the same tokens
            keep = self.prefix.cache is not None
            self.records.append(["finish", request_id, index, seq.output_ids if keep else None])
        super().finish_row(request_id, index)

    def clear_prefix_cache(self) -> None:
        self.records.append(["clear"])
        super().clear_prefix_cache()

    def shrink_prefix_cache(self, num_bytes: int) -> None:
        self.records.append(["shrink", int(num_bytes)])
        super().shrink_prefix_cache(num_bytes)

    def fail(self, seqs: list[Sequence], exc: BaseException) -> None:
        self.records.append(["fail", [[s.request_id, s.index] for s in seqs]])
        super().fail(seqs, exc)

    def run(self, plan: StepPlan):
        tokens = self.runner.rows["tokens"].tolist() if self.runner.batch_seqs else []
        self.send(step=plan_digest(self, plan), tokens=tokens)
        return super().run(plan)

    def retire(self, done: list[Sequence]) -> None:
        """Called once per step between reading tokens back and joining prefilled rows: the step's end."""
        keep = self.prefix.cache is not None
        self.records.append(["end", [
            [s.request_id, s.index, s.finish_reason.value, s.output_ids if keep else None] for s in done
        ]])
        super().retire(done)


class LeaderEngine(LLMEngine):
    """Rank 0: the ordinary engine, recording its decisions for the other ranks."""

    verifies_restores = False  # a re-check's extra forwards would not be run on the other ranks
    runner_class = LockstepRunner
    idle_wait = HEARTBEAT_S

    def __init__(self, load, config, on_outputs, *, group: Any, timeout: float):
        super().__init__(load, config, on_outputs)
        self.channel = LockstepChannel(group)
        self._watchdog = Watchdog(timeout, self._stalled)
        self._lost = False

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

    def _make_core(self, runner: ModelRunner, prefix: PrefixReuse) -> LeaderCore:
        return LeaderCore(self.loaded, self.config, runner, prefix, self._emit, channel=self.channel)

    # -- the exchanges outside steps ------------------------------------------------------
    def _step_safely(self) -> None:
        with self._watchdog.guard("an engine step"):
            super()._step_safely()

    def _on_idle(self) -> None:
        with self._watchdog.guard("a heartbeat"):
            self.core.send(step=None)

    def _drain_commands(self, block: bool) -> bool:
        going = super()._drain_commands(block)
        if not going:
            with self._watchdog.guard("the stop message"):
                self.core.send(stop=True)
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
            seqs = self.core.scheduler.all_sequences()
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


# -- ranks 1..N-1 --------------------------------------------------------------------------------

class FollowerCore(EngineCore):
    """A follower's core: the same state as rank 0's, advanced by rank 0's record and tokens."""

    def __init__(self, *args: Any, rank: int):
        super().__init__(*args)
        self.rank = rank
        self._prefilled: list = []  # groups prefilled this step, joined at the step's end

    def sample_first(self, seqs: list[Sequence], logits: mx.array) -> RowArrays:
        # Placeholders: the decode forward feeds the tokens rank 0 sampled (from the step message).
        return RowArrays(len(seqs), tokens=mx.zeros((len(seqs),), dtype=mx.int32))

    def find(self, keys: list) -> list[Sequence]:
        by_key = {(s.request_id, s.index): s for s in self.scheduler.all_sequences()}
        return [by_key[k] for k in map(tuple, keys) if k in by_key]

    def follow_step(self, digest: list, tokens: list[int]) -> None:
        """Rank 0's step up to its read-back: the same schedule, the decode forward, the prefill."""
        self._prefilled = []  # left over only when rank 0's step failed as a whole: never joined there
        plan = self.scheduler.schedule()
        mine = plan_digest(self, plan)
        if mine != digest:
            raise LockstepLost(f"rank {self.rank} diverged from rank 0: scheduled {mine}, rank 0 {digest}")
        if self.runner.batch_seqs:
            self.runner.decode(mx.array(tokens, dtype=mx.int32))
        self._prefilled = self.prefill(plan.prefill)

    def end_step(self, finished: list) -> None:
        """Rank 0's end of a step: cache and drop the finished rows, join the prefilled prompts."""
        done = []
        for request_id, index, reason, output_ids in finished:
            seq = next(iter(self.find([[request_id, index]])), None)
            if seq is None:
                raise LockstepLost(f"rank {self.rank}: finished row {request_id}/{index} is unknown here")
            seq.output_ids = output_ids or []
            seq.finish_reason = FinishReason(reason)
            self.scheduler.finish(seq)
            done.append(seq)
        self.retire(done)
        prefilled, self._prefilled = self._prefilled, []
        for seqs, logits, merged in prefilled:
            self.join(seqs, logits, merged)


class FollowerEngine(LLMEngine):
    """Ranks 1..N-1: replay rank 0's record and run the same forwards; no outputs of its own."""

    verifies_restores = False
    runner_class = LockstepRunner

    def __init__(self, load, config, *, group: Any, timeout: float):
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
                    for record in message["records"]:
                        self._apply(record)
                    if message.get("step") is not None:
                        self.core.follow_step(message["step"], message["tokens"])
        except BaseException as exc:  # nothing to serve without rank 0: end (and so end the job)
            logger.exception("rank %d cannot follow rank 0", self.channel.rank)
            exit_process(str(exc))
            return
        logger.info("rank %d: rank 0 stopped; exiting", self.channel.rank)
        mx.synchronize()

    def _apply(self, record: list) -> None:
        """Replay one of rank 0's decisions (recorded by :class:`LeaderCore`)."""
        kind, *args = record
        core = self.core
        if kind == "add":
            request_id, prompt, n, checkpoints = args
            core.add(GenerationRequest(request_id, prompt, SamplingParams(n=n), checkpoints=tuple(checkpoints)))
        elif kind == "abort":
            core.abort(args[0])
        elif kind == "finish":
            request_id, index, output_ids = args
            seq = core.scheduler.find_row(request_id, index)
            if seq is not None:
                seq.output_ids = output_ids or []
            core.finish_row(request_id, index)
        elif kind == "clear":
            core.clear_prefix_cache()
        elif kind == "shrink":
            core.shrink_prefix_cache(args[0])
        elif kind == "fail":
            core.drop(*core.find(args[0]))
        elif kind == "end":
            core.end_step(args[0])
