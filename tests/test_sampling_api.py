"""Per-request decode controls through the real server, with the official openai SDK."""

from __future__ import annotations

import asyncio
import math

import openai
import pytest

from conftest import SCRIPTED_DEFAULT
from test_server_openai import async_client, chat, client

NOISE_PROMPTS = ["Tell me about ships.", "Count to five.", "Name three birds.", "Why?", "Go.", "Describe rain."]


def test_seeded_request_reproduces_while_batched_with_other_traffic(qwen3_server):
    kw = dict(max_tokens=24, temperature=1.0, top_p=0.9, seed=1234)
    alone = chat(qwen3_server, "Tell me a story.", **kw).choices[0].message.content

    async def with_noise() -> str:
        c = async_client(qwen3_server)
        noise = [c.chat.completions.create(model="m", messages=[{"role": "user", "content": p}],
                                           max_tokens=30, temperature=1.0) for p in NOISE_PROMPTS]
        target = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "Tell me a story."}], **kw)
        results = await asyncio.gather(target, *noise)
        return results[0].choices[0].message.content

    assert asyncio.run(with_noise()) == alone
    assert chat(qwen3_server, "Tell me a story.", **{**kw, "seed": 4321}).choices[0].message.content != alone


def test_n_gives_n_choices_from_one_prompt(qwen3_server):
    resp = chat(qwen3_server, "Hello", n=3, max_tokens=16, temperature=1.0, seed=7)
    assert [c.index for c in resp.choices] == [0, 1, 2]
    texts = [c.message.content for c in resp.choices]
    assert len(set(texts)) > 1
    assert resp.usage.completion_tokens == 3 * 16  # the tiny model never stops early within 16 tokens
    streamed = chat(qwen3_server, "Hello", n=3, max_tokens=16, temperature=1.0, seed=7, stream=True)
    parts = {0: "", 1: "", 2: ""}
    finishes = {}
    for ch in streamed:
        for choice in ch.choices:
            parts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert [parts[i] for i in range(3)] == texts
    assert set(finishes) == {0, 1, 2}


def test_chat_logprobs_consistent_with_tokens(qwen3_server):
    resp = chat(qwen3_server, "Hello", max_tokens=12, temperature=0, logprobs=True, top_logprobs=3)
    choice = resp.choices[0]
    content = choice.logprobs.content
    assert len(content) == resp.usage.completion_tokens
    # the tiny random model writes stray bytes: the bytes, joined, are the text (tokens show them escaped)
    assert bytes(b for entry in content for b in entry.bytes).decode("utf-8", "replace") == choice.message.content
    for entry in content:
        assert len(entry.top_logprobs) == 3
        tops = [t.logprob for t in entry.top_logprobs]
        assert tops == sorted(tops, reverse=True)
        # greedy: the sampled token is the most likely one
        assert entry.token == entry.top_logprobs[0].token
        assert entry.logprob == pytest.approx(tops[0], abs=1e-5)
        assert entry.logprob <= 0 and bytes(entry.bytes).decode("utf-8", "backslashreplace") == entry.token
    streamed = chat(qwen3_server, "Hello", max_tokens=12, temperature=0, logprobs=True, top_logprobs=3, stream=True)
    stream_entries = [e for ch in streamed if ch.choices and ch.choices[0].logprobs
                      for e in ch.choices[0].logprobs.content]
    assert [(e.token, round(e.logprob, 5)) for e in stream_entries] == [(e.token, round(e.logprob, 5)) for e in content]


def test_sampled_logprobs_are_probabilities_of_the_sampled_tokens(qwen3_server):
    resp = chat(qwen3_server, "Hi", max_tokens=10, temperature=1.0, seed=3, logprobs=True, top_logprobs=5)
    for entry in resp.choices[0].logprobs.content:
        assert entry.logprob <= entry.top_logprobs[0].logprob + 1e-6
        assert sum(math.exp(t.logprob) for t in entry.top_logprobs) <= 1.0 + 1e-4


def test_completions_legacy_logprobs(qwen3_server):
    resp = client(qwen3_server).completions.create(model="m", prompt="Once upon a time", max_tokens=6,
                                                   temperature=0, logprobs=2)
    lp = resp.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert "".join(lp.tokens) == resp.choices[0].text
    assert lp.text_offset[0] == 0 and all(len(t) == 2 for t in lp.top_logprobs)


