"""Output parsing: reasoning and tool calls through one incremental pipeline.

Typical use, per request::

    reasoning = get_reasoning_parser(name)() if name else None
    tools = get_tool_parser(tool_name)(request_tools) if request_tools else None
    pipeline = OutputPipeline(reasoning, tools, starts_in_reasoning=prompt_opens_reasoning(name, prompt))
    for text in detokenized_pieces:
        send(pipeline.feed(text))
    send(pipeline.finish())

Non-streaming: ``aggregate(pipeline.run(full_text))``.  See docs/tool-calling.md.
"""

from .base import ReasoningParser, ToolParser
from .coerce import coerce_arguments, tool_schemas
from .events import (
    ContentDelta,
    Event,
    ParsedOutput,
    ReasoningDelta,
    ToolCall,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallStart,
    aggregate,
)
from .pipeline import OutputPipeline
from .registry import (
    REASONING_PARSERS,
    TOOL_PARSERS,
    detect_reasoning_parser,
    detect_tool_parser,
    get_reasoning_parser,
    get_tool_parser,
    prompt_opens_reasoning,
    required_markers,
)

__all__ = [
    "ContentDelta",
    "Event",
    "OutputPipeline",
    "ParsedOutput",
    "REASONING_PARSERS",
    "ReasoningDelta",
    "ReasoningParser",
    "TOOL_PARSERS",
    "ToolCall",
    "ToolCallArgsDelta",
    "ToolCallEnd",
    "ToolCallStart",
    "ToolParser",
    "aggregate",
    "coerce_arguments",
    "detect_reasoning_parser",
    "detect_tool_parser",
    "get_reasoning_parser",
    "get_tool_parser",
    "prompt_opens_reasoning",
    "required_markers",
    "tool_schemas",
]
