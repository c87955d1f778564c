"""Constrained decoding with llguidance: a grammar per request, a token mask per row.

A request that must follow a grammar (a JSON schema, a regex, a choice, a Lark
grammar) carries an ``LLMatcher``. Before each of its tokens is sampled, the
engine asks the matcher which tokens may come next and masks every other
logit to -inf, so the output follows the grammar by construction. Rows
without a grammar in the same batch get no mask and pay nothing.

llguidance ships the mask application as a Metal kernel; this module applies
the same packed bitmask with plain MLX ops, so it runs on every backend.

A grammar must be usable before it reaches the engine: llguidance compiles it within its parser and
lexer limits (errors without the parser's internal state), then a short dry run decodes
``DRY_RUN_TOKENS`` tokens through a copy of the matcher -- the lowest allowed token each step -- so a
grammar that blows a limit as soon as decoding starts (``(a{1000}){1000}``, a schema whose required
properties recurse forever) is a 400 at once. A grammar that fails later, while decoding, ends its
request with a 400-coded error (``GenerationOutput.error_status``), counted in ``requests_failed``.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np

DRY_RUN_TOKENS = 8  # tokens decoded through a copy of each new matcher before it is accepted


class GrammarError(ValueError):
    """The grammar or schema cannot be compiled; the message says why."""


def grammar_error_text(message: str | None) -> str:
    """llguidance's error without the state dump that may follow it (first line only)."""
    return (message or "").strip().split("\n", 1)[0].strip()


@dataclass(frozen=True)
class StructuredSpec:
    """What the output must look like; exactly one field is set."""

    json_schema: dict | None = None
    regex: str | None = None
    choice: tuple[str, ...] | None = None
    lark: str | None = None

    def deep_copy(self) -> "StructuredSpec":
        """A spec stands for a fresh matcher (what crosses to an engine process): copies are itself."""
        return self

    def grammar(self) -> str:
        import llguidance

        if self.json_schema is not None:
            try:
                return llguidance.LLMatcher.grammar_from_json_schema(
                    json.dumps(self.json_schema), defaults={"whitespace_flexible": False}
                )
            except ValueError as exc:
                raise GrammarError(f"invalid JSON schema: {exc}") from exc
        if self.regex is not None:
            return llguidance.LLMatcher.grammar_from_regex(self.regex)
        if self.choice is not None:
            if not self.choice:
                raise GrammarError("choice must list at least one option")
            return llguidance.LLMatcher.grammar_from_regex("|".join(re.escape(c) for c in self.choice))
        if self.lark is not None:
            return llguidance.LLMatcher.grammar_from_lark(self.lark)
        raise GrammarError("empty structured-output specification")


