"""Tool parsers for formats whose arguments are written as JSON inside markers.

Arguments are emitted once per call, when the call's JSON is complete, as the canonical
``json.dumps(arguments, ensure_ascii=False)`` string: a model's raw JSON (spacing, key order
of duplicates, escapes) cannot be streamed fragment by fragment and still be guaranteed to
concatenate to that canonical string, and correctness wins over granularity here.
"""

from __future__ import annotations

import re
from typing import ClassVar

from .base import REJECT, MarkupToolParser
from .events import new_short_call_id
from .scanning import (
    MATCH,
    PARTIAL,
    calls_from_value,
    dump_arguments,
    json_object_or_none,
    loads_or_none,
    match_any_at,
    match_at,
    skip_whitespace,
)

_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


class JsonBlockToolParser(MarkupToolParser):
    """An opener, one JSON value (a call object, an array of them, or ``{"tool_calls": [..]}``),
    then an optional closing marker."""

    closers: ClassVar[tuple[str, ...]] = ()
    require_arguments: ClassVar[bool] = False

    def _value_start(self, final: bool) -> int | None:
        """Where the JSON value starts (None: not known yet, REJECT: not this format)."""
        if self._opener in self.start_openers:
            return 0  # the opener is the value's first character
        return skip_whitespace(self._buffer, len(self._opener))

    def _closers_for(self, opener: str) -> tuple[str, ...]:
        return self.closers

    def _parse_region(self, final: bool) -> int | None:
        start = self._value_start(final)
        if start is None or start == REJECT:
            return start
        return self._parse_json_calls(start, self._closers_for(self._opener), final)

    def _parse_json_calls(self, start: int, closers: tuple[str, ...], final: bool) -> int | None:
        """The JSON value at ``start`` as calls, then an optional closing marker."""
        end = self._bracket_end(start)
        if end is None or end == REJECT:
            return end
        # Bare JSON at the start of the output must look fully like calls to count as calls.
        strict = self.require_arguments or self._opener in self.start_openers
        calls = calls_from_value(loads_or_none(self._buffer[start:end]), require_arguments=strict)
        if calls is None or any(dump_arguments(arguments) is None or not self.known(name) for name, arguments in calls):
            return REJECT
        consumed = self._after_closer(end, closers, final)
        if consumed is None:
            return None
        for name, arguments in calls:
            self._emit_call(name, arguments)
        return consumed


class HermesToolParser(JsonBlockToolParser):
    """Hermes 2 Pro / Hermes 3, Qwen2.5, Qwen3, QwQ and many fine-tunes:
    ``<tool_call>{"name": "f", "arguments": {...}}</tool_call>``, one block per call."""

    name: ClassVar[str] = "hermes"
    openers: ClassVar[tuple[str, ...]] = ("<tool_call>",)
    closers: ClassVar[tuple[str, ...]] = ("</tool_call>",)
    markers: ClassVar[tuple[str, ...]] = ("<tool_call>", "</tool_call>")


class GraniteToolParser(JsonBlockToolParser):
    """IBM Granite: ``<|tool_call|>[{"name": .., "arguments": ..}, ...]`` (3.0 token),
    ``<tool_call>[...]`` (3.1 string, no closing tag), a bare call array at the start of the
    output, and Granite 4's Hermes-style ``<tool_call>{...}</tool_call>``."""

    name: ClassVar[str] = "granite"
    start_openers: ClassVar[tuple[str, ...]] = ("[",)
    openers: ClassVar[tuple[str, ...]] = ("<|tool_call|>", "<tool_call>")
    closers: ClassVar[tuple[str, ...]] = ("</tool_call>",)
    markers: ClassVar[tuple[str, ...]] = ("<|tool_call|>", "<tool_call>", "</tool_call>")


