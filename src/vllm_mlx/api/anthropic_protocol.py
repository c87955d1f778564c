"""Anthropic Messages wire format, and its translation into the chat pipeline's request.

An Anthropic request becomes a :class:`ChatRequest`, so it is rendered by the same chat
template, sampled with the same parameters and parsed by the same reasoning/tool-call pipeline as
/v1/chat/completions. See docs/anthropic-api.md for the field mapping.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import APIError
from ..serving.reasoning_budget import check_effort
from ..serving.requests import ChatRequest

logger = logging.getLogger(__name__)


class AnthropicMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["user", "assistant", "system"]
    content: str | list[dict[str, Any]]


class MessagesRequest(BaseModel):
    """POST /v1/messages (and /v1/messages/count_tokens, which ignores the generation fields)."""

    model_config = ConfigDict(extra="allow")  # other fields are logged and ignored
    model: str = "default"
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    stream: bool = False
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    output_format: dict[str, Any] | None = None
    output_config: dict[str, Any] | None = None
    thread: dict[str, Any] | None = None  # server-kept conversation (anthropic_threads.py)
    speculative: bool | None = None  # false: no speculative decoding for this request (--speculative)
    # accepted and ignored (declared so they are not logged as unknown on every Claude Code request)
    metadata: dict[str, Any] | None = None
    context_management: dict[str, Any] | None = None
    cache_control: dict[str, Any] | None = None
    service_tier: str | None = None


def _text_of(blocks: str | list[dict[str, Any]], where: str) -> str:
    """Plain text of a string or a list of text blocks (cache_control and citations ignored)."""
    if isinstance(blocks, str):
        return blocks
    texts = []
    for block in blocks:
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind in ("image", "document"):
            raise APIError(400, f"{where}: this model does not accept images or documents", param=where)
        else:
            raise APIError(400, f"{where}: unsupported content block type {kind!r}", param=where)
    return "\n".join(texts) if len(texts) > 1 else "".join(texts)


# Anthropic's image media types and the bytes each format starts with
IMAGE_MAGIC = {"image/png": (b"\x89PNG\r\n\x1a\n",), "image/jpeg": (b"\xff\xd8\xff",),
               "image/gif": (b"GIF87a", b"GIF89a"), "image/webp": (b"RIFF",)}


def _sniff(head: bytes) -> str | None:
    """The media type the first bytes of an image say, or None."""
    for media_type, magics in IMAGE_MAGIC.items():
        if head.startswith(magics) and (media_type != "image/webp" or head[8:12] == b"WEBP"):
            return media_type
    return None


def _check_media_type(source: dict[str, Any], where: str) -> None:
    """``media_type`` must be one Anthropic accepts, and the data's first bytes must say the same."""
    media_type, data = source["media_type"], source["data"]
    if media_type not in IMAGE_MAGIC:
        raise APIError(400, f"{where}: media_type must be one of {', '.join(IMAGE_MAGIC)}, not {media_type!r}",
                       param=where)
    try:
        head = base64.b64decode(str(data)[:16], validate=True)  # 12 bytes: enough for every magic number
    except (binascii.Error, ValueError):
        raise APIError(400, f"{where}: the image data is not valid base64", param=where) from None
    found = _sniff(head)
    if found != media_type:
        raise APIError(400, f"{where}: the image data does not match media_type {media_type} (its bytes are "
                            f"{found or 'no supported image format'})", param=where)


