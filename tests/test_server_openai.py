"""End to end: `vllm-mlx serve` as a real process, driven with the official openai SDK."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from conftest import SCRIPTED_DEFAULT

PROMPTS = [
    "Hello there, how are you?",
    "Tell me a story about a dog and a cat.",
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three colors.",
    "Why is the sky blue?",
    "Count from one to ten.",
    "Name a famous painter.",
]


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def async_client(server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def chat(server, content: str, **kw):
    return client(server).chat.completions.create(
        model="tiny-qwen3", messages=[{"role": "user", "content": content}], **kw
    )


def test_models_lists_served_names_and_context(qwen3_server):
    models = client(qwen3_server).models.list()
    ids = [m.id for m in models.data]
    assert ids == ["tiny-qwen3", "alias-q"]
    assert models.data[0].model_extra["max_model_len"] == 4096


def test_chat_non_stream(qwen3_server):
    resp = chat(qwen3_server, "Hello!", max_tokens=12, temperature=0)
    choice = resp.choices[0]
    assert resp.object == "chat.completion" and resp.model == "tiny-qwen3"
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert resp.usage.prompt_tokens > 5
    assert 1 <= resp.usage.completion_tokens <= 12
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_chat_stream_matches_non_stream(qwen3_server):
    kw = dict(max_tokens=24, temperature=0)
    full = chat(qwen3_server, "Tell me about dogs.", **kw)
    chunks = list(chat(qwen3_server, "Tell me about dogs.", stream=True,
                       stream_options={"include_usage": True}, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == full.choices[0].message.content
    assert finishes == [full.choices[0].finish_reason]
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0].choices == []
    assert usage_chunks[0].usage.completion_tokens == full.usage.completion_tokens


def test_eight_concurrent_streams_equal_solo_runs(qwen3_server):
    kw = dict(max_tokens=32, temperature=0)
    solo = [chat(qwen3_server, p, **kw).choices[0].message.content for p in PROMPTS]

    async def stream_one(c: openai.AsyncOpenAI, prompt: str) -> str:
        stream = await c.chat.completions.create(
            model="tiny-qwen3", messages=[{"role": "user", "content": prompt}], stream=True, **kw
        )
        return "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])

    async def run_all() -> list[str]:
        c = async_client(qwen3_server)
        return await asyncio.gather(*(stream_one(c, p) for p in PROMPTS))

    concurrent = asyncio.run(run_all())
    assert concurrent == solo
    assert len(set(solo)) > 1  # different prompts, different continuations


def test_disconnect_mid_stream_frees_the_slot(qwen3_server):
    before = qwen3_server.health()["engine"]["requests_aborted"]
    with httpx.stream(
        "POST",
        f"{qwen3_server.base_url}/v1/chat/completions",
        json={"model": "tiny-qwen3", "messages": [{"role": "user", "content": "Go on forever."}],
              "max_tokens": 3000, "temperature": 1.0, "ignore_eos": True, "stream": True},
        timeout=30,
    ) as resp:
        lines = resp.iter_lines()
        for _ in range(6):
            next(lines)
        assert qwen3_server.health()["engine"]["running"] >= 1
    # The connection is closed: the request must be aborted and its slot freed.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        engine = qwen3_server.health()["engine"]
        if engine["requests_aborted"] > before and engine["running"] == 0 and engine["batch_rows"] == 0:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"slot not freed after disconnect: {engine}")


def test_over_long_prompt_is_400_in_openai_shape(qwen3_server):
    long_text = "word " * 5000
    with pytest.raises(openai.BadRequestError) as err:
        chat(qwen3_server, long_text, max_tokens=10)
    body = err.value.response.json()
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    assert "4096" in body["error"]["message"]


def test_prompt_plus_max_tokens_over_budget_names_both_numbers(qwen3_server):
    with pytest.raises(openai.BadRequestError) as err:
        chat(qwen3_server, "Hi", max_tokens=4090)
    message = err.value.response.json()["error"]["message"]
    assert "4090" in message and "4096" in message


@pytest.mark.parametrize(
    "kw, param",
    [
        (dict(temperature=5.0), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(n=0), "n"),
        (dict(top_logprobs=3), "top_logprobs"),
        (dict(logprobs=True, top_logprobs=21), "top_logprobs"),
        (dict(presence_penalty=2.5), "presence_penalty"),
        (dict(logit_bias={"99999999": 5}), "logit_bias"),
        (dict(logit_bias={"hello": 5}), "logit_bias"),
        (dict(response_format={"type": "xml"}), "response_format"),
    ],
)
def test_bad_or_unsupported_parameter_is_400(qwen3_server, kw, param):
    with pytest.raises(openai.BadRequestError) as err:
        chat(qwen3_server, "Hi", **kw)
    error = err.value.response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_malformed_requests_are_400(qwen3_server):
    url = f"{qwen3_server.base_url}/v1/chat/completions"
    for body in ({"model": "m"}, {"model": "m", "messages": []},
                 {"model": "m", "messages": [{"role": "wizard", "content": "x"}]}):
        resp = httpx.post(url, json=body, timeout=10)
        assert resp.status_code == 400 and "error" in resp.json(), body
    resp = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"}, timeout=10)
    assert resp.status_code == 400 and resp.json()["error"]["type"] == "invalid_request_error"


def test_unknown_vendor_fields_are_ignored(qwen3_server):
    resp = client(qwen3_server).chat.completions.create(
        model="tiny-qwen3", messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
        extra_body={"some_vendor_flag": True, "cache_prompt": True},
    )
    assert resp.choices[0].message.content is not None


def test_completions_string_batch_and_token_prompts(qwen3_server):
    c = client(qwen3_server)
    one = c.completions.create(model="tiny-qwen3", prompt="Once upon a time", max_tokens=8, temperature=0)
    assert one.object == "text_completion" and len(one.choices) == 1
    assert one.usage.completion_tokens == 8 or one.choices[0].finish_reason == "stop"
    batch = c.completions.create(model="tiny-qwen3", prompt=["Once upon a time", "The sea"],
                                 max_tokens=8, temperature=0)
    assert [ch.index for ch in batch.choices] == [0, 1]
    assert batch.choices[0].text == one.choices[0].text
    tokens = c.completions.create(model="tiny-qwen3", prompt=[10, 20, 30, 40], max_tokens=4, temperature=0)
    assert tokens.usage.prompt_tokens == 4
    streamed = c.completions.create(model="tiny-qwen3", prompt="Once upon a time", max_tokens=8,
                                    temperature=0, stream=True)
    assert "".join(ch.choices[0].text for ch in streamed if ch.choices) == one.choices[0].text


def test_scripted_reply_exact_through_server(scripted_server):
    c = client(scripted_server)
    resp = c.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "Hi"}])
    assert resp.choices[0].message.content == SCRIPTED_DEFAULT
    assert resp.choices[0].finish_reason == "stop"
    weather = c.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "How is the weather?"}], temperature=1.0, stream=True
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in weather if ch.choices)
    assert text == "It is sunny in Paris, 22 °C. Have a nice day!"


@pytest.mark.parametrize(
    "stop, expected",
    [
        (["42"], "Hello from the scripted model. The answer is "),
        (["model. The"], "Hello from the scripted "),  # spans several tokens
        (["scripted", "Hello"], ""),
        (["zzz"], SCRIPTED_DEFAULT),
    ],
)
def test_stop_strings_across_tokens_never_emitted(scripted_server, stop, expected):
    c = client(scripted_server)
    msgs = [{"role": "user", "content": "Hi"}]
    resp = c.chat.completions.create(model="scripted", messages=msgs, stop=stop)
    assert resp.choices[0].message.content == expected
    assert resp.choices[0].finish_reason == "stop"
    streamed = c.chat.completions.create(model="scripted", messages=msgs, stop=stop, stream=True)
    assert "".join(ch.choices[0].delta.content or "" for ch in streamed if ch.choices) == expected


def test_a_stop_string_ends_the_engine_row_as_finished(scripted_server):
    """The text (and so the stop string) is made beside the API; the engine's row then ends as finished
    -- counted so, not as aborted -- and the answer's usage stops at the stop string."""
    c = client(scripted_server)
    msgs = [{"role": "user", "content": "Hi"}]
    engine = lambda: scripted_server.health()["engine"]  # noqa: E731
    before = engine()
    full = c.chat.completions.create(model="scripted", messages=msgs)
    stopped = c.chat.completions.create(model="scripted", messages=msgs, stop=["model. The"])
    assert stopped.choices[0].finish_reason == "stop"
    assert 0 < stopped.usage.completion_tokens < full.usage.completion_tokens
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        after = engine()
        if after["requests_finished"] >= before["requests_finished"] + 2 and after["running"] == 0:
            break
        time.sleep(0.05)
    assert after["requests_finished"] >= before["requests_finished"] + 2 and after["running"] == 0, after
    assert after["requests_aborted"] == before["requests_aborted"]


