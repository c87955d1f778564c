"""The per-request limits of :class:`~vllm_mlx.limits.Limits`, as 400s naming the limit and its flag."""

from __future__ import annotations

from typing import Any

from ..limits import Limits
from .errors import APIError, ContextOverflow


def check_chat_limits(limits: Limits, messages: list, tools: list | None) -> None:
    if len(messages) > limits.max_messages:
        raise APIError(400, f"{len(messages)} messages exceed the limit of {limits.max_messages} (--max-messages)",
                       param="messages", code="too_many_messages")
    if tools and len(tools) > limits.max_tools:
        raise APIError(400, f"{len(tools)} tools exceed the limit of {limits.max_tools} (--max-tools)",
                       param="tools", code="too_many_tools")


def count_prompts(prompt: Any) -> int:
    """Prompts in a /v1/completions ``prompt`` (a string, strings, token ids, or lists of token ids)."""
    if isinstance(prompt, list) and prompt and not all(isinstance(t, int) for t in prompt):
        return len(prompt)
    return 1


def check_prompt_count(limits: Limits, prompt: Any) -> None:
    n = count_prompts(prompt)
    if n > limits.max_prompts:
        raise APIError(400, f"{n} prompts exceed the limit of {limits.max_prompts} (--max-prompts)",
                       param="prompt", code="too_many_prompts")


def check_generation_limits(limits: Limits, prompt_len: int, max_tokens: int | None, prompt_param: str) -> None:
    if limits.max_prompt_tokens is not None and prompt_len > limits.max_prompt_tokens:
        raise ContextOverflow(f"the prompt has {prompt_len} tokens, over the limit of {limits.max_prompt_tokens} "
                              f"(--max-prompt-tokens)", param=prompt_param, prompt_tokens=prompt_len,
                              max_prompt_tokens=limits.max_prompt_tokens)
    if limits.max_tokens_cap is not None and max_tokens is not None and max_tokens > limits.max_tokens_cap:
        raise APIError(400, f"max_tokens {max_tokens} exceeds this server's cap of {limits.max_tokens_cap} "
                            f"(--max-tokens-cap)", param="max_tokens", code="max_tokens_exceeded")