class GrammarCompiler:
    """Turns specs into matchers for one tokenizer (the llguidance tokenizer is built once, lazily)."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: list[int]):
        self._hf = tokenizer
        self._vocab_size = vocab_size
        self._eos = eos_token_ids
        self._ll_tokenizer = None

    @property
    def ll_tokenizer(self):
        if self._ll_tokenizer is None:
            import llguidance

            backend = copy.copy(self._hf.backend_tokenizer)
            backend.no_padding()
            backend.no_truncation()
            self._ll_tokenizer = llguidance.LLTokenizer(
                backend.to_str(), n_vocab=self._vocab_size, eos_token=self._eos
            )
        return self._ll_tokenizer

    def matcher(self, spec: StructuredSpec):
        """A fresh matcher for ``spec``; raises GrammarError with the compiler's message."""
        import llguidance

        grammar = spec.grammar()
        limits = llguidance.LLParserLimits(verbose_errors=False)  # llguidance's default budgets, terse errors
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self.ll_tokenizer,
                                                                                 limits=limits)
        if is_error:
            raise GrammarError(grammar_error_text(messages[0] if messages else "") or "the grammar was rejected")
        matcher = llguidance.LLMatcher(self.ll_tokenizer, grammar, log_level=0, limits=limits)
        if matcher.is_error():
            raise GrammarError(grammar_error_text(matcher.get_error()))
        self._dry_run(matcher)
        return matcher

    def _dry_run(self, matcher) -> None:
        """Decode a few tokens through a copy: a grammar that fails as soon as it is used is refused now."""
        probe = matcher.deep_copy()
        mask = np.zeros((self._vocab_size + 31) // 32, dtype=np.int32)
        eos = set(self._eos)
        for _ in range(DRY_RUN_TOKENS):
            if probe.is_stopped():
                return
            probe.unsafe_compute_mask_ptr(mask.ctypes.data, mask.nbytes)
            if probe.is_error():
                break
            allowed = np.flatnonzero(np.unpackbits(mask.view(np.uint8), bitorder="little")[: self._vocab_size])
            token = next((int(t) for t in allowed if int(t) not in eos), None)
            if token is None:
                return  # only the end is allowed: the grammar can finish
            if not probe.consume_token(token):
                break
        if probe.is_error():
            raise GrammarError(f"the grammar fails as soon as it is used: {grammar_error_text(probe.get_error())}")


def allowed_tokens(rules: list[Any], vocab_size: int) -> mx.array | None:
    """(B, vocab) bool mask of the tokens each row may take next; None when no row has a rule.

    A row's rule is None (anything goes), a token id (exactly that token, e.g. the
    end-of-reasoning marker forced by a thinking budget) or an llguidance matcher.
    """
    if not any(r is not None for r in rules):
        return None
    words = (vocab_size + 31) // 32
    bitmask = np.full((len(rules), words), -1, dtype=np.int32)
    for i, matcher in enumerate(rules):
        if isinstance(matcher, int):
            bitmask[i] = 0
            bitmask[i, matcher // 32] = np.uint32(1 << (matcher % 32)).view(np.int32)
        elif matcher is not None and not matcher.is_stopped():
            row = bitmask[i]
            matcher.unsafe_compute_mask_ptr(row.ctypes.data, row.size * row.itemsize)
    return unpack_bitmask(bitmask, vocab_size)


def unpack_bitmask(bitmask: np.ndarray, vocab_size: int) -> mx.array:
    """llguidance's packed masks (..., words) int32 -> (..., vocab) bool."""
    packed = mx.array(bitmask.view(np.uint32))
    bits = (packed[..., None] >> mx.arange(32, dtype=mx.uint32)) & 1
    return bits.reshape(*bitmask.shape[:-1], bitmask.shape[-1] * 32)[..., :vocab_size].astype(mx.bool_)


def proposal_masks(seq: Any, proposals: list[int], vocab_size: int) -> tuple[list[int], np.ndarray]:
    """For the proposals of a row whose tokens may be steered (speculative decoding): the leading
    proposals its rules allow, and the packed mask of the row's tokens at each position of the verify
    step (one more than those proposals). The rules walk the proposals as the row would take them: a
    reasoning budget (a copy of it) forces the end of reasoning where it runs out, the grammar's matcher
    masks once it has started (after its trigger) and is rolled back afterwards; a stop token, or a
    grammar that is complete, ends the walk after it."""
    matcher, started = seq.constraint, seq.constraint_started or seq.constraint is None
    after = seq.constraint_after
    budget = copy.deepcopy(seq.reasoning_budget)
    markers = max(len(budget.start), len(budget.end)) if budget is not None else 0
    recent = list(seq.output_ids[-max(len(after), markers, 1):])
    masks = np.full((len(proposals) + 1, (vocab_size + 31) // 32), -1, dtype=np.int32)
    kept, consumed = [], 0
    for j, token in enumerate([*proposals, None]):
        row, forced = masks[j], budget.next_forced if budget is not None else None
        if forced is not None:  # as Sequence.next_token_rule: a forced token before the grammar
            row[:] = 0
            row.view(np.uint32)[forced // 32] = np.uint32(1 << (forced % 32))
        elif matcher is not None and started and not matcher.is_stopped():
            matcher.unsafe_compute_mask_ptr(row.ctypes.data, row.size * row.itemsize)
        if token is None or not (row.view(np.uint32)[token // 32] >> (token % 32)) & 1:
            break
        kept.append(token)
        if token in seq.stop_ids:
            break
        recent.append(token)
        if budget is not None:  # as Sequence.append_token: the budget, then the grammar
            budget.on_token(token, recent)
        if matcher is None:
            continue
        if not started:
            started = recent[-len(after):] == after
        elif not matcher.consume_token(token):
            kept.pop()
            break
        else:
            consumed += 1
            if matcher.is_stopped():
                break
    if consumed:
        matcher.rollback(consumed)
    return kept, masks[:len(kept) + 1]


def tool_call_spec(
    tools: list[dict],
    *,
    name: str | None = None,
    open_tag: str = "<tool_call>",
    close_tag: str = "</tool_call>",
    name_key: str = "name",
    arguments_key: str = "arguments",
    several: bool = False,
    separator: str = "",
) -> StructuredSpec:
    """A grammar forcing tool calls — the hook for ``tool_choice: "required"`` or a named function.

    Each call is ``open_tag`` + a JSON object ``{name_key: <tool name>, arguments_key: <its
    parameters schema>}`` + ``close_tag``. Tags that are special tokens of the vocabulary are given
    as they are (``<tool_call>``), literal text in double quotes (``"[TOOL_CALLS]"``). ``name``
    restricts the call to one function; ``several`` allows more than one call in a row, with
    ``separator`` between two calls (Llama 3 JSON: ``;``).
    """
    schema = tool_call_schema(tools, name=name, name_key=name_key, arguments_key=arguments_key)
    call = f'{open_tag} "\\n" %json {json.dumps(schema)} "\\n" {close_tag}'
    more = f" ({json.dumps(separator) + ' ' if separator else ''}call)*" if several else ""
    return StructuredSpec(lark=f"start: call{more}\ncall: {call}")


def tool_call_schema(tools: list[dict], *, name: str | None = None, name_key: str = "name",
                     arguments_key: str = "arguments") -> dict:
    """The JSON schema of one call of the request's function tools (of ``name`` only, when given):
    ``{name_key: <tool name>, arguments_key: <its parameters>}``, compact (no free whitespace)."""
    functions = [t.get("function", t) for t in tools if t.get("type", "function") == "function"]
    if name is not None:
        functions = [f for f in functions if f.get("name") == name]
        if not functions:
            raise GrammarError(f"tool_choice names {name!r}, which is not among the request's tools")
    if not functions:
        raise GrammarError("tool calls are required but the request defines no function tools")
    options = [
        {
            "type": "object",
            "properties": {name_key: {"const": f["name"]},
                           arguments_key: f.get("parameters") or {"type": "object"}},
            "required": [name_key, arguments_key],
            "additionalProperties": False,
        }
        for f in functions
    ]
    schema = dict(options[0]) if len(options) == 1 else {"anyOf": options}
    schema["x-guidance"] = {"whitespace_flexible": False}  # compact JSON: no room to spin on spaces
    return schema
