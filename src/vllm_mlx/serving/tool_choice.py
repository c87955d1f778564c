"""Tool calls enforced by a grammar: ``tool_choice`` "required" or a named tool, and custom tools.

A forced choice is enforced from the output's first token in the markup its tool parser reads back
(every parallel call included); a format that cannot be forced is a 400 naming the format. A request
with grammar-bound custom tools (custom_tools.py) is constrained in ``auto`` too, from each call's
opening marker, when the format opens calls with a special token.
"""

from __future__ import annotations

import json

from ..engine.constraints import GrammarError, StructuredSpec, tool_call_spec
from .custom_tools import call_grammar
from .errors import APIError
from .requests import ChatRequest

# Tool-call markup that tool_choice "required"/named can be enforced in: (open tag, close tag, arguments
# key, what separates parallel calls). Each is the shape its parser reads back, every call included:
# Hermes blocks follow one another; Llama 3 JSON calls after the first need a ";" between them.
TOOL_CALL_MARKUP = {
    "hermes": ("<tool_call>", "</tool_call>", "arguments", ""),
    "llama3_json": ("", "", "parameters", ";"),
    "llama4_json": ("", "", "parameters", ";"),
}
FREE_TEXT_TOKENS = ("<think>", "</think>")  # special tokens free text may hold around constrained calls
AUTO_CONSTRAINT = "tools"  # the param of an auto-mode grammar (it does not switch thinking off)


class ToolChoiceSteps:
    """Tool-call grammars of :class:`~.state.ServingState`."""

    def tool_choice_constraint(self, req: ChatRequest) -> tuple[str, StructuredSpec] | None:
        """``tool_choice`` "required" or a named tool, enforced by a grammar (never downgraded)."""
        choice = req.tool_choice
        if not req.tools or choice in (None, "auto", "none"):
            if isinstance(choice, (dict, str)) and choice not in (None, "auto", "none") and not req.tools:
                raise APIError(400, "tool_choice needs tools", param="tool_choice")
            return None
        if isinstance(choice, dict):
            name = (choice.get("function") or {}).get("name") or choice.get("name")
            if not name:
                raise APIError(400, "tool_choice must name a function", param="tool_choice")
        elif choice == "required":
            name = None
        else:
            raise APIError(400, f"unknown tool_choice {choice!r}", param="tool_choice")
        markup = TOOL_CALL_MARKUP.get(self.tool_parser or "")
        if markup is None:
            raise APIError(400, f"tool_choice {choice!r} cannot be enforced for the {self.tool_parser or 'no'} "
                           f"tool-call format of this model", param="tool_choice", code="tool_choice_unsupported")
        prefix, suffix, args_key, separator = markup
        several = name is None and req.parallel_tool_calls is not False
        try:
            if req.custom_tools:
                spec = call_grammar(req.tools, req.custom_tools, name=name, open_tag=self._tag(prefix),
                                    close_tag=self._tag(suffix), arguments_key=args_key, several=several,
                                    separator=separator)
            else:
                spec = tool_call_spec(req.tools, name=name, open_tag=self._tag(prefix), close_tag=self._tag(suffix),
                                      arguments_key=args_key, several=several, separator=separator)
        except GrammarError as exc:
            raise APIError(400, str(exc), param="tool_choice") from exc
        return "tool_choice", spec

    def custom_tools_constraint(self, req: ChatRequest) -> tuple[str, StructuredSpec] | None:
        """In ``auto``, a request with custom tools is free text until a call's opening special
        token, and each call follows its tool's grammar (function calls their schema)."""
        if not req.custom_tools or not req.tools or req.tool_choice not in (None, "auto"):
            return None
        markup = TOOL_CALL_MARKUP.get(self.tool_parser or "")
        vocab = self._vocab()
        if markup is None or markup[0] not in vocab:
            return None  # no opening token to start from: the call is parsed, not constrained
        prefix, suffix, args_key, _ = markup
        try:
            spec = call_grammar(req.tools, req.custom_tools, name=None, open_tag=prefix, close_tag=self._tag(suffix),
                                arguments_key=args_key, several=True,
                                free_text=tuple(t for t in FREE_TEXT_TOKENS if t in vocab))
        except GrammarError as exc:
            raise APIError(400, str(exc), param="tools") from exc
        return AUTO_CONSTRAINT, spec

    def _vocab(self) -> dict:
        return self.tokenizer.get_vocab() if hasattr(self.tokenizer, "get_vocab") else {}

    def _tag(self, tag: str) -> str:
        """A markup tag as a Lark fragment: a special-token reference when the vocabulary has it."""
        if not tag:
            return '""'
        return tag if tag in self._vocab() else json.dumps(tag)

    def output_constraint(self, req: ChatRequest) -> tuple[str, StructuredSpec] | None:
        """The one grammar a request asks for: a structured-output format, a forced tool call, or the
        grammars of its custom tools."""
        spec = self.structured_spec(req)
        forced_tools = self.tool_choice_constraint(req)
        if spec and forced_tools:
            raise APIError(400, "a forced tool_choice cannot be combined with a structured-output format",
                           param="tool_choice")
        return spec or forced_tools or self.custom_tools_constraint(req)
