"""Logprobs in OpenAI's two wire formats: chat (`content` entries) and legacy completions.

A token's ``bytes`` are its raw bytes from the vocabulary, so joining the ``bytes`` of every token
rebuilds the text exactly, even where a token holds only part of a UTF-8 character (a byte-level BPE
splits most CJK characters and emoji). Such a token's ``token`` string shows its bytes escaped
(``\\xe6\\x9d``) instead of U+FFFD.
"""

from __future__ import annotations

import codecs
import re
from typing import Any

from ..engine.request import TokenLogprob

INCOMPLETE = "\ufffd"
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet: the character each byte is written as in the vocabulary."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {chr(b): b for b in printable}, 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return table


class TokenText:
    """Token id -> its raw bytes and its text as OpenAI shows it (memoized per request)."""

    def __init__(self, tokenizer: Any):
        self._decode = tokenizer.decode
        self._piece = getattr(tokenizer, "convert_ids_to_tokens", None)
        self._alphabet = _byte_level_alphabet()
        self._memo: dict[int, tuple[str, bytes]] = {}

    def entry(self, token_id: int) -> tuple[str, bytes]:
        found = self._memo.get(token_id)
        if found is None:
            found = self._memo[token_id] = self._lookup(token_id)
        return found

    def __call__(self, token_id: int) -> str:
        return self.entry(token_id)[0]

    def bytes_of(self, token_id: int) -> bytes:
        return self.entry(token_id)[1]

    def _lookup(self, token_id: int) -> tuple[str, bytes]:
        text = self._decode([token_id])
        if INCOMPLETE not in text:
            return text, text.encode("utf-8")
        raw = self._raw_bytes(token_id)
        if raw is None:
            return text, text.encode("utf-8")
        return raw.decode("utf-8", errors="backslashreplace"), raw

    def _raw_bytes(self, token_id: int) -> bytes | None:
        """The token's bytes from its vocabulary entry: ``<0xE6>`` byte tokens (SentencePiece) or
        byte-level BPE pieces; None when the piece is neither."""
        piece = self._piece(token_id) if self._piece is not None else None
        if not isinstance(piece, str) or not piece:
            return None
        byte = _BYTE_TOKEN.fullmatch(piece)
        if byte:
            return bytes([int(byte.group(1), 16)])
        if all(ch in self._alphabet for ch in piece):
            return bytes(self._alphabet[ch] for ch in piece)
        return None


def _entry(token_text: TokenText, token_id: int, logprob: float) -> dict:
    text, raw = token_text.entry(token_id)
    return {"token": text, "logprob": logprob, "bytes": list(raw)}


def chat_logprobs(items: list[TokenLogprob], token_text: TokenText) -> dict:
    """The chat `logprobs` object: {"content": [{token, logprob, bytes, top_logprobs}], "refusal": None}."""
    content = []
    for item in items:
        entry = _entry(token_text, item.token_id, item.logprob)
        entry["top_logprobs"] = [_entry(token_text, t, lp) for t, lp in item.top]
        content.append(entry)
    return {"content": content, "refusal": None}


class TextOffsets:
    """Character offsets of one choice's tokens in its text, across streamed chunks (a token that
    ends inside a character moves the offset only once the character is complete)."""

    def __init__(self):
        self.chars = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def advance(self, raw: bytes) -> int:
        start = self.chars
        self.chars += len(self._decoder.decode(raw))
        return start


def completion_logprobs(items: list[TokenLogprob], token_text: TokenText, offsets: TextOffsets) -> dict:
    """The legacy completions `logprobs` object with parallel lists and character offsets."""
    tokens, token_logprobs, top, starts = [], [], [], []
    for item in items:
        text, raw = token_text.entry(item.token_id)
        starts.append(offsets.advance(raw))
        tokens.append(text)
        token_logprobs.append(item.logprob)
        top.append({token_text(t): lp for t, lp in item.top} if item.top else None)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": starts}