def test_logit_bias_forces_a_token(qwen3_server):
    token = 300
    resp = client(qwen3_server).completions.create(model="m", prompt=[11, 12, 13], max_tokens=5, temperature=0,
                                                   logit_bias={str(token): 100}, logprobs=0)
    assert resp.choices[0].logprobs.token_logprobs == pytest.approx([0.0] * 5, abs=1e-3)
    assert len(set(resp.choices[0].logprobs.tokens)) == 1


def test_frequency_penalty_changes_greedy_output(qwen3_server):
    plain = chat(qwen3_server, "Hello", max_tokens=40, temperature=0, logprobs=True)
    penalised = chat(qwen3_server, "Hello", max_tokens=40, temperature=0, logprobs=True, frequency_penalty=2.0)
    distinct = lambda r: len({e.token for e in r.choices[0].logprobs.content})  # noqa: E731
    assert distinct(penalised) > distinct(plain)


def test_min_tokens_and_stop_token_ids(scripted_server, scripted_qwen3):
    c = client(scripted_server)
    msgs = [{"role": "user", "content": "Hi"}]
    base = c.chat.completions.create(model="scripted", messages=msgs)
    assert base.choices[0].message.content == SCRIPTED_DEFAULT
    longer = c.chat.completions.create(model="scripted", messages=msgs, max_tokens=60,
                                       extra_body={"min_tokens": base.usage.completion_tokens + 5})
    assert longer.usage.completion_tokens >= base.usage.completion_tokens + 5
    assert longer.choices[0].message.content.startswith(SCRIPTED_DEFAULT)
    # stop at the token that holds "answer"
    tokens = c.chat.completions.create(model="scripted", messages=msgs, logprobs=True).choices[0].logprobs.content
    cut = next(i for i, e in enumerate(tokens) if "answer" in e.token)
    token_id = _single_token_id(scripted_qwen3, tokens[cut].token)
    stopped = c.chat.completions.create(model="scripted", messages=msgs, extra_body={"stop_token_ids": [token_id]})
    assert stopped.choices[0].message.content == "".join(e.token for e in tokens[:cut])
    assert stopped.choices[0].finish_reason == "stop"


def _single_token_id(model_path, text: str) -> int:
    from mlx_lm.utils import load_tokenizer

    ids = load_tokenizer(model_path).encode(text, add_special_tokens=False)
    assert len(ids) == 1
    return ids[0]


@pytest.fixture(scope="module")
def strict_server(start_server, tiny_qwen3):
    return start_server(tiny_qwen3, "--served-model-name", "qwen-tiny", "qt", "--strict-model-id",
                        "--default-temperature", "0", "--max-model-len", "256")


def test_strict_model_id(strict_server):
    c = client(strict_server)
    for name in ("qwen-tiny", "qt"):
        assert c.chat.completions.create(model=name, messages=[{"role": "user", "content": "x"}], max_tokens=2)
    with pytest.raises(openai.NotFoundError) as err:
        c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}], max_tokens=2)
    error = err.value.response.json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        c.completions.create(model="default", prompt="x", max_tokens=2)


def test_server_defaults_and_max_model_len(strict_server):
    c = client(strict_server)
    msgs = [{"role": "user", "content": "Say something"}]
    a = c.chat.completions.create(model="qt", messages=msgs, max_tokens=20).choices[0].message.content
    b = c.chat.completions.create(model="qt", messages=msgs, max_tokens=20).choices[0].message.content
    assert a == b  # --default-temperature 0 applies when the request omits temperature
    outs = {c.chat.completions.create(model="qt", messages=msgs, max_tokens=20, temperature=1.0).choices[0]
            .message.content for _ in range(3)}
    assert len(outs) > 1  # the request's own temperature wins
    assert c.models.list().data[0].model_extra["max_model_len"] == 256
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model="qt", messages=msgs, max_tokens=250)
    assert "256" in err.value.response.json()["error"]["message"]


def test_deterministic_mode_is_load_independent(start_server, tiny_qwen3):
    server = start_server(tiny_qwen3, "--deterministic", "--max-num-batched-tokens", "64")
    kw = dict(max_tokens=24, temperature=0.8)
    prompt = "A fairly long prompt about the sea, ships, sailors, storms and harbours far away. " * 3
    alone = chat(server, prompt, **kw).choices[0].message.content

    async def loaded() -> list[str]:
        c = async_client(server)
        calls = [c.chat.completions.create(model="m", messages=[{"role": "user", "content": p}], max_tokens=30,
                                           temperature=1.0) for p in NOISE_PROMPTS]
        calls += [c.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}], **kw)
                  for _ in range(2)]
        results = await asyncio.gather(*calls)
        return [r.choices[0].message.content for r in results[-2:]]

    assert asyncio.run(loaded()) == [alone, alone]
