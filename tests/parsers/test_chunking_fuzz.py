"""Chunking invariance on malformed input: random mixes of every format's markup, JSON
pieces and text must still parse the same way however they are split, and still give a
well-formed event stream."""

from __future__ import annotations

import random

import pytest
from parser_test_support import check_invariants, random_splits, run_chunks, split_at, summary

from vllm_mlx.parsers import REASONING_PARSERS, TOOL_PARSERS

PIECES = (
    "<tool_call>", "</tool_call>", "<think>", "</think>", "\n", " ", "Hello", "東京", "{", "}", "[", "]",
    '"', ":", ",", ";", '{"name": "f", "arguments": {"a": 1}}', '{"name": "g", "parameters": {"b": [1, 2]}}',
    '[{"name": "h", "arguments": {}}]', "<function=", "<function=f>", "</function>", "<parameter=x>",
    "</parameter>", "<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>", "[TOOL_CALLS]", "[ARGS]",
    "[CALL_ID]", "get_weather", "<|python_tag|>", "<|python_start|>", "<|python_end|>", "f(a=1)", "g()",
    "<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>", "<｜tool▁sep｜>", "<｜tool▁call▁end｜>",
    "<｜tool▁calls▁end｜>", "function", "```json\n", "```", "<|tool_calls_section_begin|>",
    "<|tool_call_begin|>", "functions.f:0", "<|tool_call_argument_begin|>", "<|tool_call_end|>",
    "<|tool_calls_section_end|>", "<|tool_call|>", "<TOOLCALL>", "</TOOLCALL>", ">>>", "all\n",
    "<|tool_call_start|>", "<|channel|>", "analysis", "final", "commentary to=functions.f",
    "<|constrain|>json", "<|message|>", "<|end|>", "<|start|>assistant", "<|call|>", "<|return|>",
    "<", "<|", "'", "\\", "true", "null", "'x'", "(", ")", "=", "[THINK]", "[/THINK]",
)  # fmt: skip


def random_cases(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    tools = sorted(TOOL_PARSERS) + [None]
    reasoning = sorted(REASONING_PARSERS) + [None]
    cases = []
    for _ in range(count):
        cases.append(
            {
                "tool_parser": rng.choice(tools),
                "reasoning_parser": rng.choice(reasoning),
                "starts_in_reasoning": rng.random() < 0.3,
                "text": "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 20))),
                "markup_allowed": True,
            }
        )
    return cases


@pytest.mark.parametrize("seed", range(4))
def test_random_markup_soup_is_chunking_invariant(seed):
    for case in random_cases(60, seed):
        text = case["text"]
        whole_events = run_chunks(case, [text])
        check_invariants(whole_events, case)
        whole = summary(whole_events)
        chunkings = [list(text)] + random_splits(text, count=5, seed=seed) if len(text) > 1 else []
        chunkings += [split_at(text, [cut]) for cut in range(1, len(text), 3)]
        for chunks in chunkings:
            events = run_chunks(case, chunks)
            check_invariants(events, case)
            assert summary(events) == whole, (case, chunks)
