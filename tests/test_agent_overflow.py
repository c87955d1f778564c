"""A prompt over the context, said the way each API's clients act on it (they compact and retry):
Anthropic's ``prompt is too long: N tokens > M maximum``, the Responses wording with
``context_length_exceeded`` (Codex), and ``context_length_exceeded`` on chat; through the SDKs.
"""

from __future__ import annotations

import re

import anthropic
import openai
import pytest

CONTEXT = 256
LONG = "hello world " * 200  # ~400 tokens: over the context, under the size bound checked before tokenizing
HUGE = "hello world " * 4000  # refused by its size before tokenizing (a lower bound on its tokens)
ANTHROPIC_OVERFLOW = re.compile(r"^prompt is too long: (\d+) tokens > (\d+) maximum$")


@pytest.fixture(scope="module")
def server(start_server, tiny_qwen3):
    return start_server(tiny_qwen3, "--served-model-name", "m", "--max-model-len", CONTEXT)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize("text", [LONG, HUGE], ids=["counted", "refused-before-tokenizing"])
def test_messages_say_prompt_is_too_long(server, text):
    client = anthropic.Anthropic(base_url=server.base_url, api_key="k", max_retries=0)
    calls = [lambda: client.messages.create(model="m", max_tokens=8192, messages=user(text)),
             lambda: client.messages.stream(model="m", max_tokens=32000, messages=user(text)).__enter__()]
    if text is HUGE:  # count_tokens counts any prompt it can tokenize; a huge one is refused before
        calls.append(lambda: client.messages.count_tokens(model="m", messages=user(text)))
    for call in calls:
        with pytest.raises(anthropic.BadRequestError) as err:
            call()
        error = err.value.body["error"]
        assert error["type"] == "invalid_request_error"
        found = ANTHROPIC_OVERFLOW.match(error["message"])
        assert found, error["message"]
        tokens, maximum = map(int, found.groups())
        assert tokens > maximum >= CONTEXT - 1


def test_count_tokens_counts_a_long_prompt_it_can_tokenize(server):
    client = anthropic.Anthropic(base_url=server.base_url, api_key="k", max_retries=0)
    assert client.messages.count_tokens(model="m", messages=user(LONG)).input_tokens > CONTEXT


def test_messages_clamp_max_tokens_to_the_context_left(server):
    """Claude Code asks for max_tokens 32000 whatever the model: clamped, not refused."""
    client = anthropic.Anthropic(base_url=server.base_url, api_key="k", max_retries=0)
    msg = client.messages.create(model="m", max_tokens=8192, messages=user("hi"))
    assert msg.stop_reason in ("max_tokens", "end_turn")
    assert msg.usage.input_tokens + msg.usage.cache_read_input_tokens + msg.usage.output_tokens <= CONTEXT


@pytest.mark.parametrize("text", [LONG, HUGE], ids=["counted", "refused-before-tokenizing"])
def test_responses_say_context_length_exceeded(server, text):
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="k", max_retries=0)
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as err:
            client.responses.create(model="m", input=text, stream=stream)
        body = err.value.body
        assert body["code"] == "context_length_exceeded" and body["param"] == "input"
        assert body["message"].startswith("Your input exceeds the context window of this model.")


@pytest.mark.parametrize("text", [LONG, HUGE], ids=["counted", "refused-before-tokenizing"])
def test_chat_says_context_length_exceeded(server, text):
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="k", max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="m", messages=user(text))
    assert err.value.body["code"] == "context_length_exceeded" and err.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as room:  # prompt + max_tokens over the context
        client.chat.completions.create(model="m", messages=user("hi"), max_tokens=CONTEXT)
    assert room.value.body["code"] == "context_length_exceeded" and room.value.body["param"] == "max_tokens"
