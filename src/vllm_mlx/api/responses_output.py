"""Responses API output: pipeline events (reasoning, content, tool calls) -> output items and the
streaming events that build them. Streaming and non-streaming both run this one builder.

Reasoning comes as ``reasoning_text`` content, or -- when the request asks for ``reasoning.summary`` --
as a ``summary_text`` part with ``response.reasoning_summary_*`` events (a local model has no separate
summarizer: the summary is the reasoning itself). A call of a custom tool is a ``custom_tool_call``
item whose ``input`` is the tool's free text (the model wrote it as the call's one argument)."""

from __future__ import annotations

import json
import secrets
from typing import Any

from ..parsers import ContentDelta, ReasoningDelta, ToolCallArgsDelta, ToolCallEnd, ToolCallStart
from ..serving.chat_output import OutputParsing
from ..serving.custom_tools import INPUT


def item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


class OutputBuilder:
    """Folds parsed output into Responses output items; ``events`` collects the stream events
    (without sequence numbers) in order, for the streaming route to send."""

    def __init__(self, parsing: OutputParsing, namespaces: dict[str, str] | None = None,
                 custom: frozenset[str] | set[str] = frozenset(), summary: bool = False):
        self.pipeline = parsing.pipeline()
        self.namespaces = namespaces or {}
        self.custom = custom  # names of custom tools: their calls are custom_tool_call items
        self.summary = summary  # reasoning as a summary part (reasoning.summary was asked for)
        self._reasoning_text = ""
        self._custom_args: dict[int, str] = {}
        self.items: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None  # the item being written
        self._calls: dict[int, dict[str, Any]] = {}  # tool-call index -> its item
        self._pending = ""  # whitespace content not yet part of a message

    # -- input ------------------------------------------------------------------------------
    def feed(self, text: str) -> None:
        if not text:
            return
        if self.pipeline is None:
            self._content(text)
            return
        self._handle(self.pipeline.feed(text))

    def finish(self, status: str = "completed") -> None:
        if self.pipeline is not None:
            self._handle(self.pipeline.finish())
        self._close(status)

    def take_events(self) -> list[dict[str, Any]]:
        events, self.events = self.events, []
        return events

    # -- results -----------------------------------------------------------------------------
    @property
    def reasoning_text(self) -> str:
        return self._reasoning_text

    def history(self) -> list[dict]:
        """The output as chat messages (for previous_response_id)."""
        message: dict[str, Any] = {"role": "assistant", "content": ""}
        for it in self.items:
            if it["type"] == "message":
                message["content"] += "".join(c["text"] for c in it["content"])
            elif it["type"] in ("function_call", "custom_tool_call"):
                arguments = it["arguments"] if it["type"] == "function_call" else \
                    json.dumps({INPUT: it["input"]}, ensure_ascii=False)
                message.setdefault("tool_calls", []).append(
                    {"id": it["call_id"], "type": "function", "function": {"name": it["name"], "arguments": arguments}})
        return [message]

    # -- internals -----------------------------------------------------------------------------
    def _handle(self, events) -> None:
        for ev in events:
            if isinstance(ev, ReasoningDelta):
                self._reasoning(ev.text)
            elif isinstance(ev, ContentDelta):
                self._content(ev.text)
            elif isinstance(ev, ToolCallStart):
                self._call_start(ev)
            elif isinstance(ev, ToolCallArgsDelta):
                self._call_args(ev)
            elif isinstance(ev, ToolCallEnd):
                item = self._calls.get(ev.index)
                if item is not None and item is self._open:
                    self._close("completed")

    def _emit(self, kind: str, **fields: Any) -> None:
        self.events.append({"type": kind, **fields})

    def _start(self, item: dict[str, Any]) -> dict[str, Any]:
        self._close("completed")
        self.items.append(item)
        self._open = item
        self._emit("response.output_item.added", output_index=len(self.items) - 1, item=_snapshot(item))
        return item

    def _reasoning(self, text: str) -> None:
        self._reasoning_text += text
        item = self._open
        index = len(self.items) - 1
        if item is None or item["type"] != "reasoning":
            item = self._start({"id": item_id("rs"), "type": "reasoning", "summary": [], "content": [],
                                "status": "in_progress"})
            index = len(self.items) - 1
            if self.summary:
                item["summary"].append({"type": "summary_text", "text": ""})
                self._emit("response.reasoning_summary_part.added", item_id=item["id"], output_index=index,
                           summary_index=0, part={"type": "summary_text", "text": ""})
            else:
                item["content"].append({"type": "reasoning_text", "text": ""})
                self._emit("response.content_part.added", item_id=item["id"], output_index=index,
                           content_index=0, part={"type": "reasoning_text", "text": ""})
        if self.summary:
            item["summary"][0]["text"] += text
            self._emit("response.reasoning_summary_text.delta", item_id=item["id"], output_index=index,
                       summary_index=0, delta=text)
            return
        item["content"][0]["text"] += text
        self._emit("response.reasoning_text.delta", item_id=item["id"], output_index=index,
                   content_index=0, delta=text)

    def _content(self, text: str) -> None:
        item = self._open
        if item is None or item["type"] != "message":
            if not text.strip():  # whitespace alone (e.g. between calls) does not start a message
                self._pending += text
                return
            item = self._start({"id": item_id("msg"), "type": "message", "role": "assistant", "content": [],
                                "status": "in_progress"})
            item["content"].append({"type": "output_text", "text": "", "annotations": []})
            self._emit("response.content_part.added", item_id=item["id"], output_index=len(self.items) - 1,
                       content_index=0, part={"type": "output_text", "text": "", "annotations": []})
            text, self._pending = self._pending + text, ""
        item["content"][0]["text"] += text
        self._emit("response.output_text.delta", item_id=item["id"], output_index=len(self.items) - 1,
                   content_index=0, delta=text, logprobs=[])

    def _call_start(self, ev: ToolCallStart) -> None:
        if ev.name in self.custom:
            self._custom_args[ev.index] = ""
            self._calls[ev.index] = self._start({"id": item_id("ctc"), "type": "custom_tool_call", "call_id": ev.id,
                                                 "name": ev.name, "input": "", "status": "in_progress"})
            return
        item = {"id": item_id("fc"), "type": "function_call", "call_id": ev.id, "name": ev.name,
                "arguments": "", "status": "in_progress"}
        if ev.name in self.namespaces:
            item["namespace"] = self.namespaces[ev.name]
        self._calls[ev.index] = self._start(item)

    def _call_args(self, ev: ToolCallArgsDelta) -> None:
        item = self._calls.get(ev.index)
        if item is None:
            return
        if item["type"] == "custom_tool_call":  # the input is known whole once the call's JSON closes
            self._custom_args[ev.index] += ev.text
            return
        item["arguments"] += ev.text
        self._emit("response.function_call_arguments.delta", item_id=item["id"],
                   output_index=self.items.index(item), delta=ev.text)

    def _close(self, status: str) -> None:
        item, self._open = self._open, None
        if item is None:
            return
        index = self.items.index(item)
        item["status"] = status
        if item["type"] == "message":
            part = item["content"][0]
            self._emit("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                       text=part["text"], logprobs=[])
            self._emit("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                       part=dict(part))
        elif item["type"] == "reasoning" and self.summary:
            part = item["summary"][0]
            self._emit("response.reasoning_summary_text.done", item_id=item["id"], output_index=index,
                       summary_index=0, text=part["text"])
            self._emit("response.reasoning_summary_part.done", item_id=item["id"], output_index=index,
                       summary_index=0, part=dict(part))
        elif item["type"] == "reasoning":
            part = item["content"][0]
            self._emit("response.reasoning_text.done", item_id=item["id"], output_index=index, content_index=0,
                       text=part["text"])
            self._emit("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                       part=dict(part))
        elif item["type"] == "custom_tool_call":
            raw = next((self._custom_args[i] for i, it in self._calls.items() if it is item), "")
            item["input"] = custom_input(raw)
            self._emit("response.custom_tool_call_input.delta", item_id=item["id"], output_index=index,
                       delta=item["input"])
            self._emit("response.custom_tool_call_input.done", item_id=item["id"], output_index=index,
                       input=item["input"])
        elif item["type"] == "function_call":
            item["arguments"] = item["arguments"] or "{}"
            self._emit("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                       name=item["name"], arguments=item["arguments"])
        self._emit("response.output_item.done", output_index=index, item=_snapshot(item))


def custom_input(arguments: str) -> str:
    """A custom tool's free text from the call's arguments (``{"input": ...}``; else them as written)."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError:
        return arguments
    if isinstance(value, dict) and isinstance(value.get(INPUT), str):
        return value[INPUT]
    return arguments


def _snapshot(item: dict[str, Any]) -> dict[str, Any]:
    """A copy of an item as it stands (events must not change when the item grows later)."""
    out = dict(item)
    for key in ("content", "summary"):
        if key in out:
            out[key] = [dict(c) for c in item[key]] if item["status"] != "in_progress" else []
    return out
