"""Streams keep the connection alive while the first token is coming (a long prefill, a queue):
``: keepalive`` SSE comments on chat and Responses, ``ping`` events on Messages, every
``--sse-keepalive`` seconds -- and the official SDKs parse those streams as usual. The fault model
stalls the prefill of any prompt holding its marker (``FAULT_STALL``) for a few seconds.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import anthropic
import httpx
import openai
import pytest

REPLY = "Hello after a long prefill."
STALL_S = 2.0
INTERVAL_S = 0.4
COUNTER = itertools.count()


@pytest.fixture(scope="module")
def server(start_server, models_dir):
    from vllm_mlx_testing.fault_model import build_fault_model

    path = build_fault_model(models_dir / "agent-keepalive", stall_seconds=STALL_S, default_reply=REPLY)
    return start_server(path, "--trust-remote-code", "--served-model-name", "m", "--sse-keepalive", INTERVAL_S)


def stalling() -> str:
    return f"request {next(COUNTER)} {time.time()} FAULT_STALL"  # new first: no prefix-cache shortcut


def _lines(server, path: str, body: dict) -> list[str]:
    with httpx.stream("POST", f"{server.base_url}{path}", json=body, timeout=60) as r:
        return [line for line in r.iter_lines() if line]


def test_chat_stream_sends_comments_until_the_first_token(server):
    lines = _lines(server, "/v1/chat/completions", {"model": "m", "stream": True,
                                                     "messages": [{"role": "user", "content": stalling()}]})
    first_text = next(i for i, line in enumerate(lines) if '"content": "H' in line or '"content":"H' in line)
    keepalives = [i for i, line in enumerate(lines) if line == ": keepalive"]
    assert len(keepalives) >= 2 and max(keepalives) < first_text, lines[:8]
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="k", max_retries=0)
    chunks = client.chat.completions.create(model="m", stream=True, messages=[{"role": "user", "content": stalling()}])
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    plain = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=60,
                       json={"model": "m", "messages": [{"role": "user", "content": stalling()}]})
    assert plain.text.startswith("{") and plain.json()["choices"][0]["message"]["content"] == REPLY


def test_responses_stream_sends_comments_and_the_sdk_parses_it(server):
    lines = _lines(server, "/v1/responses", {"model": "m", "stream": True, "input": stalling()})
    events = [line[len("event: "):] for line in lines if line.startswith("event: ")]
    assert events[:2] == ["response.created", "response.in_progress"] and events[-1] == "response.completed"
    first_delta = next(i for i, line in enumerate(lines) if line == "event: response.output_item.added")
    assert len([line for line in lines[:first_delta] if line == ": keepalive"]) >= 2
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="k", max_retries=0)
    with client.responses.stream(model="m", input=stalling()) as stream:
        assert stream.get_final_response().output_text == REPLY


def test_messages_stream_sends_pings_and_the_sdk_parses_it(server):
    lines = _lines(server, "/v1/messages", {"model": "m", "stream": True, "max_tokens": 50,
                                            "messages": [{"role": "user", "content": stalling()}]})
    events = [line[len("event: "):] for line in lines if line.startswith("event: ")]
    start = events.index("content_block_start")
    assert events[0] == "message_start" and events[1:start].count("ping") >= 2, events[:8]
    assert events[-1] == "message_stop"
    client = anthropic.Anthropic(base_url=server.base_url, api_key="k", max_retries=0)
    with client.messages.stream(model="m", max_tokens=50, messages=[{"role": "user", "content": stalling()}]) as s:
        final = s.get_final_message()
    assert final.content[0].text == REPLY and final.usage.output_tokens > 0


def test_keepalive_off_and_a_fast_stream_send_none():
    from vllm_mlx.api.streaming import with_keepalive

    async def slow():
        await asyncio.sleep(0.25)
        yield "out"

    async def collect(interval: float) -> list:
        return [x async for x in with_keepalive(slow(), interval)]

    assert asyncio.run(collect(0)) == ["out"]
    assert asyncio.run(collect(10)) == ["out"]
    assert asyncio.run(collect(0.1)).count(None) >= 1
