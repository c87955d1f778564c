"""OpenAI wire formats (requests validated by pydantic; responses as models)."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class OpenAIRequest(BaseModel):
    # Clients send vendor extensions: unknown fields are kept aside, logged and ignored.
    model_config = ConfigDict(extra="allow")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class SamplingFields(OpenAIRequest):
    """Decode controls shared by chat and completions."""

    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    n: int = Field(default=1, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    logit_bias: dict[str, float] | None = None  # token id (as a string) -> bias in [-100, 100]
    min_tokens: int = Field(default=0, ge=0)
    user: str | None = None
    response_format: dict[str, Any] | None = None  # {"type": "text" | "json_object" | "json_schema", ...}
    # vLLM-style structured outputs: {"json" | "regex" | "choice" | "grammar": ...}; and the older names
    structured_outputs: dict[str, Any] | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None


class ChatCompletionRequest(SamplingFields):
    model: str = "default"
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    enable_thinking: bool | None = None  # shorthand for chat_template_kwargs.enable_thinking
    reasoning_effort: str | None = None  # "none"/"minimal" switch thinking off; passed to the template
    max_thinking_tokens: int | None = Field(default=None, ge=0)  # close reasoning after this many tokens
    add_generation_prompt: bool = True
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
