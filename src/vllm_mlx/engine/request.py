"""The one internal request/response model shared by every API adapter.

API adapters (OpenAI chat/completions, later Anthropic and Responses) translate
their wire formats into a :class:`GenerationRequest` and consume the stream of
:class:`GenerationOutput` deltas the engine produces for it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


MAX_TOP_LOGPROBS = 20


class FinishReason(str, enum.Enum):
    STOP = "stop"  # EOS token or a stop string / stop token
    LENGTH = "length"  # max_tokens or the context budget reached
    ABORT = "abort"  # client went away or the server is shutting down
    # Ended by an operator's cancel (POST /v1/requests/{id}/cancel): the engine ends it as ABORT, and the
    # serving layer's stream (serving/running.py) hands it on as CANCELLED, so the API ends its answer.
    CANCELLED = "cancelled"
    ERROR = "error"  # the request failed inside the engine


@dataclass(frozen=True)
class SamplingParams:
    """Per-request decode controls; every field applies per row inside a batch."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = disabled
    min_p: float = 0.0  # 0 = disabled
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    min_tokens: int = 0  # EOS, stop tokens and stop strings are not honoured before this many tokens
    # OpenAI penalties: subtracted per token, over generated tokens only.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # Multiplicative penalty over prompt + generated tokens (1.0 = off).
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)
    logprobs: bool = False  # report the sampled token's logprob
    top_logprobs: int = 0  # and this many most likely alternatives
    n: int = 1  # continuations of one prompt (one prefill)
    # Reasoning budget: after this many tokens inside reasoning, the engine writes the
    # end-of-reasoning marker itself so the model goes on to answer (None = no budget).
    max_thinking_tokens: int | None = None
    speculative: bool = True  # may speculate where the engine does (False: never this request's rows)
    adapter: str | None = None  # the served LoRA adapter (--lora NAME=PATH) its rows decode with; None: the base

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def uses_penalties(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)

    def validate(self) -> None:
        """Raise ValueError naming the first out-of-range field."""
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if not 0.0 <= self.temperature <= 100.0:
            raise ValueError("temperature must be between 0 and 100")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0 (0 disables it)")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError("min_p must be in [0, 1]")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty")
        if not -2.0 <= self.presence_penalty <= 2.0 or not -2.0 <= self.frequency_penalty <= 2.0:
            raise ValueError("presence_penalty and frequency_penalty must be in [-2, 2]")
        if not 0.0 < self.repetition_penalty <= 10.0:
            raise ValueError("repetition_penalty must be in (0, 10]")
        if self.min_tokens < 0 or self.min_tokens > self.max_tokens:
            raise ValueError("min_tokens must be between 0 and max_tokens")
        if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}]")
        if self.n < 1:
            raise ValueError("n must be at least 1")
        if any(not -100.0 <= b <= 100.0 for _, b in self.logit_bias):
            raise ValueError("logit_bias values must be in [-100, 100]")


@dataclass
class GenerationRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    # Constrained decoding: an llguidance LLMatcher the output must satisfy, and the token ids
    # after which it starts (e.g. the end-of-reasoning tag of a thinking model; empty = at once).
    constraint: Any = None
    constraint_after: tuple[int, ...] = ()
    keep_special_tokens: bool = False  # detokenize special tokens too (parsers whose markers are special)
    # Reasoning markers as token ids (start, end), for max_thinking_tokens; and whether the prompt
    # already opened reasoning.
    reasoning_markers: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    starts_in_reasoning: bool = False
    # Images/video of a vision request (multimodal.MultimodalPrompt: numpy arrays; the engine makes the
    # MLX arrays on its own thread), or None for a text request.
    multimodal: Any = None
    # Prompt positions where conversations branch (ends of the system prompt and of earlier turns,
    # from the chat template): models with recurrent or sliding-window layers checkpoint there.
    checkpoints: tuple[int, ...] = ()


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's logprob and the most likely alternatives at its position."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token id, logprob), most likely first


@dataclass
class GenerationOutput:
    """One delta of a request's output, as produced by the engine thread."""

    request_id: str
    index: int = 0  # which of the request's n continuations
    text: str = ""  # new text since the previous delta (stop strings removed)
    token_ids: list[int] = field(default_factory=list)  # new tokens since the previous delta
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose keys/values came from the prefix cache
    error: str | None = None
    error_status: int = 500  # of a failure (ERROR): 400 when the request's own grammar failed while decoding
    logprobs: list[TokenLogprob] | None = None  # one per new token, when requested
    stop_sequence: str | None = None  # the stop string that ended generation (finish_reason STOP)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def merged_with(self, later: "GenerationOutput") -> "GenerationOutput":
        """This delta followed by a later one of the same request, as one delta."""
        logprobs = None if self.logprobs is None else self.logprobs + (later.logprobs or [])
        return GenerationOutput(
            request_id=self.request_id,
            index=self.index,
            text=self.text + later.text,
            token_ids=self.token_ids + later.token_ids,
            finish_reason=later.finish_reason,
            prompt_tokens=later.prompt_tokens,
            completion_tokens=later.completion_tokens,
            cached_tokens=later.cached_tokens,
            error=later.error,
            error_status=later.error_status,
            logprobs=logprobs,
            stop_sequence=later.stop_sequence,
        )
