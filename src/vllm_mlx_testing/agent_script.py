"""The agent behaviour of the scripted test model.

Given the conversation text the model sees (the rendered chat template up to
the generation prompt), an agent script picks the reply a tool-using agent
model would give:

* tools offered, one of them a shell tool, and no tool result since the
  model's last tool call: call the shell tool with ``command`` (by default
  ``echo MARKER_$((6*7))``), in the family's native tool-call format, whatever
  the tool is called and however its arguments look (``Bash{command}``,
  ``shell{command: [argv]}``, ``exec_command{cmd}``,
  ``run_shell_command{command, description}`` ...);
* a tool result after the model's last tool call: answer with text quoting
  the result (``The command printed MARKER_42.`` when the shell evaluated the
  marker, else ``The tool returned: ...``);
* otherwise: no agent reply (the model's rules / default reply apply).

Tools are read back from the rendered prompt (every template here writes them
as JSON), so the script needs no help from the server: it sees exactly what a
real model would see.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

DEFAULT_COMMAND = "echo MARKER_$((6*7))"

# Tool names clients give their shell tool, most specific first.
SHELL_TOOL_NAMES = (
    "bash", "exec_command", "shell", "run_shell_command", "shell_command", "run_command",
    "execute_command", "run_terminal_cmd", "run_terminal_command", "terminal", "execute_bash",
)
SHELL_NAME_WORDS = ("bash", "shell", "command", "terminal", "exec")
COMMAND_PARAMS = ("command", "cmd", "commands", "script")
MARKER_RE = re.compile(r"MARKER_\d+")


@dataclass(frozen=True)
class Format:
    """How one model family writes tool calls and sees tool results."""

    name: str
    assistant_turn: str  # opens an assistant turn in the rendered history
    end_of_turn: str
    call_tag: str  # present in an assistant turn that holds a tool call
    result_open: str
    result_close: str

    def call(self, name: str, arguments: dict) -> str:
        if self.name == "hermes":
            body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
            return f"<tool_call>\n{body}\n</tool_call>"
        return json.dumps({"name": name, "parameters": arguments}, ensure_ascii=False)


FORMATS = {
    "hermes": Format("hermes", "<|im_start|>assistant\n", "<|im_end|>", "<tool_call>",
                     "<tool_response>\n", "\n</tool_response>"),
    "llama3_json": Format("llama3_json", "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>",
                          '"parameters"', "<|start_header_id|>ipython<|end_header_id|>\n\n", "<|eot_id|>"),
}
FAMILY_FORMATS = {"qwen3": "hermes", "llama": "llama3_json"}


@dataclass(frozen=True)
class Tool:
    name: str
    parameters: dict


_TOOL_START = re.compile(r'\{\s*"(?:type|function|name)"\s*:')


def _as_tool(obj: Any) -> Tool | None:
    if not isinstance(obj, dict):
        return None
    spec = obj.get("function") if isinstance(obj.get("function"), dict) else obj
    name = spec.get("name")
    params = spec.get("parameters", spec.get("input_schema"))
    if isinstance(name, str) and isinstance(params, dict):
        return Tool(name, params)
    return None


def tools_in(text: str) -> list[Tool]:
    """Every tool definition written as JSON in ``text`` (in order, first of each name)."""
    decoder = json.JSONDecoder()
    found: dict[str, Tool] = {}
    pos = 0
    while (m := _TOOL_START.search(text, pos)) is not None:
        try:
            obj, end = decoder.raw_decode(text, m.start())
        except ValueError:
            pos = m.start() + 1
            continue
        tool = _as_tool(obj)
        if tool is not None:
            found.setdefault(tool.name, tool)
            pos = end
        else:
            pos = m.start() + 1
    return list(found.values())


def _command_param(tool: Tool) -> str | None:
    props = tool.parameters.get("properties") or {}
    return next((p for p in COMMAND_PARAMS if p in props), None)


def pick_shell_tool(tools: list[Tool]) -> Tool | None:
    """The tool that runs a shell command: a known name first, then a shell-ish name."""
    best, best_rank = None, None
    for tool in tools:
        if _command_param(tool) is None:
            continue
        lower = tool.name.lower()
        if lower in SHELL_TOOL_NAMES:
            rank = SHELL_TOOL_NAMES.index(lower)
        elif any(word in lower for word in SHELL_NAME_WORDS):
            rank = len(SHELL_TOOL_NAMES)
        else:
            continue
        if best_rank is None or rank < best_rank:
            best, best_rank = tool, rank
    return best


def _schema_type(schema: dict) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind is None:
        for option in schema.get("anyOf") or schema.get("oneOf") or []:
            if isinstance(option, dict) and option.get("type") not in (None, "null"):
                return _schema_type(option)
    return kind


def _filler(key: str, schema: dict) -> Any:
    """A harmless value for a required argument the command does not need."""
    if schema.get("enum"):
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    kind = _schema_type(schema)
    if kind == "boolean":
        return False
    if kind in ("integer", "number"):
        return 60000 if "timeout" in key.lower() else 1
    if kind == "array":
        return []
    if kind == "object":
        return {}
    lower = key.lower()
    return "." if any(w in lower for w in ("dir", "path", "cwd")) else "Print the marker"


def shell_arguments(tool: Tool, command: str) -> dict:
    """Arguments that make ``tool`` run ``command`` in a shell, required fields filled."""
    props = tool.parameters.get("properties") or {}
    param = _command_param(tool)
    as_argv = _schema_type(props[param]) == "array"
    args: dict[str, Any] = {param: ["bash", "-lc", command] if as_argv else command}
    for key in tool.parameters.get("required") or []:
        if key not in args:
            args[key] = _filler(key, props.get(key) or {})
    return args


def quote_result(result: str) -> str:
    """The answer that quotes a tool result."""
    marker = MARKER_RE.search(result)
    if marker:
        return f"The command printed {marker.group(0)}."
    flat = " ".join(result.split())
    return f"The tool returned: {flat[:200]}"


def _last_call(text: str, fmt: Format) -> int:
    """Start of the last assistant turn holding a tool call, or -1."""
    last, pos = -1, 0
    while (start := text.find(fmt.assistant_turn, pos)) >= 0:
        end = text.find(fmt.end_of_turn, start)
        end = len(text) if end < 0 else end
        if fmt.call_tag in text[start:end]:
            last = start
        pos = start + 1
    return last


def last_tool_result(text: str, fmt: Format) -> tuple[int, str] | None:
    """(position, text) of the last tool result in ``text``."""
    start = text.rfind(fmt.result_open)
    if start < 0:
        return None
    body_start = start + len(fmt.result_open)
    end = text.find(fmt.result_close, body_start)
    return start, text[body_start : len(text) if end < 0 else end]


def agent_reply(context: str, fmt: Format, command: str = DEFAULT_COMMAND) -> tuple[str, str] | None:
    """(kind, reply text) of the agent for ``context``, or None when it has nothing to say."""
    result = last_tool_result(context, fmt)
    if result is not None and result[0] > _last_call(context, fmt):
        return "answer", quote_result(result[1])
    tool = pick_shell_tool(tools_in(context))
    if tool is None:
        return None
    return "tool_call", fmt.call(tool.name, shell_arguments(tool, command))