class NemotronToolParser(JsonBlockToolParser):
    """NVIDIA Nemotron (Llama-Nemotron, Nemotron-Nano v2): ``<TOOLCALL>[{...}, ...]</TOOLCALL>``."""

    name: ClassVar[str] = "nemotron_json"
    openers: ClassVar[tuple[str, ...]] = ("<TOOLCALL>",)
    closers: ClassVar[tuple[str, ...]] = ("</TOOLCALL>",)
    markers: ClassVar[tuple[str, ...]] = ("<TOOLCALL>", "</TOOLCALL>")


class XLamToolParser(JsonBlockToolParser):
    """Salesforce xLAM: the whole answer is a JSON array ``[{"name": .., "arguments": ..}]``
    (xLAM-2), ``{"tool_calls": [...]}`` (xLAM-1), optionally inside a ```` ```json ```` fence;
    also after ``<tool_call>`` or ``[TOOL_CALLS]``.  Bare JSON counts only at the start of the
    output and only when every element has ``name`` and ``arguments``; anything else is text."""

    name: ClassVar[str] = "xlam"
    start_openers: ClassVar[tuple[str, ...]] = ("```", "[", "{")
    openers: ClassVar[tuple[str, ...]] = ("<tool_call>", "[TOOL_CALLS]")
    require_arguments: ClassVar[bool] = True
    markers: ClassVar[tuple[str, ...]] = ()

    def _value_start(self, final: bool) -> int | None:
        if self._opener in ("[", "{"):
            return 0
        i = len(self._opener)
        if self._opener == "```":
            status = match_at(self._buffer, i, "json")
            if status == PARTIAL:
                return None if not final else REJECT
            if status == MATCH:
                i += 4
        i = skip_whitespace(self._buffer, i)
        if i >= len(self._buffer):
            return None if not final else REJECT
        return i

    def _closers_for(self, opener: str) -> tuple[str, ...]:
        return {"```": ("```",), "<tool_call>": ("</tool_call>",)}.get(opener, ())


class MistralToolParser(MarkupToolParser):
    """Mistral: ``[TOOL_CALLS][{"name": .., "arguments": ..}, ...]`` (v0.3 / Nemo / Small 3),
    ``[TOOL_CALLS]name[ARGS]{...}`` (tokenizer v11+: Devstral, Magistral, Small 3.2), with an
    optional ``[CALL_ID]id`` before ``[ARGS]``, and ``[TOOL_CALLS]name{...}``.  Call ids are 9
    alphanumeric characters, as Mistral chat templates require for the next turn."""

    name: ClassVar[str] = "mistral"
    openers: ClassVar[tuple[str, ...]] = ("[TOOL_CALLS]",)
    markers: ClassVar[tuple[str, ...]] = ("[TOOL_CALLS]", "[ARGS]", "[CALL_ID]")

    def new_call_id(self) -> str:
        return new_short_call_id(9)

    def _parse_region(self, final: bool) -> int | None:
        buffer = self._buffer
        i = skip_whitespace(buffer, len(self._opener))
        if i >= len(buffer):
            return None
        if buffer[i] == "[":
            end = self._bracket_end(i)
            if end is None or end == REJECT:
                return end
            calls = calls_from_value(loads_or_none(buffer[i:end]))
            if calls is None or any(dump_arguments(arguments) is None or not self.known(name)
                                    for name, arguments in calls):
                return REJECT
            for name, arguments in calls:
                self._emit_call(name, arguments)
            return end
        named = _NAME.match(buffer, i)
        if named is None:
            return REJECT
        j = named.end()
        if j >= len(buffer):
            return None
        call_id = None
        if buffer[j] == "[":
            status, marker = match_any_at(buffer, j, ("[ARGS]", "[CALL_ID]"))
            if status != MATCH:
                return None if status == PARTIAL else REJECT
            j += len(marker)
            if marker == "[CALL_ID]":
                id_end = buffer.find("[ARGS]", j)
                if id_end < 0:
                    return None
                call_id = buffer[j:id_end].strip() or None
                j = id_end + len("[ARGS]")
        j = skip_whitespace(buffer, j)
        if j >= len(buffer):
            return None
        end = self._bracket_end(j)
        if end is None or end == REJECT:
            return end
        arguments = json_object_or_none(buffer[j:end])
        if arguments is None or not self._emit_call(named.group(), arguments, call_id):
            return REJECT
        return end


