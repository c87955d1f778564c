"""Tool calling and reasoning through the server, with the official SDK's streaming helpers.

Scripted models emit each family's native markup; the real engine, detokenizer, parsers and API
run. Families: Hermes/Qwen (native tokenizer), Llama 3 JSON (native tokenizer), and Mistral and
Harmony markup (parser chosen with --tool-call-parser, text on the Qwen tokenizer).
"""

from __future__ import annotations

import json

import openai
import pytest

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                       "required": ["city"]},
    },
}
TIME_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object",
                                                                                  "properties": {}}}}
ANSWER = "It is sunny in Paris."

FAMILIES = {
    # name: (family of the scripted model, extra serve flags, the model's tool-call reply)
    "hermes": ("qwen3", [], '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n'
                            '</tool_call>'),
    "llama3_json": ("llama", [], '{"name": "get_weather", "parameters": {"city": "Paris", "days": 2}}'),
    "mistral": ("qwen3", ["--tool-call-parser", "mistral"],
                '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}]'),
    "harmony": ("qwen3", ["--tool-call-parser", "openai", "--reasoning-parser", "openai_gptoss"],
                "<|channel|>analysis<|message|>The user wants the weather.<|end|><|start|>assistant"
                '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris", '
                '"days": 2}<|call|>'),
}
TOOL_RESULT = json.dumps({"sky": "sunny", "checked_by": "weather-service"})


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_server(request, start_server, models_dir):
    from vllm_mlx_testing import build_scripted_model

    name = request.param
    family, flags, call = FAMILIES[name]
    rules = [
        {"if_contains": "weather-service", "reply": ANSWER},  # the tool result is in the conversation
        {"if_contains": "get_weather", "reply": call},
    ]
    path = build_scripted_model(models_dir / f"tools-{name}", rules, "No tools here.", family)
    return name, start_server(path, "--trust-remote-code", *flags)


def _client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)


def test_tool_round_trip_with_stream_helper(family_server):
    name, server = family_server
    c = _client(server)
    messages = [{"role": "user", "content": "What's the weather in Paris?"}]
    with c.chat.completions.stream(model="m", messages=messages, tools=[WEATHER_TOOL, TIME_TOOL]) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls", name
    assert not choice.message.content
    calls = choice.message.tool_calls
    assert len(calls) == 1 and calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Paris", "days": 2}
    assert calls[0].id
    # non-streaming gives the same call
    plain = c.chat.completions.create(model="m", messages=messages, tools=[WEATHER_TOOL, TIME_TOOL])
    assert plain.choices[0].finish_reason == "tool_calls"
    assert json.loads(plain.choices[0].message.tool_calls[0].function.arguments) == {"city": "Paris", "days": 2}
    if name == "harmony":
        assert plain.choices[0].message.model_extra["reasoning_content"] == "The user wants the weather."
    # round trip: send the call and its result back; the model answers in text
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [calls[0].model_dump()]},
        {"role": "tool", "tool_call_id": calls[0].id, "content": TOOL_RESULT},
    ]
    answer = c.chat.completions.create(model="m", messages=messages, tools=[WEATHER_TOOL, TIME_TOOL])
    assert answer.choices[0].message.content == ANSWER
    assert answer.choices[0].finish_reason == "stop" and not answer.choices[0].message.tool_calls


def test_without_tools_markup_stays_content(scripted_server):
    # the scripted model emits tool-call markup for "two cities", but the request offers no tools
    c = _client(scripted_server)
    resp = c.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "two cities"}])
    assert resp.choices[0].finish_reason == "stop"
    assert "<tool_call>" in resp.choices[0].message.content and not resp.choices[0].message.tool_calls


# -- on the shared scripted Qwen3 server and the random tiny Qwen3 ----------------------------


