"""OpenAI wire formats (requests validated by pydantic; responses as models)."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, Field

from ..serving.requests import ChatRequest, RequestModel, SamplingRequest

OpenAIRequest = RequestModel


class StreamOptions(BaseModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class StreamingFields(BaseModel):
    """What OpenAI's generation endpoints add on the wire: streaming and the end-user id."""

    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None


class SamplingFields(SamplingRequest, StreamingFields):
    """Decode controls of /v1/completions and /v1/chat/completions, with the streaming fields."""


class ChatCompletionRequest(ChatRequest, StreamingFields):
    mcp: bool | None = None  # run the server-side MCP tool loop (default: --mcp-auto)


class CompletionRequest(SamplingFields):
    model: str = "default"
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1)


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "vllm-mlx"
    root: str | None = None
    parent: str | None = None  # a LoRA adapter's base model (its id is BASE:NAME)
    max_model_len: int | None = None
    kind: Literal["chat", "embedding", "transcription", "speech"] = "chat"  # what the model serves
    loaded: bool = True  # embedding and audio models load on their first request
    # Anthropic's model object (client.models.list() in the anthropic SDK); OpenAI clients ignore these
    type: Literal["model"] = "model"
    display_name: str | None = None
    created_at: str | None = None

    def model_post_init(self, _context: Any) -> None:
        self.display_name = self.display_name or self.id
        if self.created_at is None:
            self.created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created))


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
    has_more: bool = False  # Anthropic's page fields
    first_id: str | None = None
    last_id: str | None = None

    def model_post_init(self, _context: Any) -> None:
        if self.data:
            self.first_id, self.last_id = self.data[0].id, self.data[-1].id
