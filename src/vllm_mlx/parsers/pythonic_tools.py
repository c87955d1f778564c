"""Tool parsers for Python-call syntax: ``[get_weather(city="Tokyo"), get_time()]``.

The list is parsed with :mod:`ast` and only literals are accepted as argument values
(strings, numbers, booleans, None, lists, tuples, dicts, and the JSON spellings ``true``,
``false``, ``null``); nothing is evaluated.  Positional arguments are not calls of this
format.  A parameter named after a Python keyword (``from=...``) cannot be parsed by ``ast``;
such an output stays text.
"""

from __future__ import annotations

import ast
import re
from typing import Any, ClassVar

from .base import REJECT, MarkupToolParser
from .scanning import (
    MATCH,
    NO_MATCH,
    PARTIAL,
    calls_from_value,
    dump_arguments,
    loads_or_none,
    skip_whitespace,
)

_IDENTIFIER = re.compile(r"[A-Za-z_][\w.]*")
_NAMED_CONSTANTS = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}
_NOT_LITERAL = object()


def _literal(node: ast.AST) -> Any:
    """The JSON-compatible value of a literal expression, or _NOT_LITERAL."""
    if isinstance(node, ast.Constant):
        value = node.value
        if value is None or isinstance(value, (str, bool, int, float)):
            return value
        return _NOT_LITERAL
    if isinstance(node, ast.Name):
        return _NAMED_CONSTANTS.get(node.id, _NOT_LITERAL)
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_literal(item) for item in node.elts]
        return _NOT_LITERAL if any(item is _NOT_LITERAL for item in items) else items
    if isinstance(node, ast.Dict):
        result = {}
        for key_node, value_node in zip(node.keys, node.values):
            key = _literal(key_node) if key_node is not None else _NOT_LITERAL
            value = _literal(value_node)
            if not isinstance(key, str) or value is _NOT_LITERAL:
                return _NOT_LITERAL
            result[key] = value
        return result
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _literal(node.operand)
        if isinstance(operand, (int, float)) and not isinstance(operand, bool):
            return -operand if isinstance(node.op, ast.USub) else operand
    return _NOT_LITERAL


def _dotted_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        parent = _dotted_name(node.value)
        return f"{parent}.{node.attr}" if parent else None
    return None


def calls_from_python(text: str) -> list[tuple[str, dict]] | None:
    """(name, arguments) for each call in a Python list of calls, or None if ``text`` is not
    exactly such a list with keyword-literal arguments."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if not isinstance(tree.body, ast.List) or not tree.body.elts:
        return None
    calls = []
    for node in tree.body.elts:
        if not isinstance(node, ast.Call) or node.args:
            return None
        name = _dotted_name(node.func)
        arguments = {}
        for keyword in node.keywords:
            value = _literal(keyword.value)
            if keyword.arg is None or value is _NOT_LITERAL:
                return None
            arguments[keyword.arg] = value
        if name is None or dump_arguments(arguments) is None:
            return None
        calls.append((name, arguments))
    return calls


def looks_like_call_list(text: str, start: int) -> str:
    """Early check for ``[name(`` at ``start``: MATCH, NO_MATCH, or PARTIAL while undecided."""
    i = skip_whitespace(text, start + 1)
    if i >= len(text):
        return PARTIAL
    named = _IDENTIFIER.match(text, i)
    if named is None:
        return NO_MATCH
    j = skip_whitespace(text, named.end())
    if j >= len(text):
        return PARTIAL
    return MATCH if text[j] == "(" else NO_MATCH


class PythonicToolParser(MarkupToolParser):
    """Llama 3.2 (pythonic template), ToolACE and other models answering with a bare call list.
    The list counts only at the very start of the output; any other text is content."""

    name: ClassVar[str] = "pythonic"
    start_openers: ClassVar[tuple[str, ...]] = ("[",)
    closers: ClassVar[tuple[str, ...]] = ()
    markers: ClassVar[tuple[str, ...]] = ()
    accept_json: ClassVar[bool] = False

    def _parse_region(self, final: bool) -> int | None:
        buffer = self._buffer
        start = 0 if self._opener == "[" else skip_whitespace(buffer, len(self._opener))
        if start >= len(buffer):
            return None
        if buffer[start] != "[":
            return REJECT
        shape = looks_like_call_list(buffer, start)
        if shape == NO_MATCH and not self.accept_json:
            return REJECT
        if shape == PARTIAL:
            return None
        end = self._bracket_end(start, quotes="'\"")
        if end is None or end == REJECT:
            return end
        body = buffer[start:end]
        calls = calls_from_python(body) if shape == MATCH else None
        if calls is None and self.accept_json:
            calls = calls_from_value(loads_or_none(body), require_arguments=True)
        if calls is None or not all(self.known(name) for name, _ in calls):
            return REJECT
        consumed = self._after_closer(end, self.closers, final)
        if consumed is None:
            return None
        for name, arguments in calls:
            self._emit_call(name, arguments)
        return consumed


class Llama4PythonicToolParser(PythonicToolParser):
    """Llama 4 (pythonic template): the call list, optionally inside
    ``<|python_start|>…<|python_end|>``."""

    name: ClassVar[str] = "llama4_pythonic"
    openers: ClassVar[tuple[str, ...]] = ("<|python_start|>",)
    closers: ClassVar[tuple[str, ...]] = ("<|python_end|>",)
    markers: ClassVar[tuple[str, ...]] = ("<|python_start|>", "<|python_end|>")


class Lfm2ToolParser(PythonicToolParser):
    """LiquidAI LFM2 / LFM2.5: ``<|tool_call_start|>[get_weather(city="Tokyo")]<|tool_call_end|>``
    anywhere in the output; a JSON array of ``{"name", "arguments"}`` inside the markers
    (LFM2's JSON mode) is accepted too."""

    name: ClassVar[str] = "lfm2"
    start_openers: ClassVar[tuple[str, ...]] = ()
    openers: ClassVar[tuple[str, ...]] = ("<|tool_call_start|>",)
    closers: ClassVar[tuple[str, ...]] = ("<|tool_call_end|>",)
    markers: ClassVar[tuple[str, ...]] = ("<|tool_call_start|>", "<|tool_call_end|>")
    accept_json: ClassVar[bool] = True
