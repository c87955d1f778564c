"""The server-side MCP tool loop for /v1/chat/completions (``"mcp": true`` or ``--mcp-auto``).

The allowed MCP tools are offered beside the request's own tools. Each round generates through
the shared serving path; MCP calls the model makes are executed (through the policy), the call
and its result are appended to the conversation, and generation continues — up to the policy's
``maxRounds`` tool rounds. Calls of the request's own tools end the loop and go back to the
client as usual. One event generator drives both response kinds, so they agree:

* streaming: the usual chunks (content and reasoning of every round, the client's tool calls),
  plus chunks with ``choices: []`` and an ``mcp`` object — ``tool_call``, ``tool_result`` and a
  closing ``done`` with the whole report;
* non-streaming: the final message, with the report in a top-level ``mcp`` field.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..engine.request import FinishReason
from ..mcp import MCPManager, ToolCallError
from ..mcp.connection import ToolInfo
from ..mcp.manager import QUALIFIER
from ..parsers import ContentDelta, ReasoningDelta, ToolCallArgsDelta, ToolCallStart
from .errors import APIError, error_body, generation_failure
from .mcp_routes import mcp_manager
from .model_registry import serving_for
from .openai_routes import openai_usage
from .streaming import request_id_headers, request_timeout, sse, until_disconnected
from ..serving.requests import ChatMessage, new_id
from .protocol import ChatCompletionRequest
from ..serving.chat import ChatRun
from ..serving.state import ServingState, finish_reason_text


def wants_mcp(req: ChatCompletionRequest, raw: Request) -> bool:
    """Whether this request runs the MCP loop: ``"mcp"`` in the request, else ``--mcp-auto``."""
    asked = req.mcp if req.mcp is not None else bool(getattr(raw.app.state.config, "mcp_auto", False))
    if asked and mcp_manager(raw) is None:
        if req.mcp:
            raise APIError(400, "'mcp' needs MCP servers: start the server with --mcp-config", param="mcp")
        return False
    return asked


@dataclass
class Offer:
    """The tools given to the model: the client's, then the allowed MCP tools under exposed names."""

    tools: list[dict]
    mcp: dict[str, ToolInfo]  # exposed name -> MCP tool
    # tools of connected servers that the policy denies: never offered, but a call the model makes to
    # one anyway is recognised, refused through the policy (reported) and answered with the error
    denied: dict[str, ToolInfo] = field(default_factory=dict)

    def parse_only(self) -> list[dict]:
        return [{"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
                for name in self.denied]


def offer_tools(manager: MCPManager, client_tools: list[dict] | None) -> Offer:
    """MCP tools keep their own name unless two servers share it or the client has a tool of that
    name; then they are offered as ``server__tool``. A client tool always keeps its name."""
    tools = list(client_tools or [])
    taken = {(t.get("function") or {}).get("name") or t.get("name") for t in tools}
    allowed = manager.allowed_tools()
    counts = Counter(t.name for t in allowed)
    exposed: dict[str, ToolInfo] = {}
    for t in allowed:
        name = t.name if counts[t.name] == 1 and t.name not in taken else f"{t.server}{QUALIFIER}{t.name}"
        if name in taken or name in exposed:
            continue
        exposed[name] = t
        tools.append({"type": "function", "function": {"name": name, "description": t.description,
                                                        "parameters": t.input_schema or {"type": "object"}}})
    denied = {}
    for t in manager.denied_tools():
        for name in (t.name, f"{t.server}{QUALIFIER}{t.name}"):
            if name not in taken and name not in exposed:
                denied.setdefault(name, t)
    return Offer(tools, exposed, denied)


@dataclass
class LoopReport:
    rounds: int = 0
    calls: list[dict] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)  # what the server added to the conversation
    stopped: str | None = None  # "max_rounds" when the model still wanted tools at the limit; "cancelled"

    def as_json(self) -> dict:
        body = {"rounds": self.rounds, "calls": self.calls, "messages": self.messages}
        if self.stopped:
            body["stopped"] = self.stopped
        return body


