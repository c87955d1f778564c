"""gpt-oss Harmony: one parser splits reasoning, content and tool calls by channel.

The output is a sequence of messages ``<|start|>HEADER<|message|>BODY<|end|>``; the first
message's ``<|start|>assistant`` is already in the prompt, so the output usually begins with
``<|channel|>``.  A message's header names its channel and, for a tool call, its recipient:

- ``<|channel|>analysis`` -> reasoning
- ``<|channel|>final`` -> content
- ``<|channel|>commentary`` without a recipient -> content (a preamble meant for the user)
- ``to=functions.NAME`` (in the role or the channel part of the header, with or without
  ``<|constrain|>json``) -> a tool call whose body is the JSON arguments.  A body ends at
  ``<|call|>``, ``<|end|>`` or ``<|return|>``; since ``<|call|>`` and ``<|return|>`` are stop
  tokens that the engine may leave out of the text, the end of the output ends a body too.

Recipients outside the ``functions`` namespace (the built-in ``python`` / ``browser`` tools)
are not function calls: their body is content.  Output that does not start with Harmony markup
is plain content until a header appears.  All of this needs the special tokens in the
detokenized text (decode with ``skip_special_tokens=False``).
"""

from __future__ import annotations

import logging
import re
from typing import Any, ClassVar, Iterable

from .base import ReasoningParser, ToolParser
from .events import ContentDelta, Event, ReasoningDelta
from .scanning import (
    MATCH,
    PARTIAL,
    dump_arguments,
    find_first,
    held_suffix_length,
    json_object_or_none,
    match_any_at,
    skip_whitespace,
)

logger = logging.getLogger(__name__)

START = "<|start|>"
CHANNEL = "<|channel|>"
MESSAGE = "<|message|>"
END = "<|end|>"
CALL = "<|call|>"
RETURN = "<|return|>"
CONSTRAIN = "<|constrain|>"
HARMONY_MARKERS = (START, CHANNEL, MESSAGE, END, CALL, RETURN, CONSTRAIN)

_BODY_ENDS = (END, CALL, RETURN)
_HEADER_STARTS = (START, CHANNEL)
_OUTPUT_OPENINGS = (START, CHANNEL, " to=", "to=")
_RECIPIENT = re.compile(r"to=([^\s<]+)")
_WORD = re.compile(r"\s*([A-Za-z_][\w.\-]*)")
_LONGEST_MARKER = max(len(marker) for marker in HARMONY_MARKERS)
_MAX_HEADER = 1024  # a header this long without <|message|> is not a header

_OPENING = "opening"
_HEADER = "header"
_BODY = "body"
_BETWEEN = "between"


