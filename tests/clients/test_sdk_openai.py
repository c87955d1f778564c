"""The official openai Python SDK: chat completions (create and the `.stream()` helper) and the
Responses API (create and `.stream()`), each a full tool round trip: the model calls the shell tool,
the test runs the command in a real shell, the output goes back, the model answers quoting it."""

from __future__ import annotations

import json
import subprocess
import time

import openai
import pytest

from .client_support import ANSWER, PROMPT, UNEVALUATED

pytestmark = pytest.mark.clients
SYSTEM = "You are a careful assistant with a shell."
SHELL_TOOL = {"type": "function", "function": {
    "name": "run_shell_command", "description": "Run a shell command and return what it printed.",
    "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}}
RESPONSES_TOOL = {"type": "function", **SHELL_TOOL["function"]}


def shell(arguments: str) -> str:
    command = json.loads(arguments)["command"]
    assert UNEVALUATED in command
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30).stdout


@pytest.fixture
def sdk(agent_server, proxy, monkeypatch, record):
    def make(family: str, variant: str):
        server = agent_server(family)
        for key, value in proxy.env().items():
            monkeypatch.setenv(key, value)
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=server.api_key, max_retries=0)
        row = record(client="openai Python SDK", variant=variant, version=openai.__version__, family=server.parser)
        return server, client, row

    yield make
    assert not proxy.attempts, proxy.attempts


def finish(row, server, seen, started, answer):
    evidence = seen[0]
    row.update(client_seconds=round(time.monotonic() - started, 1), **evidence.facts())
    assert answer == ANSWER
    assert evidence.marker_came_back() and "You are a careful assistant" in evidence.conversations[-1]["context"]
    row.update(text=True, tools=True)


@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_chat_completions_tool_round_trip(sdk, family):
    server, client, row = sdk(family, f"chat.completions.create, {family}")
    started = time.monotonic()
    with server.watch() as seen:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}]
        first = client.chat.completions.create(model=server.model, messages=messages, tools=[SHELL_TOOL])
        assert first.choices[0].finish_reason == "tool_calls"
        call = first.choices[0].message.tool_calls[0]
        messages += [first.choices[0].message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": shell(call.function.arguments)}]
        second = client.chat.completions.create(model=server.model, messages=messages, tools=[SHELL_TOOL])
    finish(row, server, seen, started, second.choices[0].message.content)


def test_chat_completions_stream_helper_tool_round_trip(sdk):
    server, client, row = sdk("llama", "chat.completions.stream")
    started = time.monotonic()
    with server.watch() as seen:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}]
        with client.chat.completions.stream(model=server.model, messages=messages, tools=[SHELL_TOOL],
                                            stream_options={"include_usage": True}) as stream:
            first = stream.get_final_completion()
        call = first.choices[0].message.tool_calls[0]
        messages += [{"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]},
                     {"role": "tool", "tool_call_id": call.id, "content": shell(call.function.arguments)}]
        text = []
        with client.chat.completions.stream(model=server.model, messages=messages, tools=[SHELL_TOOL]) as stream:
            for event in stream:
                if event.type == "content.delta":
                    text.append(event.delta)
    assert first.usage is not None and first.usage.prompt_tokens > 0
    finish(row, server, seen, started, "".join(text))


def test_responses_tool_round_trip(sdk):
    server, client, row = sdk("qwen3", "responses.create")
    started = time.monotonic()
    with server.watch() as seen:
        first = client.responses.create(model=server.model, instructions=SYSTEM, input=PROMPT, tools=[RESPONSES_TOOL])
        call = next(item for item in first.output if item.type == "function_call")
        second = client.responses.create(
            model=server.model, instructions=SYSTEM, tools=[RESPONSES_TOOL],
            input=[{"role": "user", "content": PROMPT}, call.model_dump(exclude_none=True),
                   {"type": "function_call_output", "call_id": call.call_id, "output": shell(call.arguments)}])
    finish(row, server, seen, started, second.output_text)


def test_responses_stream_helper_tool_round_trip(sdk):
    server, client, row = sdk("llama", "responses.stream")
    started = time.monotonic()
    with server.watch() as seen:
        with client.responses.stream(model=server.model, instructions=SYSTEM, input=PROMPT,
                                     tools=[RESPONSES_TOOL]) as stream:
            first = stream.get_final_response()
        call = next(item for item in first.output if item.type == "function_call")
        with client.responses.stream(model=server.model, instructions=SYSTEM, tools=[RESPONSES_TOOL],
                                     previous_response_id=first.id,
                                     input=[{"type": "function_call_output", "call_id": call.call_id,
                                             "output": shell(call.arguments)}]) as stream:
            deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
            final = stream.get_final_response()
    assert "".join(deltas) == final.output_text
    finish(row, server, seen, started, final.output_text)