def _image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    """An Anthropic image block (base64 or url source) as an OpenAI image_url content part."""
    source = block.get("source") or {}
    kind = source.get("type")
    if kind == "base64":
        if not source.get("data") or not source.get("media_type"):
            raise APIError(400, f"{where}: a base64 image source needs media_type and data", param=where)
        _check_media_type(source, where)
        url = f"data:{source['media_type']};base64,{source['data']}"
    elif kind == "url":
        if not source.get("url"):
            raise APIError(400, f"{where}: a url image source needs url", param=where)
        url = source["url"]
    else:
        raise APIError(400, f"{where}: images need a source of type base64 or url, not {kind!r}", param=where)
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result(block: dict[str, Any], where: str) -> dict[str, Any]:
    """A tool_result as a tool message: text, or content parts when it holds images (the serving
    layer shows them to a vision model and puts a note in their place for a text-only one)."""
    if not block.get("tool_use_id"):
        raise APIError(400, f"{where}: tool_result needs tool_use_id", param=where)
    content = block.get("content")
    prefix = "Error: " if block.get("is_error") else ""
    if isinstance(content, list) and any(b.get("type") == "image" for b in content):
        parts: list[dict[str, Any]] = [{"type": "text", "text": prefix}] if prefix else []
        for k, b in enumerate(content):
            if b.get("type") == "image":
                parts.append(_image_part(b, f"{where}.content.{k}"))
            elif b.get("type") == "text":
                parts.append({"type": "text", "text": str(b.get("text") or "")})
            else:
                raise APIError(400, f"{where}.content.{k}: unsupported block type {b.get('type')!r} in a tool_result",
                               param=f"{where}.content.{k}")
        return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": parts}
    text = "" if content is None else _text_of(content, where)
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": prefix + text}


def _convert_message(message: AnthropicMessage, i: int) -> list[dict[str, Any]]:
    """One Anthropic message as OpenAI-style chat messages (tool results become role "tool")."""
    where = f"messages.{i}.content"
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}]
    texts: list[str] = []
    images: list[tuple[int, dict[str, Any]]] = []  # (position among the text blocks, part)
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    tool_results: list[dict[str, Any]] = []
    for j, block in enumerate(message.content):
        kind = block.get("type")
        here = f"{where}.{j}"
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "image" and message.role == "user":
            images.append((len(texts), _image_part(block, here)))
        elif kind in ("image", "document"):
            raise APIError(400, f"{here}: this model does not accept {kind}s here", param=here)
        elif kind == "tool_use" and message.role == "assistant":
            if not block.get("name"):
                raise APIError(400, f"{here}: tool_use needs a name", param=here)
            calls.append({"id": block.get("id") or f"toolu_{i}_{j}", "type": "function",
                          "function": {"name": block["name"], "arguments": json.dumps(block.get("input") or {})}})
        elif kind == "tool_result" and message.role == "user":
            tool_results.append(_tool_result(block, here))
        elif kind == "thinking" and message.role == "assistant":
            reasoning.append(str(block.get("thinking") or ""))
        elif kind == "redacted_thinking" and message.role == "assistant":
            continue  # opaque: nothing a local model can read
        else:
            raise APIError(400, f"{here}: unsupported content block type {kind!r} in a {message.role} message",
                           param=here)
    text = "\n".join(texts) if len(texts) > 1 else "".join(texts)
    if message.role == "assistant":
        out: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            out["tool_calls"] = calls
        if reasoning:
            out["reasoning_content"] = "\n".join(reasoning)
        return [out]
    if message.role == "system":
        return [{"role": "system", "content": text}]
    if images:  # content parts keep the images where they stood among the text blocks
        parts: list[dict[str, Any]] = []
        for k, t in enumerate(texts + [None]):
            parts += [part for at, part in images if at == k]
            if t is not None:
                parts.append({"type": "text", "text": t if k == 0 else "\n" + t})
        return tool_results + [{"role": "user", "content": parts}]
    return tool_results + ([{"role": "user", "content": text}] if text or not tool_results else [])


