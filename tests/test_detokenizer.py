"""Incremental detokenization: exact text, leading spaces kept, no broken UTF-8 mid-stream."""

from __future__ import annotations

import pytest
from mlx_lm.utils import load_tokenizer

from vllm_mlx.engine.detokenizer import IncrementalDetokenizer


@pytest.fixture(scope="module", params=["tiny_qwen3", "tiny_llama"])
def tokenizer(request):
    return load_tokenizer(request.getfixturevalue(request.param))


@pytest.mark.parametrize("output", [" time there was a king.", " 日本 🙂 héllo\n\tdone", "\n\n- item", "!?"])
def test_incremental_text_is_exact_and_never_broken(tokenizer, output):
    prompt = tokenizer.encode("Once upon a", add_special_tokens=False)
    out_ids = tokenizer.encode(output, add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer, prompt)
    states = []
    for t in out_ids:
        detok.add_token(t)
        states.append(detok.text)
    detok.finalize()
    assert detok.text == output
    assert all("\ufffd" not in s for s in states)
    assert all(output.startswith(s) for s in states)


def test_special_tokens_are_not_text(tokenizer):
    eos = next(iter(tokenizer.eos_token_ids))
    detok = IncrementalDetokenizer(tokenizer, tokenizer.encode("Hi", add_special_tokens=False))
    for t in tokenizer.encode(" a", add_special_tokens=False) + [eos]:
        detok.add_token(t)
    detok.finalize()
    assert detok.text == " a"
