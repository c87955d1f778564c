"""Decides each engine step: which rows decode, which prompts advance their prefill."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from .sequence import Sequence, SequenceStatus

# A step always moves prefill forward by at least this many tokens, so a full
# decode batch cannot starve waiting prompts.
MIN_PREFILL_TOKENS_PER_STEP = 32


@dataclass
class StepPlan:
    """One step's prompt work; every running row (the decode batch) also advances by one token."""

    prefill: list[tuple[Sequence, int]] = field(default_factory=list)  # (sequence, tokens this step)


class Scheduler:
    """FIFO admission bounded by ``max_num_seqs``; chunked prefill bounded by a token budget.

    ``max_num_batched_tokens`` bounds one step's work: every running row costs
    one token, and the rest of the budget goes to prompt chunks, oldest first.
    A long prompt is therefore prefilled over several steps while the running
    rows keep decoding between its chunks.
    """

    def __init__(
        self,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        deterministic: bool = False,
        on_admit: Callable[[Sequence], None] | None = None,
        can_admit: Callable[[Sequence], bool] | None = None,
    ):
        self.max_num_seqs = max_num_seqs
        self.on_admit = on_admit  # e.g. the prefix-cache lookup, run as a sequence leaves the queue
        # whether a queued sequence may start now (e.g. its LoRA adapter has a slot); one that may not
        # keeps its place in the queue while those behind it go ahead
        self.can_admit = can_admit
        self.passes = 0  # schedule() calls so far (a can_admit may tell one pass from the next)
        self.max_num_batched_tokens = max_num_batched_tokens
        # Deterministic mode: prompt chunks have a fixed size whatever else runs, so the
        # same prompt is always split (and computed) the same way.
        self.deterministic = deterministic
        self.waiting: deque[Sequence] = deque()
        self.prefilling: list[Sequence] = []
        self.running: list[Sequence] = []

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.prefilling or self.running)

    def all_sequences(self) -> list[Sequence]:
        return [*self.running, *self.prefilling, *self.waiting]

    def find_all(self, request_id: str) -> list[Sequence]:
        """Every sequence of a request (n > 1 gives several)."""
        return [seq for seq in self.all_sequences() if seq.request_id == request_id]

    def find_row(self, request_id: str, index: int) -> Sequence | None:
        """One continuation of a request, if it is still scheduled."""
        return next((s for s in self.all_sequences() if s.request_id == request_id and s.index == index), None)

    # -- every status change --------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        """Queue a new sequence for admission."""
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def admit(self, seq: Sequence) -> None:
        """Start prefilling a sequence that leaves the queue (``on_admit`` may restore a cached prefix)."""
        self.waiting.remove(seq)
        seq.status = SequenceStatus.PREFILLING
        if self.on_admit is not None:
            self.on_admit(seq)
        self.prefilling.append(seq)

    def fork(self, parent: Sequence, children: list[Sequence], rng_keys: list) -> None:
        """n > 1: ``children`` continue ``parent``'s prefilled prompt, each with its own PRNG key;
        they become prefilling rows beside it, to be marked running with it."""
        for child, key in zip(children, rng_keys):
            child.continue_prefill_of(parent, key)
            child.status = SequenceStatus.PREFILLING
            self.prefilling.append(child)

    def mark_running(self, seq: Sequence) -> None:
        """A prefilled sequence joins the decode batch."""
        self.prefilling.remove(seq)
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)

    def finish(self, seq: Sequence) -> None:
        """The sequence produced its final delta: FINISHED, and no longer scheduled."""
        self.remove(seq)
        seq.status = SequenceStatus.FINISHED

    def remove(self, seq: Sequence) -> None:
        """Take a sequence out of the queue or the prefilling or running rows (if there)."""
        for group in (self.running, self.prefilling):
            if seq in group:
                group.remove(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)

    def remove_request(self, request_id: str) -> None:
        for seq in self.find_all(request_id):
            self.remove(seq)

    # -- the step ---------------------------------------------------------------------
    def schedule(self) -> StepPlan:
        plan = StepPlan()
        budget = max(self.max_num_batched_tokens - len(self.running), MIN_PREFILL_TOKENS_PER_STEP)
        self.passes += 1
        for seq in list(self.waiting):
            if len(self.running) + len(self.prefilling) >= self.max_num_seqs:
                break
            if seq.status is SequenceStatus.WAITING and (self.can_admit is None or self.can_admit(seq)):
                self.admit(seq)
        for seq in self.prefilling:
            if budget <= 0:
                break
            if self.deterministic:
                n = min(self.max_num_batched_tokens, seq.num_remaining_prompt)
                if n > budget and plan.prefill:
                    break
            else:
                n = min(budget, seq.num_remaining_prompt)
            plan.prefill.append((seq, n))
            budget -= n
        return plan
