"""A sequence: one request's tokens, cache and streaming text state inside the engine."""

from __future__ import annotations

import enum
import time
from typing import Any

from .constraints import grammar_error_text
from .reasoning_budget import ReasoningBudget
from .request import FinishReason, GenerationOutput, GenerationRequest, TokenLogprob
from .stop import StopStringMatcher


class SequenceStatus(enum.Enum):
    WAITING = "waiting"  # queued, no KV computed yet
    PREFILLING = "prefilling"  # prompt being written into its own cache, chunk by chunk
    RUNNING = "running"  # in the decode batch
    FINISHED = "finished"


class Sequence:
    """Engine-side state of one request. Touched only by the engine thread."""

    def __init__(self, request: GenerationRequest, detokenizer: Any, eos_token_ids: set[int], index: int = 0):
        self.request = request
        self.request_id = request.request_id
        self.index = index  # which of the request's n continuations
        self.sampling = request.sampling
        self.prompt_ids: list[int] = list(request.prompt_token_ids)
        self.output_ids: list[int] = []
        self.logprobs: list[TokenLogprob] = []  # aligned with output_ids when requested
        # Where each output token's text starts in detokenizer.text: a token's logprob is sent once
        # all its text is, and never for a token holding (part of) a matched stop string.
        self.token_starts: list[int] = []
        self.emitted_logprobs = 0
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
        self.detokenizer = detokenizer
        self.stop_ids = set(self.sampling.stop_token_ids)
        if not self.sampling.ignore_eos:
            self.stop_ids |= eos_token_ids
        self.stop_matcher = StopStringMatcher(self.sampling.stop)
        self.emitted_chars = 0  # characters of detokenizer.text already sent
        self.emitted_tokens = 0  # tokens already sent
        self.stop_scan_from = 0  # stop strings count only in text made after min_tokens
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

    def append_token(self, token: int, logprob: TokenLogprob | None = None) -> GenerationOutput | None:
        """Add a sampled token; returns the delta to stream (None when nothing new to say)."""
        if self.first_token_time is None:
            self.first_token_time = time.monotonic()
        self.output_ids.append(token)
        self.token_starts.append(len(self.detokenizer.text))
        if logprob is not None:
            self.logprobs.append(logprob)
        stops_apply = len(self.output_ids) > self.sampling.min_tokens
        if token in self.stop_ids and stops_apply:
            return self.finish(FinishReason.STOP, stop_token=True)
        if self.reasoning_budget is not None:
            self.reasoning_budget.on_token(token, self.output_ids)
        error = self._advance_constraint(token)
        if error is not None:
            out = self.finish(FinishReason.ERROR)
            out.error, out.error_status = error, 400  # the request's grammar: its own fault
            return out
        self.detokenizer.add_token(token)
        text = self.detokenizer.text
        if not stops_apply:
            self.stop_scan_from = len(text)
            stop_at = None
        else:
            stop_at = self.stop_matcher.find(text, max(self.emitted_chars, self.stop_scan_from))
        if stop_at is not None:
            return self._final_delta(text[:stop_at], FinishReason.STOP, self._stop_string(text, stop_at))
        if len(self.output_ids) >= self.sampling.max_tokens:
            return self.finish(FinishReason.LENGTH)
        if self.constraint is not None and self.constraint_started and self.constraint.is_stopped():
            return self.finish(FinishReason.STOP)  # the grammar is complete and allows nothing more
        safe = self.stop_matcher.safe_length(text) if stops_apply else len(text)
        if safe <= self.emitted_chars:
            return None
        delta = self._delta(text[self.emitted_chars : safe], shown=safe)
        self.emitted_chars = safe
        return delta

    def finish(self, reason: FinishReason, stop_token: bool = False) -> GenerationOutput:
        """Flush held-back text and produce the final delta (a stop token is counted, not shown)."""
        self.detokenizer.finalize()
        text = self.detokenizer.text
        if reason is not FinishReason.ABORT and len(self.output_ids) > self.sampling.min_tokens:
            stop_at = self.stop_matcher.find(text, max(self.emitted_chars, self.stop_scan_from))
            if stop_at is not None:
                matched = self._stop_string(text, stop_at)
                text, reason = text[:stop_at], FinishReason.STOP
                return self._final_delta(text, reason, matched, hidden_tokens=1 if stop_token else 0)
        return self._final_delta(text, reason, hidden_tokens=1 if stop_token else 0)

    def _stop_string(self, text: str, at: int) -> str | None:
        return next((s for s in self.stop_matcher.stops if text.startswith(s, at)), None)

    def _final_delta(self, text: str, reason: FinishReason, stop_sequence: str | None = None,
                     hidden_tokens: int = 0) -> GenerationOutput:
        self.finish_reason = reason
        # a stop string: the text ends where it began, and so do the logprobs
        delta = self._delta(text[self.emitted_chars :], hidden_tokens, shown=len(text) if stop_sequence else None)
        self.emitted_chars = max(self.emitted_chars, len(text))
        delta.finish_reason = reason
        delta.stop_sequence = stop_sequence
        return delta

    def _token_end(self, i: int) -> int:
        return self.token_starts[i + 1] if i + 1 < len(self.token_starts) else len(self.detokenizer.text)

    def _delta(self, text: str, hidden_tokens: int = 0, shown: int | None = None) -> GenerationOutput:
        """The next delta; ``shown``: how much of the text has been sent once this delta is (None:
        all of it, the end) -- logprobs go with the tokens whose text lies within it."""
        end = len(self.output_ids) - hidden_tokens
        new_tokens = self.output_ids[self.emitted_tokens : end]
        logprobs = None
        if self.sampling.logprobs:
            upto = self.emitted_logprobs
            limit = min(end, len(self.logprobs))
            while upto < limit and (shown is None or self._token_end(upto) <= shown):
                upto += 1
            logprobs = self.logprobs[self.emitted_logprobs : upto]
            self.emitted_logprobs = upto
        self.emitted_tokens = len(self.output_ids)
        return GenerationOutput(
            request_id=self.request_id,
            index=self.index,
            text=text,
            token_ids=new_tokens,
            prompt_tokens=self.num_prompt_tokens,
            completion_tokens=len(self.output_ids),
            cached_tokens=self.num_cached_tokens,
            logprobs=logprobs,
        )
