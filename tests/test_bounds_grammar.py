"""Grammars that cannot work: refused at compile time by the budget (llguidance's limits and a short dry
run), or -- failing later, while decoding -- ended with a 400 naming the problem, never the parser's
internal state, and counted in requests_failed (docs/reliability.md)."""

from __future__ import annotations

import json
import time

import httpx
import pytest

pytestmark = pytest.mark.reliability

HI = [{"role": "user", "content": "hi"}]
RECURSIVE = {"type": "object", "properties": {"x": {"$ref": "#"}}, "required": ["x"]}  # no finite instance
STATE_MARKERS = ("<state>", "Parser:", "<grammar>", "lexer_cost", "non-verbose")


def _engine(server) -> dict:
    return server.health()["engine"]


def _no_internal_state(message: str) -> None:
    assert not any(marker in message for marker in STATE_MARKERS), message
    assert len(message) < 400, message


def test_grammars_that_cannot_work_are_refused_before_the_engine(qwen3_server):
    base = qwen3_server.base_url
    failed_before = _engine(qwen3_server)["requests_failed"]
    tools = [{"type": "function", "function": {"name": "f", "parameters": RECURSIVE}}]
    cases = [
        ("/v1/chat/completions", {"messages": HI, "guided_regex": "(a{1000}){1000}"}, "guided_regex"),
        ("/v1/chat/completions", {"messages": HI, "response_format": {"type": "json_schema", "json_schema": {
            "name": "r", "schema": RECURSIVE}}}, "response_format"),
        ("/v1/chat/completions", {"messages": HI, "response_format": {"type": "json_schema", "json_schema": {
            "name": "r", "schema": {"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}}}}, "response_format"),
        ("/v1/chat/completions", {"messages": HI, "tools": tools, "tool_choice": "required"}, "tool_choice"),
        ("/v1/chat/completions", {"messages": HI, "tools": tools,
                                  "tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
        ("/v1/completions", {"prompt": "hi", "guided_regex": "(a{1000}){1000}"}, "guided_regex"),
        ("/v1/responses", {"input": "hi", "text": {"format": {"type": "json_schema", "name": "r",
                                                              "schema": RECURSIVE}}}, "text.format"),
        ("/v1/messages", {"messages": HI, "tools": [{"name": "f", "input_schema": RECURSIVE}],
                          "tool_choice": {"type": "any"}}, None),
    ]
    for path, body, param in cases:
        started = time.monotonic()
        resp = httpx.post(f"{base}{path}", json={"max_tokens": 8, **body}, timeout=60)
        assert resp.status_code == 400, (path, body, resp.text[:300])
        assert time.monotonic() - started < 10
        error = resp.json()
        if path == "/v1/messages":
            assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
            message = error["error"]["message"]
        else:
            message = error["error"]["message"]
            assert error["error"]["param"] == param, error
        assert "cannot be compiled" in message, message
        _no_internal_state(message)
    engine = _engine(qwen3_server)
    assert engine["requests_failed"] == failed_before and engine["running"] == 0  # none reached the engine


def test_a_grammar_failing_while_decoding_is_a_400_and_counted(qwen3_server, tiny_qwen3):
    """The dry run takes the cheap branch ("b"); the model, pushed by logit_bias, takes the other one,
    whose lexer blows its limit a few tokens later."""
    from transformers import AutoTokenizer

    x = AutoTokenizer.from_pretrained(tiny_qwen3).convert_tokens_to_ids("x")
    body = {"messages": HI, "max_tokens": 30, "guided_regex": "(b|x{12}(a{1000}){1000})",
            "logit_bias": {str(x): 100}}
    base = qwen3_server.base_url
    failed_before = _engine(qwen3_server)["requests_failed"]
    resp = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=120)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == "constraint_failed" and "failed while decoding" in error["message"]
    assert "too many expressions" in error["message"]
    _no_internal_state(error["message"])
    with httpx.stream("POST", f"{base}/v1/chat/completions", json={**body, "stream": True}, timeout=120) as stream:
        events = [line[6:] for line in stream.iter_lines() if line.startswith("data: ")]
    failure = json.loads(events[-2])["error"]
    assert events[-1] == "[DONE]" and failure["code"] == "constraint_failed" and failure["type"] == "invalid_request_error"
    _no_internal_state(failure["message"])
    engine = _engine(qwen3_server)
    assert engine["requests_failed"] == failed_before + 2 and engine["running"] == 0
    # the engine goes on
    assert httpx.post(f"{base}/v1/chat/completions", json={"messages": HI, "max_tokens": 3}).status_code == 200