class SectionToolParser(MarkupToolParser):
    """Formats with a section of calls: ``SECTION_BEGIN (CALL_BEGIN ... CALL_END)* SECTION_END``
    (DeepSeek, Kimi K2).  Calls are emitted one by one as each closes.  A section opened by a
    bare ``CALL_BEGIN`` (the model skipped the section marker) is accepted too."""

    section_begins: ClassVar[tuple[str, ...]] = ()
    section_end: ClassVar[str] = ""
    call_begin: ClassVar[str] = ""

    def _region_opened(self, opener: str) -> None:
        self._calls_in_region = 0

    def _parse_call(self, start: int, final: bool) -> tuple[int, str, dict, str | None] | int | None:
        """One call whose body starts at ``start`` (after CALL_BEGIN): (end, name, arguments,
        model id), None when incomplete, REJECT when malformed."""
        raise NotImplementedError

    def _parse_region(self, final: bool) -> int | None:
        while True:
            buffer = self._buffer
            position = len(self._opener) if self._calls_in_region == 0 and self._opener != self.call_begin else 0
            i = skip_whitespace(buffer, position)
            status = match_at(buffer, i, self.section_end)
            if status == MATCH:
                return i + len(self.section_end)
            begin = match_at(buffer, i, self.call_begin)
            if begin == MATCH:
                parsed = self._parse_call(i + len(self.call_begin), final)
                if parsed is None:
                    return None
                if parsed == REJECT:
                    return REJECT if self._calls_in_region == 0 else i
                end, name, arguments, model_id = parsed  # type: ignore[misc]
                if not self._emit_call(name, arguments, model_id):
                    return REJECT if self._calls_in_region == 0 else i
                self._calls_in_region += 1
                self._consume(end)
                continue
            if PARTIAL in (status, begin):
                if not final:
                    return None
                return len(buffer) if self._calls_in_region else None
            return REJECT if self._calls_in_region == 0 else i

    def _arguments_at(self, start: int) -> tuple[int, dict] | int | None:
        """The JSON arguments object starting at (or after whitespace from) ``start``."""
        i = skip_whitespace(self._buffer, start)
        if i >= len(self._buffer):
            return None
        end = self._bracket_end(i)
        if end is None or end == REJECT:
            return end
        arguments = json_object_or_none(self._buffer[i:end])
        return REJECT if arguments is None else (end, arguments)

    def _expect(self, position: int, marker: str) -> int | None:
        """Index after ``marker`` at ``position`` (whitespace first allowed)."""
        i = skip_whitespace(self._buffer, position)
        status = match_at(self._buffer, i, marker)
        if status == MATCH:
            return i + len(marker)
        return None if status == PARTIAL else REJECT


