"""Helpers for the parser tests: fixture loading, running a pipeline over chunks, and checks
of the event-stream invariants."""

from __future__ import annotations

import json
import random
import re
import runpy
from pathlib import Path

from vllm_mlx.parsers import (
    ContentDelta,
    OutputPipeline,
    ReasoningDelta,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallStart,
    aggregate,
    get_reasoning_parser,
    get_tool_parser,
)

FIXTURES = Path(__file__).parent / "fixtures"

# Markup of every supported format: none of it may reach content in a parsed fixture.
MARKUP = (
    "<tool_call>", "</tool_call>", "<think>", "</think>", "<function=", "</function>",
    "<parameter=", "</parameter>", "<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>",
    "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]", "[THINK]", "[/THINK]", "<|python_tag|>",
    "<|python_start|>", "<|python_end|>", "<|tool_call|>", "<TOOLCALL>", "</TOOLCALL>",
    "<|tool_call_start|>", "<|tool_call_end|>", "｜tool▁", "<|tool_calls_section",
    "<|tool_call_begin|>", "<|tool_call_argument_begin|>", "<|channel|>", "<|message|>",
    "<|start|>", "<|end|>", "<|call|>", "<|return|>", "<|constrain|>", ">>>",
)  # fmt: skip

_OPENAI_ID = re.compile(r"call_[0-9a-f]{24}")
_MISTRAL_ID = re.compile(r"[A-Za-z0-9]{9}")


def load_cases() -> list[dict]:
    cases = []
    for path in sorted(FIXTURES.glob("*.py")):
        cases.extend(runpy.run_path(str(path))["CASES"])
    ids = [case["id"] for case in cases]
    assert len(ids) == len(set(ids)), "fixture ids must be unique"
    return cases


def make_pipeline(case: dict) -> OutputPipeline:
    tool_name = case.get("tool_parser")
    reasoning_name = case.get("reasoning_parser")
    tools = get_tool_parser(tool_name)(case.get("tools")) if tool_name else None
    reasoning = get_reasoning_parser(reasoning_name)() if reasoning_name else None
    return OutputPipeline(reasoning, tools, starts_in_reasoning=case.get("starts_in_reasoning", False))


def run_chunks(case: dict, chunks: list[str]) -> list:
    pipeline = make_pipeline(case)
    events = []
    for chunk in chunks:
        events.extend(pipeline.feed(chunk))
    events.extend(pipeline.finish())
    return events


def split_at(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *sorted(cuts), len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


def random_splits(text: str, count: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    splits = []
    for _ in range(count):
        k = rng.randint(2, max(2, min(12, len(text) - 1)))
        splits.append(split_at(text, rng.sample(range(1, len(text)), min(k, len(text) - 1))))
    return splits


def check_invariants(events: list, case: dict) -> None:
    """The event stream is well formed: indices 0..n-1 in order, one start per call (so one
    name), arguments only while the call is open, every call ended, arguments valid JSON in
    canonical form, no empty deltas, and no markup in content."""
    started: dict[int, ToolCallStart] = {}
    ended: set[int] = set()
    arguments: dict[int, str] = {}
    open_call = None
    for event in events:
        if isinstance(event, ToolCallStart):
            assert open_call is None, "a call started while another is open"
            assert event.index == len(started), "indices must be 0, 1, 2, ... in order"
            started[event.index] = event
            arguments[event.index] = ""
            open_call = event.index
            check_call_id(event.id, case)
        elif isinstance(event, ToolCallArgsDelta):
            assert event.index == open_call, "arguments for a call that is not open"
            assert event.text
            arguments[event.index] += event.text
        elif isinstance(event, ToolCallEnd):
            assert event.index == open_call, "end for a call that is not open"
            ended.add(event.index)
            open_call = None
        else:
            assert isinstance(event, (ContentDelta, ReasoningDelta))
            assert event.text, "empty text delta"
    assert ended == set(started), "every started call must end"
    ids = [start.id for start in started.values()]
    assert len(ids) == len(set(ids)), "call ids must be unique"
    for text in arguments.values():
        value = json.loads(text or "{}")
        assert isinstance(value, dict)
        assert text == json.dumps(value, ensure_ascii=False), "arguments must be the canonical JSON string"
    if not case.get("markup_allowed"):
        content = aggregate(events).content
        for marker in MARKUP:
            assert marker not in content, f"markup {marker!r} leaked into content: {content!r}"


def check_call_id(call_id: str, case: dict) -> None:
    parser = case.get("tool_parser")
    if parser == "mistral":
        assert _MISTRAL_ID.fullmatch(call_id), call_id
    elif parser == "kimi_k2":
        assert call_id.startswith("functions.") or _OPENAI_ID.fullmatch(call_id), call_id
    else:
        assert _OPENAI_ID.fullmatch(call_id), call_id


def summary(events: list) -> tuple:
    """What must not depend on chunking: the aggregate (ids aside) and the order of blocks."""
    result = aggregate(events)
    blocks: list[str] = []
    for event in events:
        kind = (
            "reasoning" if isinstance(event, ReasoningDelta)
            else "content" if isinstance(event, ContentDelta)
            else f"call{event.index}"
        )  # fmt: skip
        if not blocks or blocks[-1] != kind:
            blocks.append(kind)
    calls = [(call.name, call.arguments) for call in result.tool_calls]
    return result.reasoning, result.content, calls, blocks


def expected_summary(case: dict) -> tuple:
    calls = [(name, arguments) for name, arguments in case["calls"]]
    return case["reasoning"], case["content"], calls