def test_max_tokens_gives_length(scripted_server):
    resp = client(scripted_server).chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "Hi"}], max_tokens=3
    )
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.completion_tokens == 3
    assert SCRIPTED_DEFAULT.startswith(resp.choices[0].message.content)


STOCK_TOOL = {
    "type": "function",
    "function": {
        "name": "lookup_stock_price",
        "description": "Current price of a stock",
        "parameters": {"type": "object", "properties": {"symbol": {"type": "string"}}, "required": ["symbol"]},
    },
}


def test_tools_reach_the_chat_template(scripted_server):
    c = client(scripted_server)
    msgs = [{"role": "user", "content": "Hi"}]
    with_tools = c.chat.completions.create(model="scripted", messages=msgs, tools=[STOCK_TOOL])
    assert with_tools.choices[0].message.content == "I can see the lookup_stock_price tool."
    without = c.chat.completions.create(model="scripted", messages=msgs)
    assert without.choices[0].message.content == SCRIPTED_DEFAULT
    assert with_tools.usage.prompt_tokens > without.usage.prompt_tokens + 20


def test_chat_template_kwargs_are_passed_through(scripted_server):
    c = client(scripted_server)
    msgs = [{"role": "user", "content": "Hi"}]
    on = c.chat.completions.create(model="scripted", messages=msgs,
                                   extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    off = c.chat.completions.create(model="scripted", messages=msgs,
                                    extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    # Qwen3's template closes an empty think block in the prompt when thinking is off.
    assert off.usage.prompt_tokens > on.usage.prompt_tokens
    assert off.choices[0].message.content == on.choices[0].message.content == SCRIPTED_DEFAULT