def test_parallel_calls_unicode_and_coerced_arguments(scripted_server):
    c = _client(scripted_server)
    messages = [{"role": "user", "content": "Weather in two cities please"}]
    resp = c.chat.completions.create(model="scripted", messages=messages, tools=[WEATHER_TOOL])
    calls = resp.choices[0].message.tool_calls
    assert [json.loads(call.function.arguments) for call in calls] == [
        {"city": "東京"}, {"city": "Zürich 🌦", "days": 3}]  # "3" coerced to the schema's integer
    assert len({call.id for call in calls}) == 2
    chunks = list(c.chat.completions.create(model="scripted", messages=messages, tools=[WEATHER_TOOL], stream=True))
    starts = [tc for ch in chunks if ch.choices and ch.choices[0].delta.tool_calls
              for tc in ch.choices[0].delta.tool_calls if tc.function and tc.function.name]
    assert [tc.index for tc in starts] == [0, 1]
    args = {0: "", 1: ""}
    for ch in chunks:
        for tc in (ch.choices[0].delta.tool_calls or []) if ch.choices else []:
            args[tc.index] += tc.function.arguments or ""
    assert [json.loads(args[i]) for i in (0, 1)] == [json.loads(call.function.arguments) for call in calls]
    assert all(not (ch.choices[0].delta.content or "").strip() for ch in chunks if ch.choices)


def test_reasoning_content_streamed_and_not(scripted_server):
    c = _client(scripted_server)
    messages = [{"role": "user", "content": "Please think about it"}]
    resp = c.chat.completions.create(model="scripted", messages=messages)
    message = resp.choices[0].message
    assert message.model_extra["reasoning_content"] == "The user wants a plan."
    assert message.model_extra["reasoning"] == "The user wants a plan."
    assert message.content == "Step one: relax."
    chunks = list(c.chat.completions.create(model="scripted", messages=messages, stream=True))
    reasoning = "".join(ch.choices[0].delta.model_extra.get("reasoning_content") or "" for ch in chunks if ch.choices)
    content = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert (reasoning, content) == ("The user wants a plan.", "Step one: relax.")
    # a plain answer is content, not reasoning
    plain = c.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "Hi"}])
    assert "reasoning_content" not in plain.choices[0].message.model_extra
    # thinking switched off: no reasoning parser, the text is the answer
    off = c.chat.completions.create(model="scripted", messages=messages, extra_body={"enable_thinking": False})
    assert "<think>" in off.choices[0].message.content


BOUNDED_WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"],
    "additionalProperties": False}}}


def test_tool_choice_named_and_required_force_a_call_from_a_random_model(qwen3_server):
    """A random-weight model cannot help calling the tool when the grammar requires it (the schema bounds
    the string, so the call always completes within max_tokens)."""
    c = openai.OpenAI(base_url=f"{qwen3_server.base_url}/v1", api_key="x", max_retries=0)
    messages = [{"role": "user", "content": "hello"}]
    named = c.chat.completions.create(model="m", messages=messages, tools=[BOUNDED_WEATHER, TIME_TOOL], max_tokens=120,
                                      tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                      temperature=0.8, seed=3)
    call = named.choices[0].message.tool_calls[0]
    assert named.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    for seed in range(4):
        required = c.chat.completions.create(model="m", messages=messages, tools=[BOUNDED_WEATHER, TIME_TOOL],
                                             max_tokens=120, tool_choice="required", temperature=0.8, seed=seed,
                                             parallel_tool_calls=False)
        assert required.choices[0].finish_reason == "tool_calls"
        assert required.choices[0].message.tool_calls[0].function.name in ("get_weather", "get_time")
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="m", messages=messages, tools=[WEATHER_TOOL], max_tokens=5,
                                  tool_choice={"type": "function", "function": {"name": "nope"}})
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="m", messages=messages, max_tokens=5, tool_choice="required")


def test_tool_choice_none_keeps_tools_out(scripted_server):
    c = _client(scripted_server)
    messages = [{"role": "user", "content": "Hi"}]
    with_tools = c.chat.completions.create(model="scripted", messages=messages, tools=[WEATHER_TOOL])
    none = c.chat.completions.create(model="scripted", messages=messages, tools=[WEATHER_TOOL], tool_choice="none")
    assert none.usage.prompt_tokens < with_tools.usage.prompt_tokens
    assert not none.choices[0].message.tool_calls