class DeepSeekV3ToolParser(SectionToolParser):
    """DeepSeek V3 / R1-0528 and V3.1 (``｜`` is U+FF5C, ``▁`` is U+2581).

    V3 / R1, per call::

        <｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME
        ```json
        {...}
        ```<｜tool▁call▁end｜>

    V3.1, per call: ``<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}<｜tool▁call▁end｜>``.
    The calls sit between ``<｜tool▁calls▁begin｜>`` and ``<｜tool▁calls▁end｜>``.
    """

    name: ClassVar[str] = "deepseek_v3"
    section_begins: ClassVar[tuple[str, ...]] = ("<｜tool▁calls▁begin｜>",)
    section_end: ClassVar[str] = "<｜tool▁calls▁end｜>"
    call_begin: ClassVar[str] = "<｜tool▁call▁begin｜>"
    separator: ClassVar[str] = "<｜tool▁sep｜>"
    call_end: ClassVar[str] = "<｜tool▁call▁end｜>"
    openers: ClassVar[tuple[str, ...]] = section_begins + (call_begin,)
    markers: ClassVar[tuple[str, ...]] = (*section_begins, section_end, call_begin, separator, call_end)

    def _parse_call(self, start: int, final: bool) -> tuple[int, str, dict, str | None] | int | None:
        buffer = self._buffer
        separator = buffer.find(self.separator, start)
        if separator < 0:
            return None
        before = buffer[start:separator].strip()
        i = skip_whitespace(buffer, separator + len(self.separator))
        if i >= len(buffer):
            return None
        if buffer[i] == "{":  # V3.1: NAME<sep>{json}
            name = before
            parsed = self._arguments_at(i)
        else:  # V3: TYPE<sep>NAME\n```json\n{json}\n```
            line_end = buffer.find("\n", i)
            if line_end < 0:
                return None
            name = buffer[i:line_end].strip()
            fenced = not buffer[skip_whitespace(buffer, line_end) :].startswith("{")
            start_of_arguments = self._expect(line_end, "```") if fenced else line_end
            if start_of_arguments is None or start_of_arguments == REJECT:
                return start_of_arguments
            if fenced:
                if match_at(buffer, start_of_arguments, "json") == PARTIAL:
                    return None
                if buffer.startswith("json", start_of_arguments):
                    start_of_arguments += 4
            parsed = self._arguments_at(start_of_arguments)
            if fenced and isinstance(parsed, tuple):
                closing = self._expect(parsed[0], "```")
                if closing is None or closing == REJECT:
                    return closing
                parsed = (closing, parsed[1])
        if not isinstance(parsed, tuple):
            return parsed
        end = self._expect(parsed[0], self.call_end)
        if end is None or end == REJECT:
            return end
        if not _NAME.fullmatch(name):
            return REJECT
        return end, name, parsed[1], None


class KimiK2ToolParser(SectionToolParser):
    """Kimi K2 / K2.5, per call:
    ``<|tool_call_begin|>functions.NAME:0<|tool_call_argument_begin|>{...}<|tool_call_end|>``,
    the calls between ``<|tool_calls_section_begin|>`` and ``<|tool_calls_section_end|>``.

    The model's own call id (``functions.NAME:IDX``) is kept as the tool call id: Kimi's chat
    template writes ids back verbatim and the model expects that shape in the history.
    """

    name: ClassVar[str] = "kimi_k2"
    section_begins: ClassVar[tuple[str, ...]] = ("<|tool_calls_section_begin|>", "<|tool_call_section_begin|>")
    section_end: ClassVar[str] = "<|tool_calls_section_end|>"
    call_begin: ClassVar[str] = "<|tool_call_begin|>"
    argument_begin: ClassVar[str] = "<|tool_call_argument_begin|>"
    call_end: ClassVar[str] = "<|tool_call_end|>"
    openers: ClassVar[tuple[str, ...]] = section_begins + (call_begin,)
    markers: ClassVar[tuple[str, ...]] = (*section_begins, section_end, call_begin, argument_begin, call_end)
    _ID = re.compile(r"(?:functions\.)?([A-Za-z0-9_.\-]+?)(?::\d+)?")

    def _parse_call(self, start: int, final: bool) -> tuple[int, str, dict, str | None] | int | None:
        buffer = self._buffer
        argument_begin = buffer.find(self.argument_begin, start)
        if argument_begin < 0:
            return None
        model_id = buffer[start:argument_begin].strip()
        named = self._ID.fullmatch(model_id)
        if named is None:
            return REJECT
        parsed = self._arguments_at(argument_begin + len(self.argument_begin))
        if not isinstance(parsed, tuple):
            return parsed
        end = self._expect(parsed[0], self.call_end)
        if end is None or end == REJECT:
            return end
        return end, named.group(1), parsed[1], model_id
