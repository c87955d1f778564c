"""What a tokenizer's vocabulary bounds: the most characters of input one token can stand for.

A token stands for at most L characters, L being its vocabulary's longest entry; so a text needs at
least (its characters / L) tokens -- when the tokenizer keeps every character. A normalizer may
shrink the text first: composing ones (NFC, NFKC) fold at most three characters into one (Hangul
jamo), so L x 3 holds for them. Normalizers that *delete* characters (BERT's ``clean_text`` drops
control characters) and WordPiece's one ``[UNK]`` for an over-long word break the bound only for
text made mostly of such characters or words, never for real text (docs/reliability.md).
"""

from __future__ import annotations

from typing import Any

NORMALIZER_SHRINK = 3  # NFC/NFKC compose at most 3 characters into one


def max_chars_per_token(tokenizer: Any) -> int:
    """Characters of input one token can stand for at most (see the module docstring)."""
    try:
        vocab = tokenizer.get_vocab()
    except Exception:  # no vocabulary to read: a generous bound rather than none
        return 1024
    longest = max((len(token) for token in vocab), default=1) or 1
    return longest * (NORMALIZER_SHRINK if _normalizer(tokenizer) is not None else 1)


def _normalizer(tokenizer: Any) -> Any:
    """The fast tokenizer's normalizer (through mlx-lm's wrapper too), or None."""
    for candidate in (tokenizer, getattr(tokenizer, "_tokenizer", None)):
        backend = getattr(candidate, "backend_tokenizer", None)
        if backend is not None:
            return backend.normalizer
    return None
