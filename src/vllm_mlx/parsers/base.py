"""Base classes: the reasoning and tool-call parser interfaces, and the region-scanning engine
most tool parsers are built on.

A tool parser receives the *content* part of the output (after reasoning was split off) in
arbitrary chunks and turns it into :class:`ContentDelta` and tool-call events.  Every parser
here is incremental and chunking-invariant: feeding the text in any split gives the same
events, up to how content text is divided between deltas.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Iterable

from .coerce import coerce_arguments, tool_schemas
from .events import (
    ContentDelta,
    Event,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallStart,
    new_call_id,
)
from .scanning import (
    MATCH,
    PARTIAL,
    BracketScanner,
    dump_arguments,
    find_first,
    held_suffix_length,
    match_any_at,
    skip_whitespace,
)

logger = logging.getLogger(__name__)

REJECT = -1
"""``_parse_region`` result: the text after the opener is not a tool call of this format."""


class ReasoningParser:
    """Splits reasoning from content.  Emits ReasoningDelta and ContentDelta events."""

    name: ClassVar[str] = ""
    markers: ClassVar[tuple[str, ...]] = ()
    """Marker strings the parser needs to see in the detokenized text."""

    def __init__(self) -> None:
        self.starts_in_reasoning = False

    def begin(self, *, starts_in_reasoning: bool) -> None:
        """Called by the pipeline before the first ``feed``: whether the prompt already opened
        a reasoning block (for example a template that ends the prompt with ``<think>``)."""
        self.starts_in_reasoning = starts_in_reasoning

    @classmethod
    def prompt_opens_reasoning(cls, prompt: str) -> bool:
        """Whether a rendered prompt leaves a reasoning block open for the output."""
        return False

    def feed(self, text: str) -> list[Event]:
        raise NotImplementedError

    def finish(self) -> list[Event]:
        raise NotImplementedError


class ToolParser:
    """Extracts tool calls from content text.  Subclasses implement ``feed`` and ``finish``.

    ``tools`` are the request's tool definitions; parsers whose format writes arguments as text
    use their schemas to type values.  Helpers below keep indices, ids and the once-only
    ``ToolCallStart`` consistent.
    """

    name: ClassVar[str] = ""
    markers: ClassVar[tuple[str, ...]] = ()
    """Marker strings the parser needs to see in the detokenized text."""
    owns_reasoning: ClassVar[bool] = False
    """True for formats (Harmony) where one parser splits reasoning, content and tool calls;
    the pipeline then gives it the raw output and bypasses the reasoning parser."""

    def __init__(self, tools: Iterable[Any] | None = None):
        self.schemas = tool_schemas(tools)
        self._events: list[Event] = []
        self._call_count = 0
        self._open_call: int | None = None
        self._used_ids: set[str] = set()

    def feed(self, text: str) -> list[Event]:
        raise NotImplementedError

    def finish(self) -> list[Event]:
        raise NotImplementedError

    # -- event helpers ---------------------------------------------------------------------

    def new_call_id(self) -> str:
        return new_call_id()

    def _emit_content(self, text: str) -> None:
        if text:
            self._events.append(ContentDelta(text))

    def _start_call(self, name: str, call_id: str | None = None) -> int:
        """Open a call: one ToolCallStart with the next index."""
        if not call_id or call_id in self._used_ids:
            call_id = self.new_call_id()
        self._used_ids.add(call_id)
        index = self._call_count
        self._call_count += 1
        self._open_call = index
        self._events.append(ToolCallStart(index=index, id=call_id, name=name))
        return index

    def _emit_arguments(self, text: str) -> None:
        if text and self._open_call is not None:
            self._events.append(ToolCallArgsDelta(index=self._open_call, text=text))

    def _end_call(self) -> None:
        if self._open_call is not None:
            self._events.append(ToolCallEnd(index=self._open_call))
            self._open_call = None

    def known(self, name: str) -> bool:
        """Whether ``name`` is a tool of the request. A call to any other name is not a call: its
        text stays content (a model that invents tools must not make the client run them)."""
        return not self.schemas or name in self.schemas

    def _emit_call(self, name: str, arguments: dict, call_id: str | None = None) -> bool:
        """A complete call in one go (start, the canonical arguments string, end).  False when
        the arguments cannot be serialized as strict JSON, or the tool is not one of the request's;
        nothing is emitted then.  Values are coerced to the types the tool's schema declares
        (e.g. ``"3"`` for an integer)."""
        if not self.known(name):
            return False
        if isinstance(arguments, dict) and self.schemas.get(name):
            arguments = coerce_arguments(arguments, self.schemas[name])
        serialized = dump_arguments(arguments)
        if serialized is None:
            return False
        self._start_call(name, call_id)
        self._emit_arguments(serialized)
        self._end_call()
        return True

    def _take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events


class MarkupToolParser(ToolParser):
    """The engine behind most tool parsers: content is scanned for an *opener* (a marker such as
    ``<tool_call>``); from the opener on, text belongs to a *region* that the subclass parses
    with :meth:`_parse_region` until it reports the region's end.

    - ``openers`` start a region anywhere in the content.
    - ``start_openers`` start a region only at the very beginning of the output (leading
      whitespace allowed); used by formats without markers, such as a bare JSON object.
    - While the end of the content could still be the beginning of an opener, it is held back.
    - A region the subclass rejects is plain content after all (opener included).
    - A region still open at ``finish`` (the model stopped mid-call) is emitted as content,
      raw, so no text is lost; a call whose start was already streamed is closed first with the
      arguments complete so far (see :meth:`_close_truncated_call`).
    """

    openers: ClassVar[tuple[str, ...]] = ()
    start_openers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, tools: Iterable[Any] | None = None):
        super().__init__(tools)
        self._buffer = ""
        self._in_region = False
        self._opener = ""
        self._at_output_start = True
        self._searched: dict[tuple[str, int], int] = {}
        self._scanner: BracketScanner | None = None

    def feed(self, text: str) -> list[Event]:
        self._buffer += text
        self._drain(final=False)
        return self._take_events()

    def finish(self) -> list[Event]:
        self._drain(final=True)
        if self._in_region:
            logger.info("%s: output ended inside a tool call; emitting it as text", type(self).__name__)
            self._close_truncated_call()
            self._in_region = False
        self._emit_content(self._buffer)
        self._buffer = ""
        return self._take_events()

    # -- subclass interface ----------------------------------------------------------------

    def _parse_region(self, final: bool) -> int | None:
        """Parse ``self._buffer``, which starts at the region's current position (initially at
        ``self._opener``).  Return the number of characters that end the region (0 or more;
        the rest of the buffer is scanned as content again), None when more text is needed,
        or REJECT when the text is not a call of this format (only before anything of the
        region was consumed).  A streaming subclass may consume parts of the buffer itself
        (with :meth:`_consume`) and emit events while returning None."""
        raise NotImplementedError

    def _close_truncated_call(self) -> None:
        """At ``finish`` inside a region: close a call whose start was already emitted."""
        if self._open_call is not None:
            self._end_call()

    def _region_opened(self, opener: str) -> None:
        """Hook: a region starts with ``opener`` (reset per-region state here)."""

    def _consume(self, length: int) -> None:
        self._buffer = self._buffer[length:]
        self._forget_positions()

    def _forget_positions(self) -> None:
        """Positions cached by ``_find`` / ``_bracket_end`` refer to the old buffer."""
        self._searched.clear()
        self._scanner = None

    def _bracket_end(self, start: int, quotes: str = '"') -> int | None:
        """End of the bracketed value (``{..}`` / ``[..]``) at ``start``: None while incomplete,
        REJECT when it is not one.  Resumes across feeds (see :class:`BracketScanner`)."""
        scanner = self._scanner
        if scanner is None or scanner.start != start or scanner.quotes != quotes:
            scanner = self._scanner = BracketScanner(start, quotes)
        return scanner.scan(self._buffer)

    def _after_closer(self, end: int, closers: tuple[str, ...], final: bool) -> int | None:
        """Where a region whose call ended at ``end`` stops: after an optional closing marker
        (whitespace before it allowed) when one follows, else at ``end``.  None while the text
        could still become the marker; at the end of the output a partial marker is dropped."""
        if not closers:
            return end
        i = skip_whitespace(self._buffer, end)
        status, marker = match_any_at(self._buffer, i, closers)
        if status == MATCH:
            return i + len(marker)
        if status == PARTIAL:
            return len(self._buffer) if final else None
        return end

    def _find(self, marker: str, start: int) -> int:
        """``self._buffer.find(marker, start)`` that does not search the same text again on the
        next feed (the region's buffer only grows until something is consumed), so a long
        value streamed in small pieces stays linear."""
        key = (marker, start)
        searched = self._searched.get(key, start)
        position = self._buffer.find(marker, max(start, searched - len(marker) + 1))
        if position < 0:
            self._searched[key] = len(self._buffer)
        return position

    # -- engine ------------------------------------------------------------------------------

    def _drain(self, final: bool) -> None:
        while self._buffer:
            if self._in_region:
                result = self._parse_region(final)
                if result is None:
                    return
                self._in_region = False
                if result == REJECT:
                    self._emit_content(self._opener)
                    self._consume(len(self._opener))
                    self._at_output_start = False
                else:
                    self._consume(result)
                    self._at_output_start = False
                continue
            if not self._scan_content(final):
                return

    def _scan_content(self, final: bool) -> bool:
        """Emit content up to the next opener and enter its region.  False when the buffer
        holds nothing more that can be decided now."""
        buffer = self._buffer
        if self._at_output_start and self.start_openers:
            stripped = buffer.lstrip()
            if not stripped:
                if final:
                    self._emit_content(buffer)
                    self._buffer = ""
                return False
            lead = len(buffer) - len(stripped)
            for opener in self.start_openers:
                if stripped.startswith(opener):
                    self._emit_content(buffer[:lead])
                    self._enter_region(lead, opener)
                    return True
            if not final and any(o.startswith(stripped) for o in self.start_openers):
                return False
        self._at_output_start = self._at_output_start and not buffer.strip()
        found = find_first(buffer, self.openers)
        if found is not None:
            position, opener = found
            self._emit_content(buffer[:position])
            self._enter_region(position, opener)
            return True
        held = 0 if final else held_suffix_length(buffer, self.openers)
        self._emit_content(buffer[: len(buffer) - held])
        self._buffer = buffer[len(buffer) - held :]
        return False

    def _enter_region(self, position: int, opener: str) -> None:
        self._buffer = self._buffer[position:]
        self._forget_positions()
        self._in_region = True
        self._opener = opener
        self._region_opened(opener)
