"""The output pipeline: detokenized text -> reasoning parser -> tool-call parser -> events.

Streaming responses call :meth:`OutputPipeline.feed` with each new piece of detokenized text
and forward the returned events; non-streaming responses feed the whole output once, call
:meth:`OutputPipeline.finish`, and fold the events with :func:`~.events.aggregate`.  The two
paths therefore cannot disagree.
"""

from __future__ import annotations

from .base import ReasoningParser, ToolParser
from .events import ContentDelta, Event, ReasoningDelta, ToolCallStart

_REASONING = "reasoning"
_CONTENT = "content"


class _BlockTrimmer:
    """Trims the whitespace that belongs to markup, never the answer's own.

    Models surround their markup with newlines (``<think>\n``, ``</think>\n\n``,
    ``\n<tool_call>``); those belong to neither the reasoning nor the answer. So whitespace is
    dropped only next to markup: at the start of a reasoning block, at the start of a block that
    follows another block or a tool call, and at the end of a block that another block or a
    tool call follows. Trailing whitespace is held back until the next text shows which case
    applies; at the end of the output it is released, so a plain answer (no markup at all) keeps
    every byte, leading and trailing whitespace included. Interior whitespace is never touched.
    """

    def __init__(self) -> None:
        self._block = ""  # kind of the current text block ("" before any text)
        self._held = ""  # trailing whitespace of the current block, not emitted yet
        self._after_tool_call = False

    def push(self, event: Event) -> list[Event]:
        if isinstance(event, ToolCallStart):
            self._after_tool_call = True  # held whitespace may still separate text before and after
            return [event]
        if not isinstance(event, (ReasoningDelta, ContentDelta)):
            return [event]
        kind = _REASONING if isinstance(event, ReasoningDelta) else _CONTENT
        text = event.text
        new_block = kind != self._block
        if new_block or self._after_tool_call:
            if new_block:
                self._held = ""  # whitespace before a change of block is the markup's
            if kind == _REASONING or self._block or self._after_tool_call:
                text = text.lstrip()
            if not text:
                return []
            self._block = kind
            self._after_tool_call = False
        body = self._held + text
        trimmed = body.rstrip()
        self._held = body[len(trimmed) :]
        if not trimmed:
            return []
        return [ReasoningDelta(trimmed) if kind == _REASONING else ContentDelta(trimmed)]

    def finish(self) -> list[Event]:
        """Release the trailing whitespace of the last block: nothing follows it."""
        held, self._held = self._held, ""
        if not held or self._after_tool_call or self._block != _CONTENT:
            return []
        return [ContentDelta(held)]


def _merge_text(events: list[Event]) -> list[Event]:
    """Join neighbouring deltas of the same kind so one feed returns compact events."""
    merged: list[Event] = []
    for event in events:
        previous = merged[-1] if merged else None
        if isinstance(event, ContentDelta) and isinstance(previous, ContentDelta):
            merged[-1] = ContentDelta(previous.text + event.text)
        elif isinstance(event, ReasoningDelta) and isinstance(previous, ReasoningDelta):
            merged[-1] = ReasoningDelta(previous.text + event.text)
        else:
            merged.append(event)
    return merged


class OutputPipeline:
    """One request's output parser.

    ``reasoning`` splits reasoning from content (None: everything is content).  ``tools``
    extracts tool calls from the content; pass None for a request without tools, and text that
    looks like a tool call stays content.  A tool parser that owns reasoning (Harmony) gets the
    raw output and the reasoning parser is not used.

    ``starts_in_reasoning``: the chat template opened the reasoning block in the prompt (see
    :meth:`ReasoningParser.prompt_opens_reasoning`), so the output begins inside reasoning.

    ``trim_whitespace`` drops whitespace at the edges of reasoning and content blocks (see
    :class:`_BlockTrimmer`); switch it off to get the text byte for byte.
    """

    def __init__(
        self,
        reasoning: ReasoningParser | None,
        tools: ToolParser | None,
        *,
        starts_in_reasoning: bool = False,
        trim_whitespace: bool = True,
    ):
        if tools is not None and tools.owns_reasoning:
            reasoning = None
        self.reasoning = reasoning
        self.tools = tools
        if reasoning is not None:
            reasoning.begin(starts_in_reasoning=starts_in_reasoning)
        self._trimmer = _BlockTrimmer() if trim_whitespace else None
        self._finished = False

    def feed(self, text: str) -> list[Event]:
        """Events for the next piece of output text (possibly none while text is held back)."""
        if self._finished:
            raise RuntimeError("feed() after finish()")
        if not text:
            return []
        stage = self.reasoning.feed(text) if self.reasoning is not None else [ContentDelta(text)]
        return self._finalize(self._through_tools(stage))

    def finish(self) -> list[Event]:
        """Events for everything still held back; call once, at the end of the output."""
        if self._finished:
            return []
        self._finished = True
        stage = self.reasoning.finish() if self.reasoning is not None else []
        events = self._through_tools(stage)
        if self.tools is not None:
            events.extend(self.tools.finish())
        events = self._finalize(events)
        if self._trimmer is not None:
            events = _merge_text(events + self._trimmer.finish())
        return events

    def _through_tools(self, events: list[Event]) -> list[Event]:
        if self.tools is None:
            return list(events)
        routed: list[Event] = []
        for event in events:
            if isinstance(event, ContentDelta):
                routed.extend(self.tools.feed(event.text))
            else:
                routed.append(event)
        return routed

    def _finalize(self, events: list[Event]) -> list[Event]:
        if self._trimmer is not None:
            events = [out for event in events for out in self._trimmer.push(event)]
        return _merge_text(events)

    def run(self, text: str) -> list[Event]:
        """The whole output at once: ``feed(text)`` then ``finish()``."""
        return self.feed(text) + self.finish()
