"""Chat output through the one parsing pipeline: reasoning, tool calls and content.

The same :class:`OutputPipeline` serves streaming (fed each delta) and non-streaming (fed the
whole text), so the two always agree. This module maps pipeline events onto OpenAI's chat shapes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..parsers import (
    ContentDelta,
    OutputPipeline,
    ReasoningDelta,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallStart,
    aggregate,
    get_reasoning_parser,
    get_tool_parser,
)


@dataclass(frozen=True)
class OutputParsing:
    """How one request's output is parsed (decided once per request by the serving layer)."""

    reasoning_parser: str | None = None
    tool_parser: str | None = None
    tools: list[dict] | None = None
    starts_in_reasoning: bool = False

    @property
    def active(self) -> bool:
        return bool(self.reasoning_parser or self.tool_parser)

    def pipeline(self) -> OutputPipeline | None:
        if not self.active:
            return None
        reasoning = get_reasoning_parser(self.reasoning_parser)() if self.reasoning_parser else None
        tools = get_tool_parser(self.tool_parser)(self.tools) if self.tool_parser else None
        return OutputPipeline(reasoning, tools, starts_in_reasoning=self.starts_in_reasoning)


def _tool_call_json(call) -> dict:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def chat_message(parsing: OutputParsing, text: str) -> tuple[dict, bool]:
    """The non-streaming assistant message for ``text``; and whether it holds tool calls."""
    pipeline = parsing.pipeline()
    if pipeline is None:
        return {"role": "assistant", "content": text}, False
    parsed = aggregate(pipeline.run(text))
    message: dict[str, Any] = {"role": "assistant", "content": parsed.content or None}
    if parsed.reasoning:
        message["reasoning_content"] = message["reasoning"] = parsed.reasoning
    if parsed.tool_calls:
        message["tool_calls"] = [_tool_call_json(c) for c in parsed.tool_calls]
    elif message["content"] is None:
        message["content"] = ""
    return message, bool(parsed.tool_calls)


@dataclass
class ChatDeltaStream:
    """Turns one choice's text deltas into OpenAI `delta` objects."""

    parsing: OutputParsing
    pipeline: OutputPipeline | None = None
    saw_tool_call: bool = False
    reasoning: str = ""  # all reasoning text so far (for usage)
    _started: set = field(default_factory=set)

    def __post_init__(self):
        self.pipeline = self.parsing.pipeline()

    def feed(self, text: str) -> list[dict]:
        if self.pipeline is None:
            return [{"content": text}] if text else []
        return self._deltas(self.pipeline.feed(text)) if text else []

    def finish(self) -> list[dict]:
        return self._deltas(self.pipeline.finish()) if self.pipeline is not None else []

    def _deltas(self, events) -> list[dict]:
        out: list[dict] = []
        for ev in events:
            if isinstance(ev, ReasoningDelta):
                self.reasoning += ev.text
                out.append({"reasoning_content": ev.text, "reasoning": ev.text})
            elif isinstance(ev, ContentDelta):
                out.append({"content": ev.text})
            elif isinstance(ev, ToolCallStart):
                self.saw_tool_call = True
                out.append({"tool_calls": [{"index": ev.index, "id": ev.id, "type": "function",
                                            "function": {"name": ev.name, "arguments": ""}}]})
            elif isinstance(ev, ToolCallArgsDelta):
                out.append({"tool_calls": [{"index": ev.index, "function": {"arguments": ev.text}}]})
            elif isinstance(ev, ToolCallEnd):
                continue
        return _merge_adjacent(out)


def _merge_adjacent(deltas: list[dict]) -> list[dict]:
    """Join neighbouring plain-text deltas of the same kind (fewer, larger chunks)."""
    merged: list[dict] = []
    for d in deltas:
        if merged and "tool_calls" not in d and "tool_calls" not in merged[-1] and d.keys() == merged[-1].keys():
            merged[-1] = {k: merged[-1][k] + d[k] for k in d}
        else:
            merged.append(d)
    return merged


def history_message(message: dict) -> dict:
    """An OpenAI history message made template-friendly: tool-call arguments as objects."""
    calls = message.get("tool_calls")
    if not calls:
        return message
    fixed = []
    for call in calls:
        call = dict(call)
        fn = dict(call.get("function") or {})
        if isinstance(fn.get("arguments"), str):
            try:
                fn["arguments"] = json.loads(fn["arguments"]) if fn["arguments"].strip() else {}
            except json.JSONDecodeError:
                pass  # leave it as the client sent it; the template shows it verbatim
        call["function"] = fn
        fixed.append(call)
    return {**message, "tool_calls": fixed}
