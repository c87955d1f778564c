"""The requests the serving layer takes, whatever API they came through (pydantic-validated).

The API wings' wire models extend or convert into these: OpenAI chat completions adds its
streaming fields to :class:`ChatRequest`; Responses and Anthropic Messages are converted into one.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class RequestModel(BaseModel):
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


class SamplingRequest(RequestModel):
    """Decode controls shared by every generation request, whatever API it came through."""

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
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    logit_bias: dict[str, float] | None = None  # token id (as a string) -> bias in [-100, 100]
    min_tokens: int = Field(default=0, ge=0)
    speculative: bool | None = None  # false: no speculative decoding for this request (--speculative)
    adapters: str | None = None  # mlx_lm.server's field: a served LoRA adapter, by name or folder (--lora)
    response_format: dict[str, Any] | None = None  # {"type": "text" | "json_object" | "json_schema", ...}
    # vLLM-style structured outputs: {"json" | "regex" | "choice" | "grammar": ...}; and the older names
    structured_outputs: dict[str, Any] | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None


class ChatRequest(SamplingRequest):
    """A chat generation as the serving layer takes it: each API wing translates its wire request into
    one (chat completions field for field; Responses and Anthropic Messages by conversion)."""

    model: str = "default"
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    # tools whose input is free text (Responses custom tools): name -> format ({"type": "text"} or a grammar);
    # each is also in ``tools`` as a function with one string argument, ``input`` (serving/custom_tools.py)
    custom_tools: dict[str, dict[str, Any]] | None = None
    parallel_tool_calls: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    enable_thinking: bool | None = None  # shorthand for chat_template_kwargs.enable_thinking
    reasoning_effort: str | None = None  # "none"/"minimal" switch thinking off; passed to the template
    max_thinking_tokens: int | None = Field(default=None, ge=0)  # close reasoning after this many tokens
    add_generation_prompt: bool = True
