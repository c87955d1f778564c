"""Tokenizers of the tiny test models' families.

The byte-level BPE training (and its generated corpus) is the demo model's:
``vllm_mlx.models.demo.tokenizer``.  This module holds the families' added
tokens -- qwen3 (the demo model's), llama, and the ``arch_models`` families --
and ``train_tokenizer(family, vocab_size)``.
"""

from __future__ import annotations

from tokenizers import Tokenizer

from vllm_mlx.models.demo.tokenizer import QWEN3_TOKENS, build_corpus, token_byte_table, train_bpe_tokenizer

__all__ = ["FAMILY_BOS", "FAMILY_TOKENS", "build_corpus", "token_byte_table", "train_tokenizer"]


def _specials(*special: str, plain: tuple[str, ...] = ()) -> list[tuple[str, bool]]:
    return [(t, True) for t in special] + [(t, False) for t in plain]


_QWEN_TAGS = ("<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")

# Added tokens per family: (content, special).
FAMILY_TOKENS: dict[str, list[tuple[str, bool]]] = {
    "qwen3": list(QWEN3_TOKENS),
    "llama": [
        ("<|begin_of_text|>", True),
        ("<|end_of_text|>", True),
        ("<|start_header_id|>", True),
        ("<|end_header_id|>", True),
        ("<|eot_id|>", True),
        ("<|python_tag|>", True),
        ("<|eom_id|>", True),
    ],
    # The families below are used by ``arch_models`` (hybrid / sliding-window
    # architectures); their chat-control tokens follow the public formats.
    # ``_specials(*special, plain=(...))``: special tokens, then added ones.
    "gemma3": _specials("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"),
    "gemma4": _specials(
        "<pad>", "<eos>", "<bos>", "<|turn>", "<turn|>", "<|think|>", "<|channel>", "<channel|>",
        "<|tool>", "<tool|>", "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>",
        '<|"|>',
    ),
    "harmony": _specials(
        "<|startoftext|>", "<|endoftext|>", "<|return|>", "<|constrain|>", "<|channel|>",
        "<|start|>", "<|end|>", "<|message|>", "<|call|>",
    ),
    "nemotron_h": _specials("<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", plain=_QWEN_TAGS),
    "falcon_h1": _specials(
        "<|pad|>", "<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>",
        plain=_QWEN_TAGS[2:],
    ),
    "glm4": _specials(
        "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
        "<|assistant|>", "<|observation|>",
        plain=_QWEN_TAGS + ("<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>"),
    ),
    "lfm2": _specials(
        "<|pad|>", "<|startoftext|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>",
        "<|tool_list_start|>", "<|tool_list_end|>", "<|tool_call_start|>", "<|tool_call_end|>",
        "<|tool_response_start|>", "<|tool_response_end|>",
    ),
}

# Families whose tokenizer prepends a BOS token on ``encode`` (a post-processor,
# as in the real tokenizer.json files); their chat templates also start with it.
FAMILY_BOS: dict[str, str] = {
    "llama": "<|begin_of_text|>",
    "gemma3": "<bos>",
    "gemma4": "<bos>",
    "falcon_h1": "<|begin_of_text|>",
    "lfm2": "<|startoftext|>",
}


def train_tokenizer(family: str, vocab_size: int = 2048) -> Tokenizer:
    """Train (once per process, then cached) the byte-level BPE tokenizer.

    ``family`` is a key of ``FAMILY_TOKENS`` (``"qwen3"``, ``"llama"``, or one
    of the ``arch_models`` families); it decides the special tokens (appended
    after the learned vocabulary) and, for the ``FAMILY_BOS`` families, a
    post-processor that prepends the BOS token.  The result has exactly
    ``vocab_size`` tokens.  A fresh ``Tokenizer`` is returned on every call,
    so callers may mutate it.
    """
    if family not in FAMILY_TOKENS:
        raise ValueError(f"unknown family {family!r}; expected one of {sorted(FAMILY_TOKENS)}")
    return train_bpe_tokenizer(FAMILY_TOKENS[family], vocab_size, FAMILY_BOS.get(family))
