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


@pytest.mark.parametrize("output", [" time there was a king.", " 日本 🙂 héllo\n\tdone", "\n\n- item", "!?"])
def test_streaming_decoder_matches_window_decoding(tokenizer, output):
    """The tokenizers library's streaming decoder (the fast path) gives the window decoding's text
    after every token, not only at the end."""
    from vllm_mlx.engine.detokenizer import streaming_backend

    backend = streaming_backend(tokenizer)
    assert backend is not None  # the test tokenizers are fast ones without space clean-up
    prompt = tokenizer.encode("Once upon a", add_special_tokens=False)
    slow, fast = IncrementalDetokenizer(tokenizer, prompt), IncrementalDetokenizer(tokenizer, prompt, backend=backend)
    for t in tokenizer.encode(output, add_special_tokens=False) + [next(iter(tokenizer.eos_token_ids))]:
        slow.add_token(t)
        fast.add_token(t)
        assert fast.text == slow.text
    slow.finalize()
    fast.finalize()
    assert fast.text == slow.text == output


def test_streaming_decoder_flushes_an_incomplete_character(tokenizer):
    from vllm_mlx.engine.detokenizer import streaming_backend

    ids = tokenizer.encode("🙂", add_special_tokens=False)
    prompt = tokenizer.encode("Hi", add_special_tokens=False)
    slow = IncrementalDetokenizer(tokenizer, prompt)
    fast = IncrementalDetokenizer(tokenizer, prompt, backend=streaming_backend(tokenizer))
    for d in (slow, fast):
        for t in ids[:-1] if len(ids) > 1 else ids:
            d.add_token(t)
        d.finalize()
    assert fast.text == slow.text