async def mcp_chat(req: ChatCompletionRequest, raw: Request):
    state, manager = await serving_for(raw, req.model), mcp_manager(raw)
    if req.n != 1:
        raise APIError(400, "'mcp' supports n=1 only", param="n")
    if req.logprobs:
        raise APIError(400, "'mcp' cannot be combined with logprobs", param="logprobs")
    if req.tool_choice not in (None, "auto", "none"):
        raise APIError(400, "with 'mcp', tool_choice must be 'auto' or 'none' (a forced call would repeat "
                       "every round)", param="tool_choice")
    offer = offer_tools(manager, req.tools)
    req = req.model_copy(update={"tools": offer.tools or None})
    request_id = new_id("chatcmpl")
    first = await state.start_chat(req, request_id)  # request errors surface before any output
    events = _loop(state, manager, req, offer, request_id, first)
    created = int(time.time())
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(_chunks(events, request_id, created, state.model_name, include_usage),
                                 media_type="text/event-stream", headers=request_id_headers(request_id))
    message, finish, usage, report = await until_disconnected(raw, _gather(events), timeout=request_timeout(raw))
    return JSONResponse({
        "id": request_id, "object": "chat.completion", "created": created, "model": state.model_name,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": usage, "mcp": report,
    }, headers=request_id_headers(request_id))


async def _loop(state: ServingState, manager: MCPManager, req: ChatCompletionRequest, offer: Offer,
                request_id: str, run: ChatRun) -> AsyncIterator[tuple]:
    """Yields ("delta", delta), ("mcp", event) and finally ("end", finish_reason, usage, report)."""
    messages = list(req.messages)
    report = LoopReport()
    totals = [0, 0, 0]  # prompt, completion, cached tokens over all rounds
    said = {"content": False, "reasoning_content": False}
    limit = manager.config.policy.max_result_chars
    while True:
        report.rounds += 1
        calls: dict[int, dict] = {}
        client_index: dict[int, int] = {}
        text = {"content": [], "reasoning_content": []}
        pipeline = replace(run.parsing, tools=(run.parsing.tools or []) + offer.parse_only()).pipeline()
        last = None
        async for out in run.stream:
            if out.finish_reason is FinishReason.ERROR:
                raise generation_failure(out)
            events = pipeline.feed(out.text) if pipeline else ([ContentDelta(out.text)] if out.text else [])
            if out.finished and pipeline:
                events += pipeline.finish()
            for ev in events:
                for delta in _deltas(ev, calls, client_index, offer, text, said):
                    yield "delta", delta
            last = out
        totals = [t + v for t, v in zip(totals, (last.prompt_tokens, last.completion_tokens, last.cached_tokens))]
        if last.finish_reason is FinishReason.CANCELLED:  # an operator's cancel ends the loop, no tool runs
            report.stopped = "cancelled"
            yield "end", finish_reason_text(last.finish_reason), openai_usage(*totals), report.as_json()
            return
        mcp_calls = [c for c in calls.values() if c["name"] in offer.mcp or c["name"] in offer.denied]
        if mcp_calls and report.rounds > manager.max_rounds:
            report.stopped = "max_rounds"
            mcp_calls = []
        if mcp_calls:
            content = "".join(text["content"]) or None
            assistant = {"role": "assistant", "content": content,
                         "tool_calls": [{"id": c["id"], "type": "function",
                                         "function": {"name": c["name"], "arguments": c["arguments"] or "{}"}}
                                        for c in mcp_calls]}
            messages.append(ChatMessage(**assistant))
            report.messages.append(assistant)
            for call in mcp_calls:
                tool = offer.mcp.get(call["name"]) or offer.denied[call["name"]]
                yield "mcp", {"type": "tool_call", "round": report.rounds, "id": call["id"], "server": tool.server,
                              "tool": tool.name, "arguments": call["arguments"] or "{}"}
                entry, result_text = await _execute(manager, tool, call, request_id, limit)
                entry["round"] = report.rounds
                report.calls.append(entry)
                yield "mcp", {"type": "tool_result", **entry, "content": result_text}
                tool_message = {"role": "tool", "tool_call_id": call["id"], "content": result_text}
                messages.append(ChatMessage(**tool_message))
                report.messages.append(tool_message)
        client_calls = len(client_index) > 0
        if not mcp_calls or client_calls:
            finish = "tool_calls" if client_calls and last.finish_reason is FinishReason.STOP \
                else finish_reason_text(last.finish_reason)
            yield "end", finish, openai_usage(totals[0], totals[1], totals[2]), report.as_json()
            return
        round_req = req.model_copy(update={"messages": messages})
        run = await state.start_chat(round_req, f"{request_id}-r{report.rounds + 1}", group=request_id)


