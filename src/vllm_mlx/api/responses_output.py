"""Responses API output: pipeline events (reasoning, content, tool calls) -> output items and the
streaming events that build them. Streaming and non-streaming both run this one builder."""

from __future__ import annotations

import secrets
from typing import Any

from ..parsers import ContentDelta, ReasoningDelta, ToolCallArgsDelta, ToolCallEnd, ToolCallStart
from ..serving.chat_output import OutputParsing


def item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


class OutputBuilder:
    """Folds parsed output into Responses output items; ``events`` collects the stream events
    (without sequence numbers) in order, for the streaming route to send."""

    def __init__(self, parsing: OutputParsing, namespaces: dict[str, str] | None = None):
        self.pipeline = parsing.pipeline()
        self.namespaces = namespaces or {}
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
        return "".join(c["text"] for it in self.items if it["type"] == "reasoning" for c in it["content"])

    def history(self) -> list[dict]:
        """The output as chat messages (for previous_response_id)."""
        message: dict[str, Any] = {"role": "assistant", "content": ""}
        for it in self.items:
            if it["type"] == "message":
                message["content"] += "".join(c["text"] for c in it["content"])
            elif it["type"] == "function_call":
                message.setdefault("tool_calls", []).append(
                    {"id": it["call_id"], "type": "function",
                     "function": {"name": it["name"], "arguments": it["arguments"]}})
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
        item = self._open
        if item is None or item["type"] != "reasoning":
            item = self._start({"id": item_id("rs"), "type": "reasoning", "summary": [], "content": [],
                                "status": "in_progress"})
            item["content"].append({"type": "reasoning_text", "text": ""})
            self._emit("response.content_part.added", item_id=item["id"], output_index=len(self.items) - 1,
                       content_index=0, part={"type": "reasoning_text", "text": ""})
        item["content"][0]["text"] += text
        self._emit("response.reasoning_text.delta", item_id=item["id"], output_index=len(self.items) - 1,
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
        item = {"id": item_id("fc"), "type": "function_call", "call_id": ev.id, "name": ev.name,
                "arguments": "", "status": "in_progress"}
        if ev.name in self.namespaces:
            item["namespace"] = self.namespaces[ev.name]
        self._calls[ev.index] = self._start(item)

    def _call_args(self, ev: ToolCallArgsDelta) -> None:
        item = self._calls.get(ev.index)
        if item is None:
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
        elif item["type"] == "reasoning":
            part = item["content"][0]
            self._emit("response.reasoning_text.done", item_id=item["id"], output_index=index, content_index=0,
                       text=part["text"])
            self._emit("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                       part=dict(part))
        elif item["type"] == "function_call":
            item["arguments"] = item["arguments"] or "{}"
            self._emit("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                       name=item["name"], arguments=item["arguments"])
        self._emit("response.output_item.done", output_index=index, item=_snapshot(item))


def _snapshot(item: dict[str, Any]) -> dict[str, Any]:
    """A copy of an item as it stands (events must not change when the item grows later)."""
    out = dict(item)
    if "content" in out:
        out["content"] = [dict(c) for c in item["content"]] if item["status"] != "in_progress" else []
    return out