class HarmonyToolParser(ToolParser):
    """Harmony channels and tool calls (``--tool-call-parser openai``).  It owns reasoning too:
    the pipeline gives it the raw output.  With ``tool_calls=False`` (a request without
    tools) function-call messages are content: their JSON body is shown as text."""

    name: ClassVar[str] = "openai"
    markers: ClassVar[tuple[str, ...]] = HARMONY_MARKERS
    owns_reasoning: ClassVar[bool] = True

    def __init__(self, tools: Iterable[Any] | None = None, *, tool_calls: bool = True):
        super().__init__(tools)
        self.tool_calls_enabled = tool_calls
        self._buffer = ""
        self._state = _OPENING
        self._kind = "content"
        self._function = ""
        self._header_text = ""
        self._scanned = 0  # the buffer holds no marker starting before this index

    def feed(self, text: str) -> list[Event]:
        self._buffer += text
        self._drain(final=False)
        return self._take_events()

    def finish(self) -> list[Event]:
        self._drain(final=True)
        rest, self._buffer = self._buffer, ""
        if self._state == _HEADER:
            logger.info("harmony: output ended inside a message header; emitting it as text")
            self._emit_content(rest)
        elif self._state == _BODY:
            self._end_body(rest)
        elif rest.strip():
            self._emit_content(rest)
        return self._take_events()

    # -- states ------------------------------------------------------------------------------

    def _drain(self, final: bool) -> None:
        while self._buffer:
            if self._state == _OPENING:
                status, _ = match_any_at(self._buffer, 0, _OUTPUT_OPENINGS)
                if status == PARTIAL and not final:
                    return
                self._state = _HEADER if status == MATCH else _BODY
                self._kind = "content"
            elif self._state == _BETWEEN:
                i = skip_whitespace(self._buffer, 0)
                status, _ = match_any_at(self._buffer, i, _HEADER_STARTS)
                if status == PARTIAL:
                    return
                self._buffer = self._buffer[i:] if status == MATCH else self._buffer
                self._state = _HEADER if status == MATCH else _BODY
                self._kind = "content"
            elif self._state == _HEADER:
                if not self._read_header():
                    return
            elif not self._read_body():
                return

    def _read_header(self) -> bool:
        position = self._buffer.find(MESSAGE, 0, _MAX_HEADER + len(MESSAGE))
        if position < 0:
            if len(self._buffer) < _MAX_HEADER + len(MESSAGE):
                return False
            # Too long for a header: it was text after all.
            self._emit_content(self._buffer[:_MAX_HEADER])
            self._buffer = self._buffer[_MAX_HEADER:]
            self._state, self._kind = _BODY, "content"
            return True
        header = self._buffer[:position]
        self._header_text = self._buffer[: position + len(MESSAGE)]
        self._buffer = self._buffer[position + len(MESSAGE) :]
        self._kind, self._function = self._classify(header)
        self._state = _BODY
        return True

    def _classify(self, header: str) -> tuple[str, str]:
        """(kind, function name) for a message header."""
        header = header[len(START) :] if header.startswith(START) else header
        role_part, _, channel_part = header.partition(CHANNEL)
        role_word = _WORD.match(role_part)
        role = role_word.group(1) if role_word and not role_part.lstrip().startswith("to=") else "assistant"
        channel_word = _WORD.match(channel_part)
        channel = channel_word.group(1) if channel_word else ""
        recipient = _RECIPIENT.search(header)
        if recipient and role == "assistant" and recipient.group(1).startswith("functions."):
            return "tool", recipient.group(1)[len("functions.") :]
        if recipient is None and channel == "analysis":
            return "reasoning", ""
        return "content", ""

    def _read_body(self) -> bool:
        found = find_first(self._buffer, _BODY_ENDS + _HEADER_STARTS, self._scanned)
        if found is None:
            if self._kind == "tool":
                # The arguments are parsed as a whole; do not search this text again.
                self._scanned = max(0, len(self._buffer) - _LONGEST_MARKER + 1)
                return False
            held = held_suffix_length(self._buffer, HARMONY_MARKERS)
            self._emit_body(self._buffer[: len(self._buffer) - held])
            self._buffer = self._buffer[len(self._buffer) - held :]
            return False
        position, marker = found
        self._scanned = 0
        body = self._buffer[:position]
        consumed = position + len(marker) if marker in _BODY_ENDS else position
        self._buffer = self._buffer[consumed:]
        self._end_body(body)
        self._state = _BETWEEN if marker in _BODY_ENDS else _HEADER
        return True

    def _emit_body(self, text: str) -> None:
        if text:
            self._events.append(ReasoningDelta(text) if self._kind == "reasoning" else ContentDelta(text))

    def _end_body(self, body: str) -> None:
        """The rest of a message body: streamed kinds emit it; a tool call is parsed now."""
        if self._kind != "tool":
            self._emit_body(body)
            return
        arguments = json_object_or_none(body.strip())
        if not self.tool_calls_enabled:
            self._emit_content(body)
        elif (arguments is not None and self._function and dump_arguments(arguments) is not None
              and self.known(self._function)):
            self._emit_call(self._function, arguments)
        else:
            logger.info("harmony: tool call to %r without valid JSON arguments; emitting it as text", self._function)
            self._emit_content(self._header_text + body)
        self._kind = "content"


class HarmonyReasoningParser(ReasoningParser):
    """Harmony channels as a reasoning parser (``--reasoning-parser openai_gptoss``): analysis is
    reasoning, everything else content.  When the request has tools, the pipeline uses
    :class:`HarmonyToolParser` instead, which also extracts the calls."""

    name: ClassVar[str] = "openai_gptoss"
    markers: ClassVar[tuple[str, ...]] = HARMONY_MARKERS

    def __init__(self) -> None:
        super().__init__()
        self._channels = HarmonyToolParser(tool_calls=False)

    def feed(self, text: str) -> list[Event]:
        return self._channels.feed(text)

    def finish(self) -> list[Event]:
        return self._channels.finish()
