"""Units of the engine: stop-string matching and the batched sampler."""

from __future__ import annotations

import mlx.core as mx
import pytest

from vllm_mlx.engine.request import SamplingParams
from vllm_mlx.engine.sampler import BatchSamplingParams, make_rng_key, sample
from vllm_mlx.engine.stop import StopStringMatcher


def test_stop_matcher_finds_earliest_and_holds_back_prefixes():
    m = StopStringMatcher(("END", "stop here"))
    assert m.find("abc") is None
    assert m.find("abc END xyz stop here") == 4
    assert m.safe_length("hello E") == len("hello ")
    assert m.safe_length("hello EN") == len("hello ")
    assert m.safe_length("hello stop h") == len("hello ")
    assert m.safe_length("hello") == 5
    # only search from near the last checked position
    assert m.find("xxEND", start=4) == 2
    assert StopStringMatcher(()).safe_length("anything") == len("anything")


def _params(*ps: SamplingParams) -> BatchSamplingParams:
    return BatchSamplingParams.from_params(list(ps))


def test_greedy_rows_take_argmax():
    logits = mx.array([[0.0, 3.0, 1.0], [5.0, 0.0, 1.0]])
    tokens, _ = sample(logits, _params(SamplingParams(temperature=0), SamplingParams(temperature=0)), None)
    assert tokens.tolist() == [1, 0]


def test_top_k_one_is_argmax_even_at_high_temperature():
    logits = mx.random.normal((4, 100), key=mx.random.key(0))
    p = SamplingParams(temperature=2.0, top_k=1)
    keys = mx.stack([make_rng_key(i) for i in range(4)])
    tokens, _ = sample(logits, _params(*[p] * 4), keys)
    assert tokens.tolist() == mx.argmax(logits, axis=-1).tolist()


def tokens_drawn(probs: list[float], params: SamplingParams, draws: int = 200) -> set[int]:
    """The set of tokens one row draws over many steps of its own key stream."""
    logits = mx.log(mx.array([probs]))
    key, seen = make_rng_key(1), set()
    for _ in range(draws):
        tok, keys = sample(logits, _params(params), key[None])
        key = keys[0]
        seen.add(tok.item())
    return seen


def test_top_p_keeps_only_the_nucleus():
    # top_p=0.7 keeps the first two tokens only (0.5 + 0.3 covers it)
    assert tokens_drawn([0.5, 0.3, 0.15, 0.05], SamplingParams(temperature=1.0, top_p=0.7)) == {0, 1}


def test_min_p_drops_unlikely_tokens():
    # min_p=0.2 keeps tokens with p >= 0.2 * 0.6 = 0.12
    assert tokens_drawn([0.6, 0.3, 0.05, 0.05], SamplingParams(temperature=1.0, min_p=0.2)) == {0, 1}


def test_top_k_two_keeps_two():
    assert tokens_drawn([0.4, 0.3, 0.2, 0.1], SamplingParams(temperature=1.0, top_k=2)) == {0, 1}


def test_sampling_follows_the_distribution():
    probs = [0.7, 0.2, 0.1]
    logits = mx.log(mx.array([probs] * 2000))
    keys = mx.stack([make_rng_key(i) for i in range(2000)])
    tokens, _ = sample(logits, _params(*[SamplingParams(temperature=1.0)] * 2000), keys)
    counts = [tokens.tolist().count(i) / 2000 for i in range(3)]
    assert counts == pytest.approx(probs, abs=0.04)


def test_seeded_row_is_independent_of_its_batch_neighbours():
    logits = mx.random.normal((3, 50), key=mx.random.key(5))
    seeded = SamplingParams(temperature=1.0, seed=1234)
    alone, _ = sample(logits[1:2], _params(seeded), make_rng_key(1234)[None])
    keys = mx.stack([make_rng_key(7), make_rng_key(1234), make_rng_key(9)])
    other = SamplingParams(temperature=0.8, top_k=5)
    batched, _ = sample(logits, _params(other, seeded, SamplingParams(temperature=0)), keys)
    assert batched.tolist()[1] == alone.item()
