"""The key property: for every fixture, any chunking of the output gives exactly the result of
feeding it whole, and that result is the expected one."""

from __future__ import annotations

import json

import pytest
from parser_test_support import (
    check_invariants,
    expected_summary,
    load_cases,
    random_splits,
    run_chunks,
    split_at,
    summary,
)

from vllm_mlx.parsers import aggregate

CASES = load_cases()


@pytest.fixture(params=CASES, ids=[case["id"] for case in CASES])
def case(request):
    return request.param


def test_whole_output_gives_expected_result(case):
    events = run_chunks(case, [case["text"]])
    check_invariants(events, case)
    result = aggregate(events)
    reasoning, content, calls = expected_summary(case)
    assert result.reasoning == reasoning
    assert result.content == content
    assert [(c.name, json.loads(c.arguments)) for c in result.tool_calls] == calls


def test_every_two_way_split_matches_whole(case):
    text = case["text"]
    whole = summary(run_chunks(case, [text]))
    for cut in range(1, len(text)):
        events = run_chunks(case, split_at(text, [cut]))
        check_invariants(events, case)
        assert summary(events) == whole, f"split at {cut}: {text[:cut]!r} | {text[cut:]!r}"


def test_random_splits_and_single_characters_match_whole(case):
    text = case["text"]
    whole = summary(run_chunks(case, [text]))
    chunkings = random_splits(text, count=40, seed=1234) + [list(text)]
    for chunks in chunkings:
        events = run_chunks(case, chunks)
        check_invariants(events, case)
        assert summary(events) == whole, f"chunks {chunks!r}"
