"""Incremental detokenization that is exact for any tokenizer.

Text is produced by decoding a short sliding window of tokens and emitting
what the newest token added. The window starts with the last prompt tokens,
so a first output token that begins with a space (BPE "Ġthe", SentencePiece
"▁the") keeps it, and text is held back while it ends in an incomplete UTF-8
sequence. One instance lives for the whole request.

A fast tokenizer whose decoding needs no Python post-processing is stepped by
the tokenizers library's own streaming decoder (``DecodeStream``: the same
window rule, in Rust, one call per token instead of two full decodes).
"""

from __future__ import annotations

from typing import Any

PROMPT_CONTEXT_TOKENS = 6  # prompt tokens kept as left context for the first output tokens
INCOMPLETE = "\ufffd"


def streaming_backend(tokenizer: Any) -> Any:
    """The Rust ``tokenizers.Tokenizer`` behind a (wrapped) fast tokenizer when its own decode adds
    nothing to the backend's (no clean-up of spaces), else None."""
    try:
        from tokenizers import Tokenizer
        from tokenizers.decoders import DecodeStream  # noqa: F401  (tokenizers >= 0.21)
    except ImportError:
        return None
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    backend = getattr(hf, "backend_tokenizer", None)
    if not isinstance(backend, Tokenizer) or getattr(hf, "clean_up_tokenization_spaces", False):
        return None
    return backend


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_ids: list[int], skip_special_tokens: bool = True,
                 backend: Any = None):
        """``backend``: :func:`streaming_backend` of the tokenizer (looked up once per model), or None
        for the window decoding through ``tokenizer.decode``."""
        self._decode = tokenizer.decode
        self._skip_special = skip_special_tokens
        context = list(prompt_ids[-PROMPT_CONTEXT_TOKENS:])
        self._tokens = context
        self._prefix_offset = 0  # window start
        self._read_offset = len(context)  # tokens before this are already in `text`
        self.text = ""
        self._backend = backend
        self._stream = None
        if backend is not None:
            from tokenizers.decoders import DecodeStream

            self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)
            if context:
                self._stream.step(backend, context)  # left context only: its text is not output

    def _window_text(self) -> tuple[str, str]:
        """(text of the window before the unread tokens, text of the whole window)."""
        window = self._tokens[self._prefix_offset :]
        prefix = self._decode(window[: self._read_offset - self._prefix_offset], skip_special_tokens=self._skip_special)
        return prefix, self._decode(window, skip_special_tokens=self._skip_special)

    def add_token(self, token: int) -> None:
        self._tokens.append(token)
        if self._stream is not None:
            chunk = self._stream.step(self._backend, token)
            if chunk is None:
                return
            self.text += chunk
        else:
            prefix, full = self._window_text()
            if len(full) <= len(prefix) or full.endswith(INCOMPLETE):
                return
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
