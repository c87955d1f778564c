"""The text of a continuation, made beside its consumer from the engine's token-id deltas: stop strings
across tokens, min_tokens, held-back tails, logprobs released with their text."""

from __future__ import annotations

import pytest
from mlx_lm.utils import load_tokenizer

from vllm_mlx.engine.detokenizer import streaming_backend
from vllm_mlx.engine.request import FinishReason, GenerationOutput, SamplingParams, TokenLogprob
from vllm_mlx.engine.text_stream import TextStream


@pytest.fixture(scope="module", params=["tiny_qwen3", "tiny_llama"])
def tokenizer(request):
    return load_tokenizer(request.getfixturevalue(request.param))


def run(tokenizer, text: str, sampling: SamplingParams, finish: FinishReason = FinishReason.LENGTH,
        fast: bool = True):
    """Feed ``text``'s tokens one delta per token (as the engine sends them), the last one final."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    prompt = tokenizer.encode("Once upon a", add_special_tokens=False)
    stream = TextStream(tokenizer, prompt, sampling, backend=streaming_backend(tokenizer) if fast else None)
    deltas = []
    for i, tok in enumerate(ids):
        lp = [TokenLogprob(tok, -float(i))] if sampling.logprobs else None
        last = i == len(ids) - 1
        out = GenerationOutput("r", token_ids=[tok], completion_tokens=i + 1, logprobs=lp,
                               finish_reason=finish if last else None)
        delta = stream.feed(out)
        if delta is not None:
            deltas.append(delta)
        if stream.done:
            break
    return ids, deltas


@pytest.mark.parametrize("fast", [True, False])
def test_stop_string_across_tokens_ends_the_text_before_it(tokenizer, fast):
    ids, deltas = run(tokenizer, " the quick brown fox jumps", SamplingParams(stop=("wn fo",)), fast=fast)
    final = deltas[-1]
    assert "".join(d.text for d in deltas) == " the quick bro"
    assert final.finish_reason is FinishReason.STOP and final.stop_sequence == "wn fo"
    assert final.completion_tokens < len(ids)  # counted up to the token that completed the stop string
    assert all(not d.finished for d in deltas[:-1])


def test_text_is_held_back_while_it_could_become_a_stop_string(tokenizer):
    _, deltas = run(tokenizer, " abc abd", SamplingParams(stop=("abx",)))
    shown = ""
    for d in deltas:
        shown += d.text
        assert not shown.endswith("ab") or d.finished  # "ab" could grow into "abx": not sent until it cannot
    assert shown == " abc abd" and deltas[-1].finish_reason is FinishReason.LENGTH


def test_min_tokens_keeps_early_stop_strings(tokenizer):
    ids, deltas = run(tokenizer, " one two one two", SamplingParams(stop=("one",), min_tokens=3, max_tokens=50))
    text = "".join(d.text for d in deltas)
    assert text.startswith(" one two") and deltas[-1].stop_sequence == "one"


def test_logprobs_go_with_their_text_and_stop_before_the_stop_string(tokenizer):
    ids, deltas = run(tokenizer, " red green blue yellow", SamplingParams(stop=("blue",), logprobs=True))
    sent = [lp for d in deltas for lp in (d.logprobs or [])]
    text = "".join(d.text for d in deltas)
    assert text == " red green "
    # one logprob per token whose text lies wholly before the stop string, in order; the token that
    # carries the stop string's start has none
    n = len(sent)
    assert [lp.token_id for lp in sent] == ids[:n]
    assert tokenizer.decode(ids[:n]).strip() == "red green"
    assert "b" in tokenizer.decode(ids[: n + 1])[len(tokenizer.decode(ids[:n])):]


def test_the_engines_final_delta_flushes_and_keeps_its_reason_and_error(tokenizer):
    prompt = tokenizer.encode("Hi", add_special_tokens=False)
    stream = TextStream(tokenizer, prompt, SamplingParams(), backend=streaming_backend(tokenizer))
    ids = tokenizer.encode(" done", add_special_tokens=False)
    out = GenerationOutput("r", token_ids=ids, completion_tokens=len(ids) + 1, finish_reason=FinishReason.ERROR,
                           error="boom", error_status=400)
    delta = stream.feed(out)
    assert delta.text == " done" and delta.finish_reason is FinishReason.ERROR
    assert delta.error == "boom" and delta.error_status == 400 and delta.completion_tokens == len(ids) + 1
    assert stream.done