def _tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Anthropic client tools as OpenAI function tools; server tools (web search, ...) are skipped."""
    out = []
    for k, tool in enumerate(tools or []):
        if "input_schema" not in tool:
            logger.warning("/v1/messages: ignoring tool %r of type %r (no input_schema)", tool.get("name"),
                           tool.get("type"))
            continue
        if not tool.get("name"):
            raise APIError(400, f"tools.{k}: a tool needs a name", param=f"tools.{k}")
        function = {"name": tool["name"], "parameters": tool.get("input_schema") or {"type": "object"}}
        if tool.get("description"):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out or None


def _tool_choice(choice: dict[str, Any] | None) -> tuple[Any, bool | None]:
    """(OpenAI tool_choice, parallel_tool_calls) for an Anthropic tool_choice."""
    if choice is None:
        return None, None
    kind = choice.get("type")
    parallel = False if choice.get("disable_parallel_tool_use") else None
    if kind == "auto":
        return "auto", parallel
    if kind == "any":
        return "required", parallel
    if kind == "none":
        return "none", None
    if kind == "tool":
        if not choice.get("name"):
            raise APIError(400, "tool_choice of type 'tool' needs a name", param="tool_choice")
        return {"type": "function", "function": {"name": choice["name"]}}, parallel
    raise APIError(400, f"unknown tool_choice type {kind!r}", param="tool_choice")


def _thinking(thinking: dict[str, Any] | None) -> tuple[bool | None, int | None]:
    """(enable_thinking, max_thinking_tokens); absent leaves the model's template default."""
    if thinking is None:
        return None, None
    kind = thinking.get("type")
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if budget is not None and (not isinstance(budget, int) or budget < 0):
            raise APIError(400, "thinking.budget_tokens must be a non-negative integer", param="thinking")
        return True, budget
    if kind == "adaptive":
        return True, None
    if kind == "disabled":
        return False, None
    raise APIError(400, f"unknown thinking type {kind!r}", param="thinking")


def _response_format(req: MessagesRequest) -> dict[str, Any] | None:
    fmt = req.output_format or (req.output_config or {}).get("format")
    if not fmt:
        return None
    if fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise APIError(400, "output format must be {\"type\": \"json_schema\", \"schema\": {...}}",
                       param="output_format")
    return {"type": "json_schema", "json_schema": {"schema": fmt["schema"]}}


# Claude Code's first system block: per-session billing attribution (``cc_version=…; cch=…``) that
# changes every session and carries nothing for the model. Dropped, so the long system prompt after it
# is the same token prefix in every session and the prefix cache reuses it.
BILLING_HEADER = "x-anthropic-billing-header:"


def system_text(system: str | list[dict[str, Any]] | None) -> list[str]:
    """The system prompt's text, without Claude Code's billing-header block."""
    if system is None:
        return []
    if isinstance(system, list):
        system = [b for b in system if not (b.get("type") == "text"
                                            and str(b.get("text") or "").lstrip().startswith(BILLING_HEADER))]
        if not system:
            return []
    return [_text_of(system, "system")]


def to_chat_request(req: MessagesRequest) -> ChatRequest:
    """The chat-completions request that renders, samples and parses exactly like this one."""
    system = system_text(req.system)
    messages: list[dict[str, Any]] = []
    for i, message in enumerate(req.messages):
        final_assistant = i == len(req.messages) - 1 and message.role == "assistant"
        if message.content == [] and not final_assistant:
            raise APIError(400, f"messages.{i}: content must not be empty (only a final assistant turn may be)",
                           param=f"messages.{i}.content")
        for converted in _convert_message(message, i):
            if converted["role"] == "system":  # hoisted: many templates accept a system message only first
                system.append(converted["content"])
            else:
                messages.append(converted)
    if system:
        messages.insert(0, {"role": "system", "content": "\n\n".join(s for s in system if s)})
    if not messages or all(m["role"] == "system" for m in messages):
        raise APIError(400, "messages: at least one user or assistant message is required", param="messages")
    tool_choice, parallel = _tool_choice(req.tool_choice)
    enable_thinking, budget = _thinking(req.thinking)
    effort = (req.output_config or {}).get("effort")
    check_effort(effort, "output_config.effort")
    fields: dict[str, Any] = {
        "model": req.model, "messages": messages, "max_tokens": req.max_tokens, "stop": req.stop_sequences,
        "temperature": req.temperature, "top_p": req.top_p, "top_k": req.top_k,
        "tools": _tools(req.tools), "tool_choice": tool_choice, "parallel_tool_calls": parallel,
        "enable_thinking": enable_thinking, "max_thinking_tokens": budget,
        # an effort sizes the budget of thinking that `thinking` switched on; it switches nothing itself
        "reasoning_effort": effort if enable_thinking else None,
        "response_format": _response_format(req),
        "speculative": req.speculative,
    }
    try:
        return ChatRequest.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {}
        raise APIError(400, f"invalid request: {first.get('msg', exc)}") from exc
