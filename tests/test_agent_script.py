"""The agent behaviour of the scripted model, on prompts rendered by the real chat templates."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from vllm_mlx_testing import build_scripted_model
from vllm_mlx_testing.agent_script import FAMILY_FORMATS, FORMATS, agent_reply

CMD = "echo MARKER_$((6*7))"


def tool(name: str, properties: dict, required: list[str]) -> dict:
    return {"type": "function", "function": {"name": name, "description": f"the {name} tool",
                                             "parameters": {"type": "object", "properties": properties,
                                                            "required": required}}}


READ = tool("Read", {"file_path": {"type": "string"}}, ["file_path"])
SHAPES = [  # (tool offered beside Read, the arguments the agent must give it)
    (tool("Bash", {"command": {"type": "string"}, "description": {"type": "string"}}, ["command"]),
     {"command": CMD}),
    (tool("shell", {"command": {"type": "array", "items": {"type": "string"}}, "workdir": {"type": "string"}},
          ["command", "workdir"]), {"command": ["bash", "-lc", CMD], "workdir": "."}),
    (tool("exec_command", {"cmd": {"type": "string"}, "yield_time_ms": {"type": "integer"}}, ["cmd"]),
     {"cmd": CMD}),
    (tool("run_shell_command", {"command": {"type": "string"}, "description": {"type": "string"},
                                "is_background": {"type": "boolean"}}, ["command", "description", "is_background"]),
     {"command": CMD, "description": "Print the marker", "is_background": False}),
    (tool("bash", {"command": {"type": "string"}, "timeout": {"type": ["integer", "null"]}}, ["command", "timeout"]),
     {"command": CMD, "timeout": 60000}),
]


@pytest.fixture(scope="module", params=["qwen3", "llama"])
def family(request, tmp_path_factory):
    path = build_scripted_model(tmp_path_factory.mktemp(request.param), family=request.param, agent=True)
    return request.param, AutoTokenizer.from_pretrained(path)


def render(tokenizer, messages, tools):
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=False)


@pytest.mark.parametrize("shell_tool,arguments", SHAPES, ids=[s[0]["function"]["name"] for s in SHAPES])
def test_calls_the_shell_tool_whatever_its_shape(family, shell_tool, arguments):
    name, tokenizer = family
    fmt = FORMATS[FAMILY_FORMATS[name]]
    prompt = render(tokenizer, [{"role": "user", "content": "run it"}], [READ, shell_tool])
    kind, text = agent_reply(prompt, fmt)
    assert kind == "tool_call"
    body = json.loads(text.removeprefix("<tool_call>\n").removesuffix("\n</tool_call>"))
    assert body["name"] == shell_tool["function"]["name"]
    assert body["arguments" if name == "qwen3" else "parameters"] == arguments


def test_answers_quoting_the_result_then_nothing_without_tools(family):
    name, tokenizer = family
    fmt = FORMATS[FAMILY_FORMATS[name]]
    bash = SHAPES[0][0]
    call = {"id": "c1", "type": "function", "function": {"name": "Bash", "arguments": json.dumps({"command": CMD})}}
    messages = [{"role": "user", "content": "run it"}, {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "MARKER_42\n"}]
    assert agent_reply(render(tokenizer, messages, [bash]), fmt) == ("answer", "The command printed MARKER_42.")
    messages[-1]["content"] = "bash: permission denied"
    assert agent_reply(render(tokenizer, messages, [bash]), fmt) == (
        "answer", "The tool returned: bash: permission denied")
    assert agent_reply(render(tokenizer, messages[:1], None), fmt) is None
    assert agent_reply(render(tokenizer, messages[:1], [READ]), fmt) is None  # no shell tool
