"""Parser names that users of earlier vllm-mlx command lines type, and the names `serve` accepts.

``--tool-call-parser`` and ``--reasoning-parser`` take ``auto``, ``none``, a name of the registry
(:mod:`.registry`), or a name below: an alias maps to the parser here that reads the same format;
a name whose format has no parser here is refused with what to use instead. Lookups ignore case.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from .registry import REASONING_PARSERS, TOOL_PARSERS

SPECIAL = ("auto", "none")  # auto: from the chat template; none: no parsing

TOOL_PARSER_ALIASES: Mapping[str, str] = MappingProxyType({
    # <tool_call>{json}</tool_call> and <function=NAME><parameter=P>..</parameter></function> (Qwen3.5,
    # Qwen3-Coder): qwen3_coder reads both.
    "qwen": "qwen3_coder",
    "qwen3": "qwen3_coder",
    # Nemotron 3 Nano writes <tool_call><function=NAME><parameter=..>: the Qwen3-Coder format
    # (nemotron_json is the older <TOOLCALL>[..] format).
    "nemotron": "qwen3_coder",
    "nemotron3": "qwen3_coder",
    # <|python_tag|>{json}, a bare {"name", "parameters"} object, <function=NAME>{json}</function>
    "llama": "llama3_json",
    "llama3": "llama3_json",
    "llama4": "llama3_json",
    "nous": "hermes",
    # DeepSeek V3 / R1 / V3.1 unicode markers
    "deepseek": "deepseek_v3",
    "deepseek_r1": "deepseek_v3",
    "kimi": "kimi_k2",
    "moonshot": "kimi_k2",
    "granite3": "granite",
    "functionary": "functionary_v3",
    "meetkai": "functionary_v3",
    "glm4": "glm45",  # GLM-4.5 .. 4.7 <arg_key>/<arg_value>
    # <|tool_call_start|>[f(a=1)]<|tool_call_end|>
    "liquid": "lfm2",
    "liquidai": "lfm2",
    "lfm": "lfm2",
    "lfm2.5": "lfm2",
    # Harmony channels (gpt-oss)
    "gpt-oss": "openai",
    "gpt_oss": "openai",
})

REASONING_PARSER_ALIASES: Mapping[str, str] = MappingProxyType({
    # <think>..</think>; output without the opening tag is content unless the prompt opened it
    "qwen": "qwen3",
    "qwen35": "qwen3",
    "glm4": "qwen3",
    "glm45": "qwen3",
    "glm47": "qwen3",
    "kimi": "qwen3",
    "nemotron": "qwen3",
    "liquid": "qwen3",
    "liquidai": "qwen3",
    "lfm": "qwen3",
    "deepseek": "deepseek_r1",
    "gpt-oss": "openai_gptoss",
})

# Model families whose names users type but that write no reasoning block parsed here.
NO_REASONING_FORMAT: Mapping[str, str] = MappingProxyType({
    "llama": "Llama models write no reasoning block",
    "functionary": "Functionary models write no reasoning block",
    "xlam": "xLAM models write no reasoning block",
    "granite": "Granite's 'Here is my thought process:' reasoning is not split off here",
})


def tool_parser_choices() -> list[str]:
    return [*SPECIAL, *sorted(TOOL_PARSERS)]


def reasoning_parser_choices() -> list[str]:
    return [*SPECIAL, *sorted(REASONING_PARSERS)]


def canonical_tool_parser(name: str) -> str:
    """The registry name (or auto / none) for a ``--tool-call-parser`` value; ValueError listing
    the valid names otherwise."""
    key = str(name).strip().lower()
    if key in SPECIAL or key in TOOL_PARSERS:
        return key
    if key in TOOL_PARSER_ALIASES:
        return TOOL_PARSER_ALIASES[key]
    hint = " (a reasoning format: give it to --reasoning-parser)" if key in REASONING_PARSERS else ""
    raise ValueError(f"unknown tool-call parser {name!r}{hint}; use one of: {', '.join(tool_parser_choices())}")


def canonical_reasoning_parser(name: str) -> str:
    """The registry name (or auto / none) for a ``--reasoning-parser`` value; ValueError naming
    what to use otherwise."""
    key = str(name).strip().lower()
    if key in SPECIAL or key in REASONING_PARSERS:
        return key
    if key in REASONING_PARSER_ALIASES:
        return REASONING_PARSER_ALIASES[key]
    choices = ", ".join(reasoning_parser_choices())
    if key in NO_REASONING_FORMAT:
        raise ValueError(f"{name!r} has no reasoning parser: {NO_REASONING_FORMAT[key]}; use none (or auto)")
    hint = (" (a tool-call format: give it to --tool-call-parser)"
            if key in TOOL_PARSERS or key in TOOL_PARSER_ALIASES else "")
    raise ValueError(f"unknown reasoning parser {name!r}{hint}; use one of: {choices}")