def _deltas(ev, calls: dict, client_index: dict, offer: Offer, text: dict, said: dict) -> list[dict]:
    """The client-visible deltas of one pipeline event; MCP calls are recorded, not shown."""
    if isinstance(ev, (ContentDelta, ReasoningDelta)):
        key = "content" if isinstance(ev, ContentDelta) else "reasoning_content"
        piece = ev.text
        if not text[key] and said[key]:
            piece = "\n\n" + piece  # a later round's text starts a new paragraph
        text[key].append(ev.text)
        said[key] = True
        return [{"content": piece}] if key == "content" else [{"reasoning_content": piece, "reasoning": piece}]
    if isinstance(ev, ToolCallStart):
        calls[ev.index] = {"id": ev.id, "name": ev.name, "arguments": ""}
        if ev.name in offer.mcp or ev.name in offer.denied:
            return []
        client_index[ev.index] = len(client_index)
        return [{"tool_calls": [{"index": client_index[ev.index], "id": ev.id, "type": "function",
                                 "function": {"name": ev.name, "arguments": ""}}]}]
    if isinstance(ev, ToolCallArgsDelta):
        calls[ev.index]["arguments"] += ev.text
        if ev.index in client_index:
            return [{"tool_calls": [{"index": client_index[ev.index], "function": {"arguments": ev.text}}]}]
    return []  # ToolCallEnd, and argument text of MCP calls


async def _execute(manager: MCPManager, tool: ToolInfo, call: dict, request_id: str, limit: int) -> tuple[dict, str]:
    """Run one call the model made; a refusal or failure becomes an error result the model reads."""
    entry: dict[str, Any] = {"id": call["id"], "server": tool.server, "tool": tool.name,
                             "arguments": call["arguments"] or "{}"}
    try:
        arguments = json.loads(call["arguments"] or "{}")
    except json.JSONDecodeError as exc:
        entry.update(is_error=True, error={"status": 400, "code": "invalid_arguments", "message": str(exc)})
        return entry, f"Error: the arguments are not valid JSON: {exc}"
    try:
        result = await manager.execute(tool.name, arguments, server=tool.server, source="chat",
                                       request_id=request_id)
    except ToolCallError as exc:
        entry.update(is_error=True, error={"status": exc.status, "code": exc.code, "message": exc.message})
        if exc.status == 403:
            entry["refused"] = True  # the policy said no: reported here, and the model reads why
        return entry, f"Error: {exc.message}"
    entry.update(is_error=result.is_error, duration_ms=round(result.duration_ms, 1))
    return entry, result.model_text(limit)


async def _gather(events: AsyncIterator[tuple]) -> tuple[dict, str | None, dict, dict]:
    content, reasoning, calls = [], [], []
    async for event in events:
        if event[0] == "delta":
            delta = event[1]
            content.append(delta.get("content") or "")
            reasoning.append(delta.get("reasoning_content") or "")
            for tc in delta.get("tool_calls") or []:
                if "id" in tc:
                    calls.append({"id": tc["id"], "type": "function", "function": dict(tc["function"])})
                else:
                    calls[tc["index"]]["function"]["arguments"] += tc["function"]["arguments"]
        elif event[0] == "end":
            _, finish, usage, report = event
    message: dict[str, Any] = {"role": "assistant", "content": "".join(content) or (None if calls else "")}
    if any(reasoning):
        message["reasoning_content"] = message["reasoning"] = "".join(reasoning)
    if calls:
        message["tool_calls"] = calls
    return message, finish, usage, report


async def _chunks(events: AsyncIterator[tuple], request_id: str, created: int, model: str,
               include_usage: bool) -> AsyncIterator[str]:
    def chunk(choices: list, **extra) -> str:
        body: dict[str, Any] = {"id": request_id, "object": "chat.completion.chunk", "created": created,
                                "model": model, "choices": choices, **extra}
        if include_usage and "usage" not in body:
            body["usage"] = None
        return sse(body)

    def choice(delta: dict, finish: str | None = None) -> list:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

    yield chunk(choice({"role": "assistant", "content": ""}))
    try:
        async for event in events:
            if event[0] == "delta":
                yield chunk(choice(event[1]))
            elif event[0] == "mcp":
                yield chunk([], mcp=event[1])
            else:
                _, finish, usage, report = event
                yield chunk(choice({}, finish))
                yield chunk([], mcp={"type": "done", **report})
                if include_usage:
                    yield chunk([], usage=usage)
    except APIError as exc:
        yield sse(error_body(exc.status, exc.message, exc.param, exc.code))
    yield sse("[DONE]")
