"""Custom tools: tools whose input is free text, optionally following a grammar (Responses
``{"type": "custom", "name", "format": {"type": "grammar", "syntax": "lark" | "regex", "definition"}}``
or ``{"type": "text"}``; Codex's ``apply_patch``).

The model sees a custom tool as a function with one string argument, ``input``, and calls it in its
own tool-call format; the call comes back to the client as the tool's free text. Its grammar is
enforced with llguidance while the model writes the call: the call's JSON is fixed around the input,
and the input follows the tool's grammar rewritten for the inside of a JSON string
(json_string_grammar). A forced call (``tool_choice`` naming the tool, or ``required``) is
constrained from its first token; in ``auto``, when the format opens a call with a special token
(Hermes ``<tool_call>``), the output is free text until that token and every call after it is
constrained -- function calls to their schemas, custom calls to their grammars.
"""

from __future__ import annotations

import json
from typing import Any

from ..engine.constraints import GrammarError, StructuredSpec
from .errors import APIError
from .json_string_grammar import json_string_lark, json_string_rule

INPUT = "input"  # the one argument a custom tool is offered with
ANY_TEXT = "(?s:.*)"


def custom_function(name: str, description: str | None) -> dict:
    """The function tool the chat template shows for a custom tool."""
    note = f"Call it with one argument, `{INPUT}`: the tool's raw text input."
    return {"type": "function", "function": {
        "name": name, "description": f"{description}\n\n{note}" if description else note,
        "parameters": {"type": "object", "properties": {INPUT: {"type": "string"}}, "required": [INPUT]}}}


def check_format(name: str, fmt: Any, param: str) -> dict:
    """A custom tool's ``format``, checked (compiled later, with the request's other grammars)."""
    fmt = fmt or {"type": "text"}
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "grammar"):
        raise APIError(400, f"{param}: a custom tool's format is {{\"type\": \"text\"}} or a grammar", param=param)
    if fmt["type"] == "grammar":
        if fmt.get("syntax") not in ("lark", "regex") or not isinstance(fmt.get("definition"), str):
            raise APIError(400, f"{param}: a grammar format needs syntax 'lark' or 'regex' and a definition",
                           param=param)
        try:
            _body(fmt, 0)
        except GrammarError as exc:
            raise APIError(400, f"{param}: the grammar of custom tool {name!r} cannot be used: {exc}",
                           param=param) from exc
    return fmt


def _body(fmt: dict, k: int) -> tuple[str, str]:
    """(the rule the input must match, the rules that define it) for custom tool number ``k``."""
    if fmt.get("type") == "grammar" and fmt.get("syntax") == "lark":
        return f"ct{k}_start", json_string_lark(fmt["definition"], f"ct{k}_")
    source = fmt["definition"] if fmt.get("type") == "grammar" else ANY_TEXT
    return f"ct{k}_input", f"ct{k}_input: {json_string_rule(source)}"


def call_grammar(tools: list[dict], custom: dict[str, dict], *, name: str | None, open_tag: str, close_tag: str,
                 arguments_key: str, several: bool, separator: str = "",
                 free_text: tuple[str, ...] | None = None) -> StructuredSpec:
    """The grammar of tool calls when the request has custom tools.

    ``name``: the one tool to call; ``several``: more calls may follow (``separator`` between two);
    ``free_text``: not forced -- free text (and these special tokens, e.g. think markers) around
    the calls, which open with ``open_tag`` (a special token)."""
    functions = [t for t in tools if (t.get("function") or {}).get("name") not in custom]
    wanted = [n for n in custom if name in (None, n)]
    rules, calls = [], []
    for k, tool_name in enumerate(custom):
        if tool_name not in wanted:
            continue
        body, definition = _body(custom[tool_name], k)
        head = json.dumps(f'\n{{"name": {json.dumps(tool_name)}, "{arguments_key}": {{"{INPUT}": "')
        rules += [f'ccall{k}: {open_tag} {head} {body} "\\"}}}}\\n" {close_tag}', definition]
        calls.append(f"ccall{k}")
    for k, fn in enumerate(t.get("function") or t for t in functions):
        if name in (None, fn.get("name")):
            # the call's JSON written around the arguments, so every call starts alike and the tool
            # name picks the branch (a lexeme of the main grammar, not of a %json sub-grammar)
            head = json.dumps(f'\n{{"name": {json.dumps(fn["name"])}, "{arguments_key}": ')
            schema = {**(fn.get("parameters") or {"type": "object"}), "x-guidance": {"whitespace_flexible": False}}
            rules.append(f'fcall{k}: {open_tag} {head} %json {json.dumps(schema)} "}}\\n" {close_tag}')
            calls.append(f"fcall{k}")
    if not calls:
        raise GrammarError(f"tool_choice names {name!r}, which is not among the request's tools")
    rules.insert(0, "call: " + " | ".join(calls))
    if free_text is not None:
        text = " | ".join(["FREE_TEXT", *free_text])
        start = f"start: text? (call text?)*\ntext: ({text})+\nFREE_TEXT: /(?s:.+)/"
    else:
        more = f" ({json.dumps(separator) + ' ' if separator else ''}call)*" if several else ""
        start = f"start: call{more}"
    return StructuredSpec(lark="\n".join([start, *rules]) + "\n")
