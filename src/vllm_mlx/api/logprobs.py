"""Logprobs in OpenAI's two wire formats: chat (`content` entries) and legacy completions."""

from __future__ import annotations

from typing import Any

from ..engine.request import TokenLogprob


class TokenText:
    """Token id -> its text as OpenAI shows it (decoded alone; bytes as UTF-8)."""

    def __init__(self, tokenizer: Any):
        self._decode = tokenizer.decode
        self._memo: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._memo.get(token_id)
        if text is None:
            text = self._memo[token_id] = self._decode([token_id])
        return text


def _entry(text: str, logprob: float) -> dict:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def chat_logprobs(items: list[TokenLogprob], token_text: TokenText) -> dict:
    """The chat `logprobs` object: {"content": [{token, logprob, bytes, top_logprobs}], "refusal": None}."""
    content = []
    for item in items:
        entry = _entry(token_text(item.token_id), item.logprob)
        entry["top_logprobs"] = [_entry(token_text(t), lp) for t, lp in item.top]
        content.append(entry)
    return {"content": content, "refusal": None}


def completion_logprobs(items: list[TokenLogprob], token_text: TokenText, text_offset: int) -> dict:
    """The legacy completions `logprobs` object with parallel lists and character offsets."""
    tokens, token_logprobs, top, offsets = [], [], [], []
    for item in items:
        text = token_text(item.token_id)
        offsets.append(text_offset)
        text_offset += len(text)
        tokens.append(text)
        token_logprobs.append(item.logprob)
        top.append({token_text(t): lp for t, lp in item.top} if item.top else None)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets}
