"""Tool parsers for formats that write each argument in its own markup element: Qwen3-Coder
(``<parameter=..>``) and GLM 4.5 / 4.6 / 4.7 (``<arg_key>`` / ``<arg_value>``).

These stream: ``ToolCallStart`` as soon as the function name is known, then one arguments
fragment per completed parameter (``{"city": "Tokyo"``, ``, "days": 3``, then ``}``), so the
fragments always concatenate to ``json.dumps(arguments, ensure_ascii=False)``.  Values are
typed by the request's tool schema (:func:`~.coerce.parameter_value`); a parameter written
twice keeps its first value.
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar, Iterable

from .base import REJECT
from .coerce import parameter_value
from .json_tools import JsonBlockToolParser
from .scanning import MATCH, NO_MATCH, PARTIAL, find_first, match_any_at, match_at, skip_whitespace

_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"


class ArgumentElementsToolParser(JsonBlockToolParser):
    """Shared state for formats that stream one argument at a time."""

    def __init__(self, tools: Iterable[Any] | None = None):
        super().__init__(tools)
        self._function_name = ""
        self._argument_names: set[str] = set()

    def _begin_function(self, name: str) -> None:
        self._function_name = name
        self._argument_names = set()
        self._start_call(name)

    def _emit_argument(self, key: str, raw: str) -> None:
        if key in self._argument_names:
            return
        schema = self.schemas.get(self._function_name, {}).get("properties", {})
        value = parameter_value(raw, schema.get(key) if isinstance(schema, dict) else None)
        try:
            encoded = json.dumps(value, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError):
            encoded = json.dumps(raw, ensure_ascii=False)
        prefix = "{" if not self._argument_names else ", "
        self._argument_names.add(key)
        self._emit_arguments(f"{prefix}{json.dumps(key, ensure_ascii=False)}: {encoded}")

    def _end_function(self) -> None:
        if self._open_call is not None:
            self._emit_arguments("}" if self._argument_names else "{}")
            self._end_call()

    def _close_truncated_call(self) -> None:
        self._end_function()


def _strip_one_newline(text: str) -> str:
    """Qwen3-Coder writes ``<parameter=p>\\nVALUE\\n</parameter>``: drop those two newlines."""
    if text.startswith("\n"):
        text = text[1:]
    if text.endswith("\n"):
        text = text[:-1]
    return text


def _partial_name_ok(text: str) -> bool:
    """Whether ``text`` (a name still being written, possibly followed by the start of a
    marker) can still become a valid name."""
    head = text.split("<", 1)[0].strip()
    return not head or bool(_NAME.fullmatch(head))


class Qwen3CoderToolParser(ArgumentElementsToolParser):
    """Qwen3-Coder (and Qwen3.5-style XML):
    ``<tool_call>\\n<function=NAME>\\n<parameter=P>\\nVALUE\\n</parameter>\\n</function>\\n</tool_call>``.
    A Hermes JSON body inside ``<tool_call>`` is accepted too."""

    name: ClassVar[str] = "qwen3_coder"
    openers: ClassVar[tuple[str, ...]] = (TOOL_CALL_OPEN, "<function=")
    markers: ClassVar[tuple[str, ...]] = (TOOL_CALL_OPEN, TOOL_CALL_CLOSE)

    def _region_opened(self, opener: str) -> None:
        super()._region_opened(opener)
        self._phase = "open"

    def _parse_region(self, final: bool) -> int | None:
        while True:
            if self._phase == "open":
                result = self._parse_opening(final)
                if result is not True:
                    return result
            elif self._phase == "parameters":
                result = self._parse_parameter()
                if result is not True:
                    return result
            else:  # after </function>: an optional </tool_call>
                i = skip_whitespace(self._buffer, 0)
                status = match_at(self._buffer, i, TOOL_CALL_CLOSE)
                if status == MATCH:
                    return i + len(TOOL_CALL_CLOSE)
                if status == PARTIAL:
                    return len(self._buffer) if final else None
                return i

    def _parse_opening(self, final: bool) -> int | bool | None:
        buffer = self._buffer
        i = 0
        if self._opener == TOOL_CALL_OPEN:
            i = skip_whitespace(buffer, len(TOOL_CALL_OPEN))
            if i < len(buffer) and buffer[i] in "{[":
                return self._parse_json_calls(i, (TOOL_CALL_CLOSE,), final)
            status = match_at(buffer, i, "<function=")
            if status != MATCH:
                return None if status == PARTIAL else REJECT
        start = i + len("<function=")
        close = buffer.find(">", start)
        if close < 0:
            return None if _partial_name_ok(buffer[start:]) else REJECT
        name = buffer[start:close].strip()
        if not _NAME.fullmatch(name) or not self.known(name):
            return REJECT
        self._begin_function(name)
        self._consume(close + 1)
        self._phase = "parameters"
        return True

    def _parse_parameter(self) -> int | bool | None:
        buffer = self._buffer
        i = skip_whitespace(buffer, 0)
        status, marker = match_any_at(buffer, i, ("<parameter=", "</function>", TOOL_CALL_CLOSE))
        if status == PARTIAL:
            return None
        if status == NO_MATCH:
            self._end_function()  # unexpected text: the call ends, the text is content
            return i
        if marker != "<parameter=":
            self._end_function()
            if marker == TOOL_CALL_CLOSE:
                return i + len(marker)
            self._consume(i + len(marker))
            self._phase = "closing"
            return True
        name_start = i + len(marker)
        name_end = buffer.find(">", name_start)
        if name_end < 0:
            return None
        value_end = self._find("</parameter>", name_end + 1)
        if value_end < 0:
            return None
        self._emit_argument(buffer[name_start:name_end].strip(), _strip_one_newline(buffer[name_end + 1 : value_end]))
        self._consume(value_end + len("</parameter>"))
        return True


class Glm45ToolParser(ArgumentElementsToolParser):
    """GLM-4.5 / 4.6 (``<tool_call>NAME\\n<arg_key>K</arg_key>\\n<arg_value>V</arg_value>\\n</tool_call>``)
    and GLM-4.7 (the same without the newlines)."""

    name: ClassVar[str] = "glm45"
    openers: ClassVar[tuple[str, ...]] = (TOOL_CALL_OPEN,)
    markers: ClassVar[tuple[str, ...]] = (
        TOOL_CALL_OPEN,
        TOOL_CALL_CLOSE,
        "<arg_key>",
        "</arg_key>",
        "<arg_value>",
        "</arg_value>",
    )

    def _region_opened(self, opener: str) -> None:
        super()._region_opened(opener)
        self._phase = "name"

    def _parse_region(self, final: bool) -> int | None:
        while True:
            result = self._parse_name(final) if self._phase == "name" else self._parse_argument()
            if result is not True:
                return result

    def _parse_name(self, final: bool) -> int | bool | None:
        buffer = self._buffer
        i = skip_whitespace(buffer, len(TOOL_CALL_OPEN))
        if i < len(buffer) and buffer[i] in "{[":
            return self._parse_json_calls(i, (TOOL_CALL_CLOSE,), final)
        found = find_first(buffer, ("\n", "<arg_key>", TOOL_CALL_CLOSE), i)
        if found is None:
            return None if _partial_name_ok(buffer[i:]) else REJECT
        name = buffer[i : found[0]].strip()
        if not _NAME.fullmatch(name) or not self.known(name):
            return REJECT
        self._begin_function(name)
        self._consume(found[0])
        self._phase = "arguments"
        return True

    def _parse_argument(self) -> int | bool | None:
        buffer = self._buffer
        i = skip_whitespace(buffer, 0)
        status, marker = match_any_at(buffer, i, ("<arg_key>", TOOL_CALL_CLOSE))
        if status == PARTIAL:
            return None
        if status == NO_MATCH or marker == TOOL_CALL_CLOSE:
            self._end_function()
            return i + len(marker) if marker else i
        key_end = buffer.find("</arg_key>", i)
        if key_end < 0:
            return None
        j = skip_whitespace(buffer, key_end + len("</arg_key>"))
        value_status = match_at(buffer, j, "<arg_value>")
        if value_status != MATCH:
            if value_status == PARTIAL:
                return None
            self._end_function()
            return i
        value_end = self._find("</arg_value>", j)
        if value_end < 0:
            return None
        self._emit_argument(buffer[i + len(marker) : key_end].strip(), buffer[j + len("<arg_value>") : value_end])
        self._consume(value_end + len("</arg_value>"))
        return True
