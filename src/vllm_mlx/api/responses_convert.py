"""OpenAI Responses API requests, turned into the chat shape the rest of the server speaks.

A Responses request becomes a :class:`ChatRequest`, so rendering, sampling, output
constraints and output parsing are exactly those of /v1/chat/completions.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from pydantic import Field, ValidationError

from .errors import APIError
from .lru_store import LRUStore
from ..serving.custom_tools import INPUT, check_format, custom_function
from ..serving.reasoning_budget import check_effort
from ..serving.requests import ChatRequest
from .protocol import OpenAIRequest

logger = logging.getLogger(__name__)

DEFAULT_STORE_SIZE = 1000  # responses kept for previous_response_id (least recently used dropped)


class ResponsesRequest(OpenAIRequest):
    model: str = "default"
    input: str | list[dict[str, Any]] = ""
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    reasoning: dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    speculative: bool | None = None  # false: no speculative decoding for this request (--speculative)
    store: bool | None = True
    previous_response_id: str | None = None
    include: list[str] | None = None
    prompt_cache_key: str | None = None
    metadata: dict[str, Any] | None = None
    user: str | None = None
    stream: bool = False
    # accepted and ignored (nothing to do for a local server)
    truncation: str | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    background: bool | None = None
    stream_options: dict[str, Any] | None = None
    client_metadata: dict[str, Any] | None = None  # sent by Codex CLI


@dataclass(frozen=True)
class StoredResponse:
    conversation: list[dict]  # chat messages, the response's output included (previous_response_id)
    body: dict  # the response object (GET /v1/responses/{id})


class ResponseStore(LRUStore[StoredResponse]):
    """Recent responses (their conversations and bodies), bounded, least recently used dropped."""

    def __init__(self, capacity: int = DEFAULT_STORE_SIZE):
        super().__init__(capacity)


# -- input items -> chat messages ----------------------------------------------------------


def _text(content: Any, param: str) -> str:
    """The text of a message's content: a string, or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
            continue
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text", "summary_text", "reasoning_text"):
            texts.append(part.get("text") or "")
        elif kind == "refusal":
            texts.append(part.get("refusal") or "")
        elif kind == "input_image":
            raise APIError(400, "images are accepted only in user messages", param=param)
        else:
            raise APIError(400, f"content part type {kind!r} is not supported by this text model", param=param)
    return "".join(texts)


def _parts(content: list, param: str) -> list[dict]:
    """A user message's content with images, as chat content parts (input_image -> image_url)."""
    parts = []
    for j, part in enumerate(content):
        if isinstance(part, str):
            parts.append({"type": "text", "text": part})
        elif part.get("type") == "input_image":
            url = part.get("image_url")
            if not url:
                raise APIError(400, "input_image needs image_url (a data: or http(s) URL); file_id is not supported",
                               param=f"{param}.{j}")
            parts.append({"type": "image_url", "image_url": {"url": url}})
        elif part.get("type") == "input_video":
            parts.append({"type": "video_url", "video_url": {"url": part.get("video_url")}})
        else:
            parts.append({"type": "text", "text": _text([part], f"{param}.{j}")})
    return parts


