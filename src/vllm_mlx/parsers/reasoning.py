"""Reasoning parsers for tag-delimited thinking: ``<think>…</think>`` and Mistral's
``[THINK]…[/THINK]``.

Rules (the same for every tag pair):

- An opening tag at the very start of the output (after optional whitespace) opens reasoning.
- With ``starts_in_reasoning`` (the chat template put the opening tag in the prompt, as
  Qwen3-Thinking and DeepSeek-R1 templates do) the output starts inside reasoning; a repeated
  opening tag at the start is dropped.
- Reasoning ends at the closing tag; everything after it is content.  Output that ends before
  the closing tag was all reasoning (the model ran out of tokens while thinking).
- Without an opening tag and without ``starts_in_reasoning`` the output is plain content: a
  model answering without thinking streams content, never reasoning.  A stray closing tag in
  content is dropped (it is markup, not text).
"""

from __future__ import annotations

from typing import ClassVar

from .base import ReasoningParser
from .events import ContentDelta, Event, ReasoningDelta
from .scanning import held_suffix_length

_DECIDING = "deciding"
_REASONING = "reasoning"
_CONTENT = "content"


class ThinkTagReasoningParser(ReasoningParser):
    """Reasoning between an opening and a closing tag; see the module docstring."""

    name: ClassVar[str] = "think"
    open_tag: ClassVar[str] = "<think>"
    close_tag: ClassVar[str] = "</think>"

    def __init__(self) -> None:
        super().__init__()
        self._buffer = ""
        self._state = _DECIDING
        self._events: list[Event] = []

    @classmethod
    def prompt_opens_reasoning(cls, prompt: str) -> bool:
        """True when the rendered prompt ends with the opening tag (whitespace aside)."""
        return prompt.rstrip().endswith(cls.open_tag)

    def feed(self, text: str) -> list[Event]:
        self._buffer += text
        self._drain(final=False)
        return self._take()

    def finish(self) -> list[Event]:
        self._drain(final=True)
        if self._buffer:
            reasoning = self._state == _REASONING or (self._state == _DECIDING and self.starts_in_reasoning)
            self._emit(self._buffer, reasoning)
            self._buffer = ""
        return self._take()

    def _drain(self, final: bool) -> None:
        while self._buffer:
            if self._state == _DECIDING:
                if not self._decide(final):
                    return
            elif self._state == _REASONING:
                if not self._pass_until_close(reasoning=True, final=final):
                    return
            elif not self._pass_until_close(reasoning=False, final=final):
                return

    def _decide(self, final: bool) -> bool:
        stripped = self._buffer.lstrip()
        if stripped.startswith(self.open_tag):
            self._buffer = stripped[len(self.open_tag) :]
            self._state = _REASONING
            return True
        if not final and (not stripped or self.open_tag.startswith(stripped)):
            return False  # could still become the opening tag
        self._state = _REASONING if self.starts_in_reasoning else _CONTENT
        return True

    def _pass_until_close(self, *, reasoning: bool, final: bool) -> bool:
        """Emit text up to the closing tag (consumed; reasoning turns into content there).  In
        content, a stray closing tag is dropped.  False when waiting for more text."""
        position = self._buffer.find(self.close_tag)
        if position >= 0:
            self._emit(self._buffer[:position], reasoning)
            self._buffer = self._buffer[position + len(self.close_tag) :]
            self._state = _CONTENT
            return True
        held = 0 if final else held_suffix_length(self._buffer, (self.close_tag,))
        self._emit(self._buffer[: len(self._buffer) - held], reasoning)
        self._buffer = self._buffer[len(self._buffer) - held :]
        return False

    def _emit(self, text: str, reasoning: bool) -> None:
        if text:
            self._events.append(ReasoningDelta(text) if reasoning else ContentDelta(text))

    def _take(self) -> list[Event]:
        events, self._events = self._events, []
        return events


class Qwen3ReasoningParser(ThinkTagReasoningParser):
    """Qwen3 / QwQ / GLM / Kimi and other ``<think>`` models."""

    name: ClassVar[str] = "qwen3"
    markers: ClassVar[tuple[str, ...]] = ("<think>", "</think>")


class DeepSeekR1ReasoningParser(ThinkTagReasoningParser):
    """DeepSeek-R1 and its distills: the same tags.  R1 templates open ``<think>`` in the prompt,
    so the output usually has no opening tag; the pipeline's ``starts_in_reasoning`` (see
    :meth:`prompt_opens_reasoning`) covers that."""

    name: ClassVar[str] = "deepseek_r1"
    markers: ClassVar[tuple[str, ...]] = ("<think>", "</think>")


class MistralReasoningParser(ThinkTagReasoningParser):
    """Magistral: ``[THINK]…[/THINK]``."""

    name: ClassVar[str] = "mistral"
    open_tag: ClassVar[str] = "[THINK]"
    close_tag: ClassVar[str] = "[/THINK]"
    markers: ClassVar[tuple[str, ...]] = ("[THINK]", "[/THINK]")
