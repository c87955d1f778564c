"""Events produced by the output pipeline, and the helper that folds them into one result.

A generation is described as a stream of small events: reasoning text, content text, and tool
calls (start with a name, argument fragments, end).  Streaming responses forward the events as
they come; non-streaming responses feed the whole output through the same pipeline and call
:func:`aggregate` on the events, so both paths always agree.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass, field
from typing import Iterable, Union


@dataclass(frozen=True)
class ReasoningDelta:
    """A piece of the model's reasoning (thinking) text."""

    text: str


@dataclass(frozen=True)
class ContentDelta:
    """A piece of the user-visible answer."""

    text: str


@dataclass(frozen=True)
class ToolCallStart:
    """A tool call begins.  Emitted exactly once per call, with its name."""

    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ToolCallArgsDelta:
    """A fragment of the call's JSON arguments string; the fragments of one call concatenate to
    a valid JSON object."""

    index: int
    text: str


@dataclass(frozen=True)
class ToolCallEnd:
    """The call with this index is complete."""

    index: int


Event = Union[ReasoningDelta, ContentDelta, ToolCallStart, ToolCallArgsDelta, ToolCallEnd]


@dataclass(frozen=True)
class ToolCall:
    """One finished tool call: ``arguments`` is a JSON object serialized as a string."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ParsedOutput:
    """The whole output folded together: what a non-streaming response returns."""

    reasoning: str = ""
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)


def aggregate(events: Iterable[Event]) -> ParsedOutput:
    """Fold an event stream into reasoning text, content text and the tool calls in index order."""
    reasoning: list[str] = []
    content: list[str] = []
    starts: dict[int, ToolCallStart] = {}
    arguments: dict[int, list[str]] = {}
    for event in events:
        if isinstance(event, ReasoningDelta):
            reasoning.append(event.text)
        elif isinstance(event, ContentDelta):
            content.append(event.text)
        elif isinstance(event, ToolCallStart):
            starts[event.index] = event
            arguments.setdefault(event.index, [])
        elif isinstance(event, ToolCallArgsDelta):
            arguments.setdefault(event.index, []).append(event.text)
    calls = [
        ToolCall(id=start.id, name=start.name, arguments="".join(arguments[index]) or "{}")
        for index, start in sorted(starts.items())
    ]
    return ParsedOutput(reasoning="".join(reasoning), content="".join(content), tool_calls=calls)


def new_call_id() -> str:
    """An OpenAI-style tool call id: ``call_`` and 24 hex digits."""
    return "call_" + secrets.token_hex(12)


_ALPHANUMERIC = string.ascii_letters + string.digits


def new_short_call_id(length: int = 9) -> str:
    """An alphanumeric id of ``length`` characters (Mistral chat templates demand exactly 9)."""
    return "".join(secrets.choice(_ALPHANUMERIC) for _ in range(length))
