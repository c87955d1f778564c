"""The official anthropic Python SDK: messages.create, the messages.stream() helper and the beta
tool runner, each a full tool round trip through a real shell (the runner calls the function)."""

from __future__ import annotations

import subprocess
import time

import anthropic
import pytest
from anthropic import beta_tool

from .client_support import ANSWER, PROMPT, UNEVALUATED

pytestmark = pytest.mark.clients
SYSTEM = "You are a careful assistant with a shell."
SHELL_TOOL = {"name": "run_shell_command", "description": "Run a shell command and return what it printed.",
              "input_schema": {"type": "object", "properties": {"command": {"type": "string"}},
                               "required": ["command"]}}


def shell(command: str) -> str:
    assert UNEVALUATED in command
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30).stdout


@pytest.fixture
def sdk(agent_server, proxy, monkeypatch, record):
    def make(family: str, variant: str):
        server = agent_server(family)
        for key, value in proxy.env().items():
            monkeypatch.setenv(key, value)
        client = anthropic.Anthropic(base_url=server.base_url, api_key=server.api_key, max_retries=0)
        row = record(client="anthropic Python SDK", variant=variant, version=anthropic.__version__,
                     family=server.parser)
        return server, client, row

    yield make
    assert not proxy.attempts, proxy.attempts


def finish(row, seen, started, answer):
    evidence = seen[0]
    row.update(client_seconds=round(time.monotonic() - started, 1), **evidence.facts())
    assert answer == ANSWER
    assert evidence.marker_came_back() and "You are a careful assistant" in evidence.conversations[-1]["context"]
    assert evidence.protocols() == ["/v1/messages"]
    row.update(text=True, tools=True)


@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_messages_tool_round_trip(sdk, family):
    server, client, row = sdk(family, f"messages.create, {family}")
    started = time.monotonic()
    with server.watch() as seen:
        messages = [{"role": "user", "content": PROMPT}]
        first = client.messages.create(model=server.model, max_tokens=256, system=SYSTEM, messages=messages,
                                       tools=[SHELL_TOOL])
        assert first.stop_reason == "tool_use"
        use = next(b for b in first.content if b.type == "tool_use")
        messages += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                                   "content": shell(use.input["command"])}]}]
        second = client.messages.create(model=server.model, max_tokens=256, system=SYSTEM, messages=messages,
                                        tools=[SHELL_TOOL])
    finish(row, seen, started, "".join(b.text for b in second.content if b.type == "text"))


def test_messages_stream_helper_tool_round_trip(sdk):
    server, client, row = sdk("qwen3", "messages.stream")
    started = time.monotonic()
    with server.watch() as seen:
        messages = [{"role": "user", "content": PROMPT}]
        with client.messages.stream(model=server.model, max_tokens=256, system=SYSTEM, messages=messages,
                                    tools=[SHELL_TOOL]) as stream:
            first = stream.get_final_message()
        use = next(b for b in first.content if b.type == "tool_use")
        messages += [{"role": "assistant", "content": first.content},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                                   "content": shell(use.input["command"])}]}]
        with client.messages.stream(model=server.model, max_tokens=256, system=SYSTEM, messages=messages,
                                    tools=[SHELL_TOOL]) as stream:
            text = "".join(stream.text_stream)
    finish(row, seen, started, text)


def test_beta_tool_runner(sdk):
    server, client, row = sdk("llama", "beta.messages.tool_runner")

    @beta_tool
    def run_shell_command(command: str) -> str:
        """Run a shell command and return what it printed.

        Args:
            command: the shell command line
        """
        return shell(command)

    started = time.monotonic()
    with server.watch() as seen:
        runner = client.beta.messages.tool_runner(model=server.model, max_tokens=256, system=SYSTEM,
                                                  tools=[run_shell_command],
                                                  messages=[{"role": "user", "content": PROMPT}])
        final = runner.until_done()
    finish(row, seen, started, "".join(b.text for b in final.content if b.type == "text"))
