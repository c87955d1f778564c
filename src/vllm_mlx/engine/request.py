"""The one internal request/response model shared by every API adapter.

API adapters (OpenAI chat/completions, later Anthropic and Responses) translate
their wire formats into a :class:`GenerationRequest` and consume the stream of
:class:`GenerationOutput` deltas the engine produces for it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class FinishReason(str, enum.Enum):
    STOP = "stop"  # EOS token or a stop string / stop token
    LENGTH = "length"  # max_tokens or the context budget reached
    ABORT = "abort"  # client went away or the server is shutting down
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

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

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


@dataclass
class GenerationRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)


@dataclass
class GenerationOutput:
    """One delta of a request's output, as produced by the engine thread."""

    request_id: str
    text: str = ""  # new text since the previous delta (stop strings removed)
    token_ids: list[int] = field(default_factory=list)  # new tokens since the previous delta
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def merged_with(self, later: "GenerationOutput") -> "GenerationOutput":
        """This delta followed by a later one of the same request, as one delta."""
        return GenerationOutput(
            request_id=self.request_id,
            text=self.text + later.text,
            token_ids=self.token_ids + later.token_ids,
            finish_reason=later.finish_reason,
            prompt_tokens=later.prompt_tokens,
            completion_tokens=later.completion_tokens,
            error=later.error,
        )
