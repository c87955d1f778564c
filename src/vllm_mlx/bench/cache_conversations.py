"""Conversations that show how much of a prompt a server reuses from its prefix cache.

Each scenario drives an OpenAI-compatible server the way a chat or agent client does and returns
the measured request's ``cached_tokens`` and ``prompt_tokens`` (as the server reports them) plus
its answer, so the same scenario can compare two servers, or one server with a warm and a cold
cache:

* ``turn_two``: a second user turn after the first answer (the history is re-rendered, so a
  thinking template's generation prompt of turn 1 is no longer there);
* ``agent_turn``: the next user turn after a tool round (assistant tool call, tool result,
  assistant answer);
* ``new_session``: a second, new conversation with the same system prompt and tools.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

SHELL_TOOL = {"type": "function", "function": {
    "name": "shell", "description": "Run a shell command in the project folder and return its output.",
    "parameters": {"type": "object", "properties": {"command": {"type": "string", "description": "the command"}},
                   "required": ["command"]}}}


def system_prompt(approx_tokens: int = 600) -> str:
    """A long, stable agent system prompt (about ``approx_tokens`` tokens of plain English)."""
    rules = [f"Rule {i}: read the file before you change it, keep every edit small, and explain the reason."
             for i in range(max(1, approx_tokens // 20))]
    return "You are a careful coding agent working in a repository. " + " ".join(rules)


@dataclass
class Measured:
    scenario: str
    cached_tokens: int
    prompt_tokens: int
    answer: str


def _cached(usage: Any) -> int:
    details = getattr(usage, "prompt_tokens_details", None)
    return int(getattr(details, "cached_tokens", 0) or 0) if details is not None else 0


def _ask(client: Any, model: str, messages: list[dict], tools: list | None, max_tokens: int, **extra) -> Any:
    kwargs = dict(model=model, messages=messages, max_tokens=max_tokens, temperature=0.0, **extra)
    if tools:
        kwargs["tools"] = tools
    return client.chat.completions.create(**kwargs)


def _history(resp: Any) -> dict:
    """The assistant message a client sends back: its text (reasoning is not resent)."""
    return {"role": "assistant", "content": resp.choices[0].message.content or ""}


def turn_two(client: Any, model: str, system: str, max_tokens: int = 16, **extra) -> tuple[list[dict], None]:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "Where is the config loaded?"}]
    first = _ask(client, model, messages, None, max_tokens, **extra)
    return messages + [_history(first), {"role": "user", "content": "And where is it validated?"}], None


def agent_turn(client: Any, model: str, system: str, max_tokens: int = 16, **extra) -> tuple[list[dict], list]:
    tools = [SHELL_TOOL]
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "List the test files."}]
    _ask(client, model, messages, tools, max_tokens, **extra)
    call = {"id": "call_1", "type": "function",
            "function": {"name": "shell", "arguments": json.dumps({"command": "ls tests"})}}
    messages += [{"role": "assistant", "content": "", "tool_calls": [call]},
                 {"role": "tool", "tool_call_id": "call_1", "content": "test_engine.py\ntest_server.py\n"}]
    answer = _ask(client, model, messages, tools, max_tokens, **extra)
    return messages + [_history(answer), {"role": "user", "content": "Now run the engine tests."}], tools


def new_session(client: Any, model: str, system: str, max_tokens: int = 16, **extra) -> tuple[list[dict], list]:
    tools = [SHELL_TOOL]
    _ask(client, model, [{"role": "system", "content": system},
                         {"role": "user", "content": "Summarise the README."}], tools, max_tokens, **extra)
    return [{"role": "system", "content": system}, {"role": "user", "content": "Which license is used?"}], tools


SCENARIOS: dict[str, Callable] = {"turn_two": turn_two, "agent_turn": agent_turn, "new_session": new_session}


def measure(client: Any, model: str, scenario: str, system: str, max_tokens: int = 16, **extra) -> Measured:
    """Run ``scenario``'s set-up requests, then the measured request."""
    messages, tools = SCENARIOS[scenario](client, model, system, max_tokens, **extra)
    resp = _ask(client, model, messages, tools, max_tokens, **extra)
    return Measured(scenario, _cached(resp.usage), resp.usage.prompt_tokens, resp.choices[0].message.content or "")


def final_request(client: Any, model: str, scenario: str, system: str, max_tokens: int = 16, **extra):
    """The set-up requests of ``scenario`` and the measured request's (messages, tools), not sent."""
    return SCENARIOS[scenario](client, model, system, max_tokens, **extra)
