"""A sequence: one continuation's tokens, cache and stop state inside the engine (its text is made where
its deltas are consumed: :mod:`.text_stream`)."""

from __future__ import annotations

import enum
import time
from typing import Any

from .constraints import grammar_error_text
from .reasoning_budget import ReasoningBudget
from .request import FinishReason, GenerationOutput, GenerationRequest, TokenLogprob


class SequenceStatus(enum.Enum):
    WAITING = "waiting"  # queued, no KV computed yet
    PREFILLING = "prefilling"  # prompt being written into its own cache, chunk by chunk
    RUNNING = "running"  # in the decode batch
    FINISHED = "finished"


class Sequence:
    """Engine-side state of one request. Touched only by the engine thread."""

    def __init__(self, request: GenerationRequest, eos_token_ids: set[int], index: int = 0):
        self.request = request
        self.request_id = request.request_id
        self.index = index  # which of the request's n continuations
        self.sampling = request.sampling
        self.prompt_ids: list[int] = list(request.prompt_token_ids)
        self.output_ids: list[int] = []
        self.logprobs: list[TokenLogprob] = []  # of the tokens not yet sent, when requested
        self.constraint = request.constraint  # llguidance matcher, or None
        self.constraint_after = list(request.constraint_after)
        self.constraint_started = not self.constraint_after
        self.reasoning_budget: ReasoningBudget | None = None  # max_thinking_tokens
        if self.sampling.max_thinking_tokens is not None and request.reasoning_markers:
            self.reasoning_budget = ReasoningBudget(self.sampling.max_thinking_tokens, request.reasoning_markers,
                                                    request.starts_in_reasoning)
        self.status = SequenceStatus.WAITING  # changed by the scheduler only
        self.finish_reason: FinishReason | None = None
        # Prompt tokens whose keys/values are already in this sequence's cache.
        self.num_computed = 0
        self.num_cached_tokens = 0  # prompt tokens reused from the prefix cache
        # Per-layer cache of this sequence alone, used while prefilling; None once merged.
        self.cache: list[Any] | None = None
        self.rng_key: Any = None  # mx.array PRNG key, set when the engine admits the sequence
        self.stop_ids = set(self.sampling.stop_token_ids)
        if not self.sampling.ignore_eos:
            self.stop_ids |= eos_token_ids
        self.emitted_tokens = 0  # tokens already sent
        self.arrival_time = time.monotonic()
        self.first_token_time: float | None = None

    @property
    def active_constraint(self) -> Any:
        """The matcher that must mask this row's next token, if any."""
        if self.constraint is not None and self.constraint_started and not self.finished:
            return self.constraint
        return None

    @property
    def steers_tokens(self) -> bool:
        """Whether this row's next token may be masked (a grammar, or a reasoning budget)."""
        return self.constraint is not None or self.reasoning_budget is not None

    @property
    def next_token_rule(self) -> Any:
        """What decides this row's next token: a forced token id, a grammar matcher, or None."""
        forced = self.reasoning_budget.next_forced if self.reasoning_budget is not None else None
        return forced if forced is not None else self.active_constraint

    @property
    def finished(self) -> bool:
        """Whether the final delta was produced (the scheduler then marks the sequence FINISHED)."""
        return self.finish_reason is not None

    def continue_prefill_of(self, parent: "Sequence", rng_key: Any) -> None:
        """Start as another continuation of ``parent`` (n > 1): its prefilled prompt and cache,
        a PRNG key and a grammar state of its own."""
        self.num_computed, self.cache, self.rng_key = parent.num_computed, parent.cache, rng_key
        if parent.constraint is not None:
            self.constraint = parent.constraint.deep_copy()

    def _advance_constraint(self, token: int) -> str | None:
        """Feed the grammar; returns an error message if the token broke it."""
        if self.constraint is None:
            return None
        if not self.constraint_started:
            n = len(self.constraint_after)
            self.constraint_started = self.output_ids[-n:] == self.constraint_after
            return None
        if not self.constraint.consume_token(token):
            return grammar_error_text(self.constraint.get_error()) or "token not allowed"
        return None

    @property
    def prefix_key(self) -> list[int]:
        """The prompt as the prefix cache keys it: the token ids, with media placeholders replaced by
        ids derived from the media's content hash (placeholders alone are the same for every image)."""
        mm = self.request.multimodal
        return self.prompt_ids if mm is None else mm.key_ids

    @property
    def rope_delta(self) -> int:
        """Position offset of this row's decode tokens (mrope models, after media in the prompt)."""
        mm = self.request.multimodal
        return 0 if mm is None else mm.rope_delta

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_remaining_prompt(self) -> int:
        return len(self.prompt_ids) - self.num_computed

    @property
    def last_token(self) -> int:
        return self.output_ids[-1]

    def append_token(self, token: int, logprob: TokenLogprob | None = None) -> GenerationOutput:
        """Add a sampled token; returns its delta (the final one when the token ends the sequence)."""
        if self.first_token_time is None:
            self.first_token_time = time.monotonic()
        self.output_ids.append(token)
        if logprob is not None:
            self.logprobs.append(logprob)
        if token in self.stop_ids and len(self.output_ids) > self.sampling.min_tokens:
            return self.finish(FinishReason.STOP, stop_token=True)
        if self.reasoning_budget is not None:
            self.reasoning_budget.on_token(token, self.output_ids)
        error = self._advance_constraint(token)
        if error is not None:
            out = self.finish(FinishReason.ERROR)
            out.error, out.error_status = error, 400  # the request's grammar: its own fault
            return out
        if len(self.output_ids) >= self.sampling.max_tokens:
            return self.finish(FinishReason.LENGTH)
        if self.constraint is not None and self.constraint_started and self.constraint.is_stopped():
            return self.finish(FinishReason.STOP)  # the grammar is complete and allows nothing more
        return self._delta()

    def finish(self, reason: FinishReason, stop_token: bool = False) -> GenerationOutput:
        """The final delta: the tokens not yet sent (a stop token is counted, not shown)."""
        self.finish_reason = reason
        delta = self._delta(hidden_tokens=1 if stop_token else 0)
        delta.finish_reason = reason
        return delta

    def _delta(self, hidden_tokens: int = 0) -> GenerationOutput:
        end = len(self.output_ids) - hidden_tokens
        new_tokens = self.output_ids[self.emitted_tokens : end]
        logprobs = None
        if self.sampling.logprobs:
            logprobs, self.logprobs = self.logprobs[: len(new_tokens)], []
        self.emitted_tokens = len(self.output_ids)
        return GenerationOutput(
            request_id=self.request_id,
            index=self.index,
            token_ids=new_tokens,
            prompt_tokens=self.num_prompt_tokens,
            completion_tokens=len(self.output_ids),
            cached_tokens=self.num_cached_tokens,
            logprobs=logprobs,
        )
