"""Small text-scanning helpers shared by the parsers: partial markers, bracket matching, JSON."""

from __future__ import annotations

import json
import re
from typing import Any, Iterable

# Sentinel results of the three-way prefix test :func:`match_at`.
MATCH = "match"
PARTIAL = "partial"  # the text ends before it can be decided
NO_MATCH = "no"

_CLOSER = {"{": "}", "[": "]", "(": ")"}


def held_suffix_length(text: str, markers: Iterable[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of one of ``markers``.

    That suffix could still grow into a marker, so it must not be emitted yet.
    """
    held = 0
    for marker in markers:
        for k in range(min(len(marker) - 1, len(text)), held, -1):
            if text.endswith(marker[:k]):
                held = k
                break
    return held


def find_first(text: str, markers: Iterable[str], start: int = 0) -> tuple[int, str] | None:
    """The earliest occurrence of any marker at or after ``start`` (longest marker on ties)."""
    best: tuple[int, str] | None = None
    for marker in markers:
        i = text.find(marker, start)
        if i >= 0 and (best is None or i < best[0] or (i == best[0] and len(marker) > len(best[1]))):
            best = (i, marker)
    return best


def match_at(text: str, i: int, marker: str) -> str:
    """Whether ``text[i:]`` starts with ``marker``: MATCH, NO_MATCH, or PARTIAL when the text
    ends first and is still a prefix of the marker."""
    rest = text[i : i + len(marker)]
    if rest == marker:
        return MATCH
    if marker.startswith(rest):
        return PARTIAL
    return NO_MATCH


def match_any_at(text: str, i: int, markers: Iterable[str]) -> tuple[str, str]:
    """Like :func:`match_at` for several markers: (MATCH, marker), (PARTIAL, ""), or (NO_MATCH, "")."""
    partial = False
    for marker in markers:
        result = match_at(text, i, marker)
        if result == MATCH:
            return MATCH, marker
        partial = partial or result == PARTIAL
    return (PARTIAL, "") if partial else (NO_MATCH, "")


def skip_whitespace(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i].isspace():
        i += 1
    return i


class BracketScanner:
    """Finds the end of a bracketed value (``{..}``, ``[..]``) in a growing text, resuming where
    the previous call stopped, so feeding a long value token by token stays linear.

    Brackets inside string literals are ignored.  ``quotes`` is ``'"'`` for JSON and ``"'\\""``
    for Python literals.
    """

    def __init__(self, start: int, quotes: str = '"'):
        self.start = start
        self._pos = start
        self._stack: list[str] = []
        self._quote = ""
        self._result: int | None = None
        self._outside = re.compile("[" + re.escape("{}[]()" + quotes) + "]")
        self._inside = {q: re.compile(r"[\\" + q + "]") for q in quotes}
        self.quotes = quotes

    def scan(self, text: str) -> int | None:
        """Index just past the matching close bracket; None while incomplete; -1 when the
        brackets do not match (or the text at ``start`` is not an opening bracket)."""
        if self._result is not None:
            return self._result
        if self._pos == self.start:
            if self.start >= len(text):
                return None
            if text[self.start] not in _CLOSER:
                self._result = -1
                return -1
        i = self._pos
        while True:
            if self._quote:
                found = self._inside[self._quote].search(text, i)
                if found is None:
                    self._pos = len(text)
                    return None
                i = found.start()
                if text[i] == "\\":
                    if i + 1 >= len(text):
                        self._pos = i  # re-read the escape once its next character arrives
                        return None
                    i += 2
                    continue
                self._quote = ""
                i += 1
                continue
            found = self._outside.search(text, i)
            if found is None:
                self._pos = len(text)
                return None
            i = found.start()
            char = text[i]
            i += 1
            if char in self.quotes:
                self._quote = char
            elif char in _CLOSER:
                self._stack.append(_CLOSER[char])
            elif not self._stack or self._stack.pop() != char:
                self._result = -1
                return -1
            elif not self._stack:
                self._result = i
                return i


def loads_or_none(text: str) -> Any:
    """``json.loads`` that answers None for invalid JSON (and for the JSON ``null``)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def json_object_or_none(text: str) -> dict | None:
    """The JSON object ``text`` holds, or None (invalid JSON or not an object)."""
    value = loads_or_none(text)
    return value if isinstance(value, dict) else None


def dump_arguments(arguments: dict) -> str | None:
    """The canonical arguments string: ``json.dumps`` keeping unicode readable; None when the
    value cannot be represented as strict JSON (NaN, infinities, non-JSON types)."""
    try:
        return json.dumps(arguments, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return None


def arguments_from(value: Any) -> dict | None:
    """Normalize a call's arguments: an object, a JSON string holding an object, or missing
    (None -> empty object).  Anything else is not a valid arguments value."""
    if value is None:
        return {}
    if isinstance(value, str):
        value = loads_or_none(value) if value.strip() else {}
    return value if isinstance(value, dict) else None


def call_from_object(obj: Any, *, require_arguments: bool = False) -> tuple[str, dict] | None:
    """(name, arguments) from a JSON call object such as ``{"name": .., "arguments": {..}}``.

    Accepts ``arguments`` or ``parameters`` for the arguments, and the OpenAI wrapping
    ``{"type": "function", "function": {...}}``.  With ``require_arguments`` an object without an
    arguments key is not a call (used where a bare JSON answer could be mistaken for one).
    """
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("function"), dict) and "name" not in obj:
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return None
    key = "arguments" if "arguments" in obj else "parameters" if "parameters" in obj else None
    if key is None and require_arguments:
        return None
    arguments = arguments_from(obj.get(key) if key else None)
    if arguments is None:
        return None
    return name.strip(), arguments


def calls_from_value(value: Any, *, require_arguments: bool = False) -> list[tuple[str, dict]] | None:
    """Calls from a JSON array of call objects, a single call object, or ``{"tool_calls": [...]}``.
    None unless every element is a valid call and there is at least one."""
    if isinstance(value, dict) and isinstance(value.get("tool_calls"), list) and "name" not in value:
        value = value["tool_calls"]
    items = value if isinstance(value, list) else [value]
    calls = [call_from_object(item, require_arguments=require_arguments) for item in items]
    if not calls or any(call is None for call in calls):
        return None
    return calls  # type: ignore[return-value]