def input_messages(items: str | list[dict[str, Any]]) -> list[dict]:
    """Responses input items as chat messages (function calls join one assistant message)."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}] if items else []
    messages: list[dict] = []
    for i, item in enumerate(items):
        param = f"input.{i}"
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise APIError(400, f"unknown message role {role!r}", param=f"{param}.role")
            content = item.get("content")
            if role == "user" and isinstance(content, list) and any(
                    isinstance(p, dict) and p.get("type") in ("input_image", "input_video") for p in content):
                messages.append({"role": "user", "content": _parts(content, f"{param}.content")})
                continue
            messages.append({"role": "system" if role == "developer" else role,
                             "content": _text(content, f"{param}.content")})
        elif kind in ("function_call", "custom_tool_call"):
            if not item.get("call_id") or not item.get("name"):
                raise APIError(400, f"a {kind} item needs call_id and name", param=param)
            if kind == "function_call":
                arguments = item.get("arguments") or "{}"
            else:  # a custom tool's free text, as the one argument the model saw it take
                arguments = json.dumps({INPUT: str(item.get("input") or "")}, ensure_ascii=False)
            call = {"id": item["call_id"], "type": "function", "function": {"name": item["name"], "arguments": arguments}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind in ("function_call_output", "custom_tool_call_output"):
            if not item.get("call_id"):
                raise APIError(400, f"a {kind} item needs call_id", param=param)
            output = item.get("output")
            if isinstance(output, list) and any(isinstance(p, dict) and p.get("type") == "input_image" for p in output):
                content: Any = _parts(output, f"{param}.output")  # images: the serving layer decides
            else:
                content = _text(output, f"{param}.output")
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": content})
        elif kind == "reasoning":
            continue  # earlier reasoning is not shown to the model again (as chat templates do)
        else:
            raise APIError(400, f"input item type {kind!r} is not supported", param=f"{param}.type")
    return messages


def _with_instructions(instructions: str | None, messages: list[dict]) -> list[dict]:
    """Instructions first, and leading system/developer messages merged into one system message
    (chat templates accept a single system message at the start)."""
    head, rest = [instructions] if instructions else [], list(messages)
    while rest and rest[0]["role"] == "system":
        head.append(rest.pop(0)["content"])
    return ([{"role": "system", "content": "\n\n".join(head)}] if head else []) + rest


# -- tools -----------------------------------------------------------------------------------


def chat_tools(tools: list[dict[str, Any]] | None) -> tuple[list[dict] | None, dict[str, str], dict[str, dict]]:
    """Function tools in the chat shape, the namespace of each function that came from one, and the
    custom tools (name -> format; offered as functions with one string argument, see
    serving/custom_tools.py). Namespaces are flattened; built-in tools (web_search, ...) are ignored."""
    if not tools:
        return None, {}, {}
    out: list[dict] = []
    namespaces: dict[str, str] = {}
    custom: dict[str, dict] = {}

    def add(tool: dict, namespace: str | None = None) -> None:
        if not tool.get("name"):
            raise APIError(400, "a function tool needs a name", param="tools")
        fn = {"name": tool["name"], "parameters": tool.get("parameters") or {"type": "object", "properties": {}}}
        if tool.get("description"):
            fn["description"] = tool["description"]
        out.append({"type": "function", "function": fn})
        if namespace:
            namespaces[tool["name"]] = namespace

    for k, tool in enumerate(tools):
        kind = tool.get("type")
        if kind == "function":
            add(tool)
        elif kind == "custom":
            name = tool.get("name")
            if not name:
                raise APIError(400, "a custom tool needs a name", param=f"tools.{k}")
            custom[name] = check_format(name, tool.get("format"), f"tools[{k}].format")
            out.append(custom_function(name, tool.get("description")))
        elif kind == "namespace":
            for inner in tool.get("tools") or []:
                if inner.get("type") == "function":
                    add(inner, tool.get("name"))
                else:
                    logger.warning("/v1/responses: ignoring %r tool in namespace %r", inner.get("type"),
                                   tool.get("name"))
        else:
            logger.warning("/v1/responses: ignoring tool of type %r (function and custom tools are served)", kind)
    return out or None, namespaces, custom


def _tool_choice(choice: str | dict | None) -> str | dict | None:
    if isinstance(choice, dict):
        if choice.get("type") in ("function", "custom"):
            return {"type": "function", "function": {"name": choice.get("name")}}
        if choice.get("type") == "allowed_tools":
            return choice.get("mode", "auto")
        raise APIError(400, f"tool_choice type {choice.get('type')!r} is not supported", param="tool_choice")
    return choice


def _response_format(text: dict | None) -> dict | None:
    fmt = (text or {}).get("format")
    if not fmt:
        return None
    kind = fmt.get("type", "text")
    if kind == "json_schema":
        return {"type": "json_schema",
                "json_schema": {"name": fmt.get("name"), "schema": fmt.get("schema"), "strict": fmt.get("strict")}}
    if kind in ("text", "json_object"):
        return {"type": kind}
    raise APIError(400, f"unknown text.format type {kind!r}", param="text.format")


def chat_request(req: ResponsesRequest, history: list[dict]) -> tuple[ChatRequest, list[dict], dict]:
    """(the equivalent chat request, the conversation without instructions, tool namespaces)."""
    conversation = history + input_messages(req.input)
    messages = _with_instructions(req.instructions, conversation)
    if not messages:
        raise APIError(400, "input must not be empty", param="input")
    tools, namespaces, custom = chat_tools(req.tools)
    effort = (req.reasoning or {}).get("effort")
    check_effort(effort, "reasoning.effort")
    try:
        chat = _chat(req, messages, tools, effort, custom)
    except ValidationError as exc:
        raise APIError(400, f"the request does not convert to a chat request: {exc.errors()[0]['msg']}",
                       param="input") from exc
    return chat, conversation, namespaces


def _chat(req: ResponsesRequest, messages: list[dict], tools: list[dict] | None, effort: str | None,
          custom: dict[str, dict]):
    return ChatRequest(
        custom_tools=custom or None,
        model=req.model,
        messages=messages,
        tools=tools,
        tool_choice=_tool_choice(req.tool_choice) if tools or req.tool_choice not in (None, "auto", "none") else None,
        parallel_tool_calls=req.parallel_tool_calls,
        reasoning_effort=effort,
        response_format=_response_format(req.text),
        max_completion_tokens=req.max_output_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        speculative=req.speculative,
    )

