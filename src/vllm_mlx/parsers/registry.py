"""Parser registry by name, and automatic choice from a model's chat template and vocabulary.

Names follow vLLM's ``--tool-call-parser`` / ``--reasoning-parser`` names where one exists.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from .base import ReasoningParser, ToolParser
from .harmony import HarmonyReasoningParser, HarmonyToolParser
from .json_tools import (
    DeepSeekV3ToolParser,
    GraniteToolParser,
    HermesToolParser,
    KimiK2ToolParser,
    MistralToolParser,
    NemotronToolParser,
    XLamToolParser,
)
from .llama_tools import FunctionaryV3ToolParser, Llama3JsonToolParser
from .pythonic_tools import Lfm2ToolParser, Llama4PythonicToolParser, PythonicToolParser
from .reasoning import DeepSeekR1ReasoningParser, MistralReasoningParser, Qwen3ReasoningParser
from .xml_tools import Glm45ToolParser, Qwen3CoderToolParser

TOOL_PARSERS: Mapping[str, type[ToolParser]] = MappingProxyType(
    {
        "hermes": HermesToolParser,
        "qwen3_coder": Qwen3CoderToolParser,
        "qwen3_xml": Qwen3CoderToolParser,
        "llama3_json": Llama3JsonToolParser,
        "llama4_json": Llama3JsonToolParser,
        "llama4_pythonic": Llama4PythonicToolParser,
        "pythonic": PythonicToolParser,
        "mistral": MistralToolParser,
        "deepseek_v3": DeepSeekV3ToolParser,
        "deepseek_v31": DeepSeekV3ToolParser,
        "kimi_k2": KimiK2ToolParser,
        "granite": GraniteToolParser,
        "granite4": GraniteToolParser,
        "nemotron_json": NemotronToolParser,
        "xlam": XLamToolParser,
        "functionary_v3": FunctionaryV3ToolParser,
        "glm45": Glm45ToolParser,
        "glm47": Glm45ToolParser,
        "lfm2": Lfm2ToolParser,
        "openai": HarmonyToolParser,
        "harmony": HarmonyToolParser,
    }
)
"""Tool-call parser classes by name (aliases map to the same class)."""

REASONING_PARSERS: Mapping[str, type[ReasoningParser]] = MappingProxyType(
    {
        "qwen3": Qwen3ReasoningParser,
        "deepseek_r1": DeepSeekR1ReasoningParser,
        "mistral": MistralReasoningParser,
        "openai_gptoss": HarmonyReasoningParser,
        "gpt_oss": HarmonyReasoningParser,
        "harmony": HarmonyReasoningParser,
    }
)
"""Reasoning parser classes by name (aliases map to the same class)."""


def get_tool_parser(name: str) -> type[ToolParser]:
    """The tool parser class registered as ``name``; ValueError listing the names otherwise."""
    try:
        return TOOL_PARSERS[name]
    except KeyError:
        raise ValueError(f"unknown tool parser {name!r}; choose one of {', '.join(sorted(TOOL_PARSERS))}") from None


def get_reasoning_parser(name: str) -> type[ReasoningParser]:
    """The reasoning parser class registered as ``name``; ValueError listing the names otherwise."""
    try:
        return REASONING_PARSERS[name]
    except KeyError:
        raise ValueError(
            f"unknown reasoning parser {name!r}; choose one of {', '.join(sorted(REASONING_PARSERS))}"
        ) from None


# Tool-call detection: (parser name, strings that must all appear in the chat template).
# The first matching rule wins, so the more specific formats come first.
_TOOL_TEMPLATE_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("openai", ("<|channel|>",)),
    ("kimi_k2", ("<|tool_calls_section_begin|>",)),
    ("deepseek_v3", ("tool▁calls▁begin", "```json")),
    ("deepseek_v31", ("tool▁calls▁begin",)),
    ("glm45", ("<arg_key>",)),
    ("qwen3_coder", ("<function=", "<parameter=")),
    ("lfm2", ("<|tool_call_start|>",)),
    ("nemotron_json", ("<TOOLCALL>",)),
    ("mistral", ("[TOOL_CALLS]",)),
    ("functionary_v3", (">>>all",)),
    ("granite", ("<|tool_call|>",)),
    ("functionary_v3", ("<function=",)),
    ("xlam", ("xLAM",)),
    ("hermes", ("<tool_call>",)),
    ("llama4_pythonic", ("<|header_start|>", "[func_name1(")),
    ("llama4_pythonic", ("<|python_start|>",)),
    ("llama4_json", ("<|header_start|>", "tools")),
    ("pythonic", ("[func_name1(",)),
    ("llama3_json", ("<|start_header_id|>", "<|python_tag|>")),
    ("llama3_json", ("<|start_header_id|>", '"parameters"')),
)

# Fallback when the template says nothing: special tokens in the vocabulary.
_TOOL_VOCAB_RULES: tuple[tuple[str, str], ...] = (
    ("openai", "<|channel|>"),
    ("kimi_k2", "<|tool_calls_section_begin|>"),
    ("deepseek_v3", "<｜tool▁calls▁begin｜>"),
    ("lfm2", "<|tool_call_start|>"),
    ("nemotron_json", "<TOOLCALL>"),
    ("mistral", "[TOOL_CALLS]"),
    ("granite", "<|tool_call|>"),
    ("hermes", "<tool_call>"),
    ("llama4_pythonic", "<|python_start|>"),
    ("llama3_json", "<|python_tag|>"),
)


def detect_tool_parser(chat_template: str | None, vocab: set[str] | None = None) -> str | None:
    """Pick a tool parser name from the chat template text (the rules in
    ``_TOOL_TEMPLATE_RULES``, most specific first), else from special tokens in ``vocab``.
    None when nothing matches."""
    template = chat_template or ""
    for name, needles in _TOOL_TEMPLATE_RULES:
        if all(needle in template for needle in needles):
            return name
    for name, token in _TOOL_VOCAB_RULES:
        if vocab and token in vocab:
            return name
    return None


def detect_reasoning_parser(chat_template: str | None, vocab: set[str] | None = None) -> str | None:
    """Pick a reasoning parser name: Harmony (``<|channel|>``) -> ``openai_gptoss``;
    ``[THINK]`` -> ``mistral``; ``<think>`` / ``</think>`` in the template or the vocabulary ->
    ``deepseek_r1`` for DeepSeek templates (``｜Assistant｜``), else ``qwen3``.  None otherwise."""
    template = chat_template or ""
    tokens = vocab or set()
    if "<|channel|>" in template or "<|channel|>" in tokens:
        return "openai_gptoss"
    if "[THINK]" in template or "[THINK]" in tokens:
        return "mistral"
    if "<think>" in template or "</think>" in template or "<think>" in tokens:
        return "deepseek_r1" if "｜Assistant｜" in template else "qwen3"
    return None


def prompt_opens_reasoning(reasoning_parser: str | None, prompt: str) -> bool:
    """Whether the rendered prompt leaves reasoning open (pass the result to
    ``OutputPipeline(starts_in_reasoning=...)``).  False without a reasoning parser."""
    if not reasoning_parser:
        return False
    return get_reasoning_parser(reasoning_parser).prompt_opens_reasoning(prompt)


def required_markers(tool_parser: str | None, reasoning_parser: str | None) -> set[str]:
    """Marker strings the chosen parsers need to find in the detokenized text.  Any of them
    that the tokenizer marks as a special token is dropped by ``skip_special_tokens=True``;
    the server must then decode with special tokens kept (EOS / stop tokens are never part of
    the output text either way)."""
    markers: set[str] = set()
    if tool_parser:
        markers.update(get_tool_parser(tool_parser).markers)
    if reasoning_parser:
        markers.update(get_reasoning_parser(reasoning_parser).markers)
    return markers
