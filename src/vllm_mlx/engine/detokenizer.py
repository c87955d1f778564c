"""Incremental detokenization that is exact for any tokenizer.

Text is produced by decoding a short sliding window of tokens and emitting
what the newest token added. The window starts with the last prompt tokens,
so a first output token that begins with a space (BPE "Ġthe", SentencePiece
"▁the") keeps it, and text is held back while it ends in an incomplete UTF-8
sequence. One instance lives for the whole request.
"""

from __future__ import annotations

from typing import Any

PROMPT_CONTEXT_TOKENS = 6  # prompt tokens kept as left context for the first output tokens
INCOMPLETE = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_ids: list[int], skip_special_tokens: bool = True):
        self._decode = tokenizer.decode
        self._skip_special = skip_special_tokens
        context = list(prompt_ids[-PROMPT_CONTEXT_TOKENS:])
        self._tokens = context
        self._prefix_offset = 0  # window start
        self._read_offset = len(context)  # tokens before this are already in `text`
        self.text = ""

    def _window_text(self) -> tuple[str, str]:
        """(text of the window before the unread tokens, text of the whole window)."""
        window = self._tokens[self._prefix_offset :]
        prefix = self._decode(window[: self._read_offset - self._prefix_offset], skip_special_tokens=self._skip_special)
        return prefix, self._decode(window, skip_special_tokens=self._skip_special)

    def add_token(self, token: int) -> None:
        self._tokens.append(token)
        prefix, full = self._window_text()
        if len(full) > len(prefix) and not full.endswith(INCOMPLETE):
            self.text += full[len(prefix) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._tokens)

    def finalize(self) -> None:
        """Flush text held back at the end (an incomplete character becomes U+FFFD)."""
        if self._read_offset < len(self._tokens):
            prefix, full = self._window_text()
            if len(full) > len(prefix):
                self.text += full[len(prefix) :]
            self._prefix_offset = self._read_offset = len(self._tokens)
