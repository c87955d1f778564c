"""Tool parsers for Llama 3.x JSON calls and Functionary v3 (both forms).

Shared markup: ``<function=NAME>{json}</function>`` (Llama 3.1 custom-tool format and
Functionary v3.1).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Iterable

from .base import REJECT
from .json_tools import JsonBlockToolParser
from .scanning import (
    call_from_object,
    dump_arguments,
    json_object_or_none,
    loads_or_none,
    skip_whitespace,
)

FUNCTION_OPEN = "<function="
FUNCTION_CLOSE = "</function>"
PYTHON_TAG = "<|python_tag|>"
_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


class FunctionTagToolParser(JsonBlockToolParser):
    """Parses one ``<function=NAME>{json}</function>`` region."""

    def _parse_function_tag(self, final: bool) -> int | None:
        buffer = self._buffer
        start = len(FUNCTION_OPEN)
        close = buffer.find(">", start)
        if close < 0:
            partial = buffer[start:]
            return None if not partial or _NAME.fullmatch(partial) else REJECT
        name = buffer[start:close]
        if not _NAME.fullmatch(name) or not self.known(name):
            return REJECT
        i = skip_whitespace(buffer, close + 1)
        if i >= len(buffer):
            return None
        end = self._bracket_end(i)
        if end is None or end == REJECT:
            return end
        arguments = json_object_or_none(buffer[i:end])
        if arguments is None or dump_arguments(arguments) is None:
            return REJECT
        consumed = self._after_closer(end, (FUNCTION_CLOSE,), final)
        if consumed is not None:
            self._emit_call(name, arguments)
        return consumed


class Llama3JsonToolParser(FunctionTagToolParser):
    """Llama 3.1 / 3.2 / 3.3 (and Llama 4 with its JSON template).

    - JSON calls ``{"name": "f", "parameters": {...}}`` (``arguments`` accepted too), optionally
      after ``<|python_tag|>``, several separated by ``;``.  A bare JSON object counts only at
      the very start of the output and only with a name and arguments: a JSON answer that is
      not a call stays text.
    - ``<function=NAME>{json}</function>`` anywhere in the output.
    """

    name: ClassVar[str] = "llama3_json"
    start_openers: ClassVar[tuple[str, ...]] = ("{",)
    openers: ClassVar[tuple[str, ...]] = (PYTHON_TAG, FUNCTION_OPEN)
    markers: ClassVar[tuple[str, ...]] = (PYTHON_TAG,)

    def _region_opened(self, opener: str) -> None:
        super()._region_opened(opener)
        self._calls_in_region = 0

    def _parse_region(self, final: bool) -> int | None:
        if self._opener == FUNCTION_OPEN:
            return self._parse_function_tag(final)
        while True:
            buffer = self._buffer
            separator = 0
            if self._calls_in_region == 0:
                i = skip_whitespace(buffer, len(PYTHON_TAG) if self._opener == PYTHON_TAG else 0)
            else:
                separator = skip_whitespace(buffer, 0)
                if separator >= len(buffer):
                    return len(buffer) if final else None
                if buffer[separator] != ";":
                    return separator
                i = skip_whitespace(buffer, separator + 1)
            if i >= len(buffer):
                return (len(buffer) if self._calls_in_region else None) if final else None
            end = self._bracket_end(i)
            if end is None:
                return None
            call = None if end == REJECT else call_from_object(loads_or_none(buffer[i:end]), require_arguments=True)
            if call is None or not self._emit_call(*call):
                return REJECT if self._calls_in_region == 0 else separator
            self._calls_in_region += 1
            self._consume(end)


class FunctionaryV3ToolParser(FunctionTagToolParser):
    """MeetKai Functionary v3.

    - v3.2: every message starts with ``>>>RECIPIENT\\n``; ``all`` is text for the user, any
      other recipient is a call whose body is the JSON arguments:
      ``>>>all\\nLet me check.>>>get_weather\\n{"city": "Tokyo"}``.  The chat template ends the
      prompt with ``>>>``, so the output itself starts with the first recipient.
    - v3.1: ``<function=NAME>{json}</function>``.
    """

    name: ClassVar[str] = "functionary_v3"
    openers: ClassVar[tuple[str, ...]] = (">>>", FUNCTION_OPEN)
    markers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, tools: Iterable[Any] | None = None):
        super().__init__(tools)
        # The prompt ends with ">>>": the output opens with a recipient line.
        self._in_region = True
        self._opener = ""

    def _parse_region(self, final: bool) -> int | None:
        if self._opener == FUNCTION_OPEN:
            return self._parse_function_tag(final)
        buffer = self._buffer
        start = len(self._opener)
        line_end = buffer.find("\n", start)
        if line_end < 0:
            partial = buffer[start:].strip()
            return None if not partial or _NAME.fullmatch(partial) else REJECT
        recipient = buffer[start:line_end].strip()
        if not _NAME.fullmatch(recipient):
            return REJECT
        if recipient == "all":
            return line_end + 1
        i = skip_whitespace(buffer, line_end + 1)
        if i >= len(buffer):
            return None
        end = self._bracket_end(i)
        if end is None or end == REJECT:
            return end
        arguments = json_object_or_none(buffer[i:end])
        if arguments is None or not self._emit_call(recipient, arguments):
            return REJECT
        return end
