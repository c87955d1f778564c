"""The Anthropic Messages API (/v1/messages) through the official `anthropic` SDK, against a real server.

A scripted Qwen3 model (Hermes tool-call markup, <think> reasoning) answers through the same engine,
template, parsers and constraints as /v1/chat/completions.
"""

from __future__ import annotations

import json

import anthropic
import httpx
import pytest

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                     "required": ["city"]},
}
TIME_TOOL = {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}
ANSWER = "It is sunny in Paris."
TOOL_RESULT = json.dumps({"sky": "sunny", "checked_by": "weather-service"})
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": "2"}}\n</tool_call>'
RULES = [
    {"if_contains": "weather-service", "reply": ANSWER},  # a tool result is in the conversation
    {"if_contains": "get_weather", "reply": CALL},  # the tool is offered
    {"if_contains": "count to ten", "reply": "one two three STOP four five"},
    {"if_contains": "long story", "reply": "Once upon a time there was a very long story that went on and on."},
    {"if_contains": "think", "reply": "<think>\nThe user wants a plan.\n</think>\n\nStep one: relax."},
]
DEFAULT = "Hello from the scripted model. The answer is 42."
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def model_path(models_dir):
    from vllm_mlx_testing import build_scripted_model

    return build_scripted_model(models_dir / "anthropic-scripted", RULES, DEFAULT, "qwen3")


@pytest.fixture(scope="module")
def server(start_server, model_path):
    return start_server(model_path, "--trust-remote-code", "--served-model-name", "scripted")


@pytest.fixture(scope="module")
def client(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key="k", max_retries=0)


def test_create_non_streaming(client):
    msg = client.messages.create(model="scripted", max_tokens=64, messages=HI)
    assert msg.type == "message" and msg.role == "assistant" and msg.id.startswith("msg_")
    assert [b.type for b in msg.content] == ["text"] and msg.content[0].text == DEFAULT
    assert msg.stop_reason == "end_turn" and msg.stop_sequence is None
    assert msg.usage.output_tokens > 0 and msg.usage.input_tokens + msg.usage.cache_read_input_tokens > 5
    assert msg.usage.cache_creation_input_tokens == 0


def test_stream_helper_text_and_final_message(client, server):
    with client.messages.stream(model="scripted", max_tokens=64, messages=HI) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == DEFAULT and final.content[0].text == DEFAULT and final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0
    # the exact wire sequence of events
    with httpx.stream("POST", f"{server.base_url}/v1/messages?beta=true", headers={"x-api-key": "k",
                      "anthropic-beta": "fine-grained-tool-streaming-2025-05-14"},
                      json={"model": "scripted", "max_tokens": 64, "messages": HI, "stream": True}) as r:
        lines = [line for line in r.iter_lines() if line]
    names = [line[len("event: "):] for line in lines if line.startswith("event: ")]
    assert names[:4] == ["message_start", "ping", "content_block_start", "content_block_delta"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert len([line for line in lines if line.startswith("data: ")]) == len(names)


def _wire_events(server, body: dict) -> list[tuple[str, dict]]:
    with httpx.stream("POST", f"{server.base_url}/v1/messages", headers={"x-api-key": "k"},
                      json={"model": "scripted", "max_tokens": 100, "stream": True, **body}) as r:
        lines = [line for line in r.iter_lines() if line]
    names = [line[len("event: "):] for line in lines if line.startswith("event: ")]
    data = [json.loads(line[len("data: "):]) for line in lines if line.startswith("data: ")]
    assert [d["type"] for d in data] == names  # every event line names its data
    return list(zip(names, data))


def _shape(events: list[tuple[str, dict]]) -> list[str]:
    """Event names with delta types, repeated deltas folded into one."""
    out: list[str] = []
    for name, data in events:
        label = f"{name}:{data['delta']['type']}" if name == "content_block_delta" else name
        if not out or out[-1] != label or name != "content_block_delta":
            out.append(label)
    return out


def test_wire_event_sequences(server):
    thinking = _wire_events(server, {"messages": [{"role": "user", "content": "Please think about it"}]})
    assert _shape(thinking) == [
        "message_start", "ping",
        "content_block_start", "content_block_delta:thinking_delta", "content_block_delta:signature_delta",
        "content_block_stop",
        "content_block_start", "content_block_delta:text_delta", "content_block_stop",
        "message_delta", "message_stop"]
    start = thinking[0][1]["message"]
    assert start["usage"]["input_tokens"] + start["usage"]["cache_read_input_tokens"] > 5
    assert start["content"] == [] and start["stop_reason"] is None
    assert [d["index"] for n, d in thinking if n == "content_block_start"] == [0, 1]
    assert thinking[-2][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert thinking[-2][1]["usage"]["output_tokens"] > 0
    tool = _wire_events(server, {"messages": [{"role": "user", "content": "Weather in Paris?"}],
                                 "tools": [WEATHER_TOOL]})
    assert _shape(tool) == ["message_start", "ping", "content_block_start", "content_block_delta:input_json_delta",
                            "content_block_stop", "message_delta", "message_stop"]
    block = tool[2][1]["content_block"]
    assert block["type"] == "tool_use" and block["name"] == "get_weather" and block["input"] == {}
    assert tool[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_thinking_blocks(client):
    messages = [{"role": "user", "content": "Please think about it"}]
    msg = client.messages.create(model="scripted", max_tokens=64, messages=messages,
                                 thinking={"type": "enabled", "budget_tokens": 50})
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert msg.content[0].thinking == "The user wants a plan." and msg.content[0].signature
    assert msg.content[1].text == "Step one: relax."
    with client.messages.stream(model="scripted", max_tokens=64, messages=messages,
                                thinking={"type": "adaptive"}) as stream:
        kinds = [ev.delta.type for ev in stream if ev.type == "content_block_delta"]
        final = stream.get_final_message()
    assert "thinking_delta" in kinds and "signature_delta" in kinds and "text_delta" in kinds
    assert final.content[0].thinking == "The user wants a plan." and final.content[1].text == "Step one: relax."
    # thinking blocks in the assistant history are accepted
    follow = messages + [{"role": "assistant", "content": [
        {"type": "thinking", "thinking": "earlier", "signature": "s"},
        {"type": "redacted_thinking", "data": "xyz"}, {"type": "text", "text": "Step one: relax."}]},
        {"role": "user", "content": "Hi again"}]
    assert client.messages.create(model="scripted", max_tokens=64, messages=follow,
                                  thinking={"type": "disabled"}).stop_reason == "end_turn"


def test_tool_use_and_result_round_trip(client):
    messages = [{"role": "user", "content": "What's the weather in Paris?"}]
    msg = client.messages.create(model="scripted", max_tokens=100, messages=messages, tools=[WEATHER_TOOL, TIME_TOOL])
    assert msg.stop_reason == "tool_use"
    (use,) = [b for b in msg.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.input == {"city": "Paris", "days": 2} and use.id
    with client.messages.stream(model="scripted", max_tokens=100, messages=messages,
                                tools=[WEATHER_TOOL, TIME_TOOL]) as stream:
        partial = "".join(ev.delta.partial_json for ev in stream
                          if ev.type == "content_block_delta" and ev.delta.type == "input_json_delta")
        final = stream.get_final_message()
    assert json.loads(partial) == {"city": "Paris", "days": 2}
    assert final.stop_reason == "tool_use" and final.content[-1].input == {"city": "Paris", "days": 2}
    for content in (TOOL_RESULT, [{"type": "text", "text": TOOL_RESULT, "cache_control": {"type": "ephemeral"}}]):
        history = messages + [
            {"role": "assistant", "content": [b.model_dump() for b in msg.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": content}]},
        ]
        answer = client.messages.create(model="scripted", max_tokens=100, messages=history, tools=[WEATHER_TOOL])
        assert answer.stop_reason == "end_turn" and answer.content[0].text == ANSWER
    errored = messages + [
        {"role": "assistant", "content": [b.model_dump() for b in msg.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "is_error": True,
                                      "content": "weather-service is down"}]}]
    assert client.messages.create(model="scripted", max_tokens=100, messages=errored,
                                  tools=[WEATHER_TOOL]).content[0].text == ANSWER


def test_tool_choice_none_and_empty_tools(client):
    messages = [{"role": "user", "content": "What's the weather in Paris?"}]
    none = client.messages.create(model="scripted", max_tokens=100, messages=messages, tools=[WEATHER_TOOL],
                                  tool_choice={"type": "none"})
    assert none.stop_reason == "end_turn" and not [b for b in none.content if b.type == "tool_use"]
    empty = client.messages.create(model="scripted", max_tokens=100, messages=HI, tools=[])
    assert empty.content[0].text == DEFAULT


def test_tool_runner(client):
    calls = []

    @anthropic.beta_tool
    def get_weather(city: str, days: int = 1) -> str:
        """Weather for a city.

        Args:
            city: the city
            days: how many days
        """
        calls.append((city, days))
        return TOOL_RESULT

    runner = client.beta.messages.tool_runner(model="scripted", max_tokens=100, tools=[get_weather],
                                              messages=[{"role": "user", "content": "Weather in Paris?"}])
    final = runner.until_done()
    assert calls == [("Paris", 2)]
    assert final.stop_reason == "end_turn" and final.content[0].text == ANSWER


def test_stop_sequences_and_max_tokens(client):
    messages = [{"role": "user", "content": "Please count to ten"}]
    msg = client.messages.create(model="scripted", max_tokens=64, messages=messages, stop_sequences=["STOP", "XYZ"])
    assert msg.stop_reason == "stop_sequence" and msg.stop_sequence == "STOP"
    assert msg.content[0].text == "one two three "
    with client.messages.stream(model="scripted", max_tokens=64, messages=messages, stop_sequences=["STOP"]) as s:
        final = s.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == "STOP"
    short = client.messages.create(model="scripted", max_tokens=3, messages=[{"role": "user", "content": "long story"}])
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 3


def test_count_tokens_matches_usage(client):
    kwargs = dict(model="scripted", messages=[{"role": "user", "content": "What's the weather in Paris?"}])
    counted = client.messages.count_tokens(**kwargs).input_tokens
    usage = client.messages.create(max_tokens=100, tool_choice={"type": "none"}, tools=[WEATHER_TOOL], **kwargs).usage
    plain = client.messages.create(max_tokens=100, **kwargs).usage
    assert counted == plain.input_tokens + plain.cache_read_input_tokens
    with_tools = client.messages.count_tokens(tools=[WEATHER_TOOL, TIME_TOOL], **kwargs).input_tokens
    assert with_tools > counted
    assert usage.input_tokens + usage.cache_read_input_tokens == counted  # tool_choice none leaves tools out
    beta = client.beta.messages.count_tokens(tools=[WEATHER_TOOL, TIME_TOOL], **kwargs).input_tokens
    assert beta == with_tools


def test_system_blocks_role_system_and_cache_control(client):
    msg = client.messages.create(
        model="scripted", max_tokens=64,
        system=[{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "system", "content": "Also be kind."},
                  {"role": "user", "content": [{"type": "text", "text": "Hi",
                                                "cache_control": {"type": "ephemeral"}}]}],
        metadata={"user_id": "u1"}, cache_control={"type": "ephemeral"},
        extra_body={"context_management": {"edits": []}, "output_config": {}},
    )
    assert msg.content[0].text == DEFAULT
    assert client.messages.create(model="scripted", max_tokens=64, system="Be terse.", messages=HI).content


def _error(server, body: dict, headers: dict | None = None, path: str = "/v1/messages") -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", json=body, headers={"x-api-key": "k", **(headers or {})})


def test_errors_in_anthropic_shape(client, server):
    for body in ({"model": "scripted", "max_tokens": 5},  # no messages
                 {"model": "scripted", "max_tokens": 5, "messages": [{"role": "user", "content": [
                     {"type": "hologram", "text": "x"}]}]},
                 {"model": "scripted", "max_tokens": 5, "messages": [{"role": "user", "content": [
                     {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}]},
                 {"model": "scripted", "max_tokens": 5, "messages": HI, "tool_choice": {"type": "any"}}):
        r = _error(server, body)
        assert r.status_code == 400, body
        assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"
    assert "images" in _error(server, {"model": "scripted", "messages": [{"role": "user", "content": [
        {"type": "image", "source": {}}]}]}).json()["error"]["message"]
    assert _error(server, {"messages": 3}, path="/v1/messages/count_tokens").json()["type"] == "error"
    missing = httpx.post(f"{server.base_url}/v1/messages/batches", json={}, headers={"x-api-key": "k"})
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    # other routes keep OpenAI's shape
    assert "type" not in httpx.post(f"{server.base_url}/v1/chat/completions", json={}).json()
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model="scripted", max_tokens=5, messages=[])


def test_root_probe_and_models_list(client, server):
    assert httpx.head(f"{server.base_url}/").status_code == 200
    assert httpx.get(f"{server.base_url}/").status_code == 200
    models = list(client.models.list())
    assert [m.id for m in models] == ["scripted"]
    assert models[0].type == "model" and models[0].display_name == "scripted" and models[0].created_at.year > 2000


def test_auth_401_in_anthropic_shape(start_server, model_path):
    server = start_server(model_path, "--trust-remote-code", "--api-key", "sekret")
    bad = anthropic.Anthropic(base_url=server.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        bad.messages.create(model="m", max_tokens=5, messages=HI)
    assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == "authentication_error"
    good = anthropic.Anthropic(base_url=server.base_url, api_key="sekret", max_retries=0)
    assert good.messages.create(model="m", max_tokens=64, messages=HI).content[0].text == DEFAULT
    bearer = anthropic.Anthropic(base_url=server.base_url, auth_token="sekret", max_retries=0)
    assert bearer.messages.count_tokens(model="m", messages=HI).input_tokens > 0
    assert httpx.head(f"{server.base_url}/").status_code == 200
    openai_shaped = httpx.get(f"{server.base_url}/v1/models")
    assert openai_shaped.status_code == 401 and "type" not in openai_shaped.json()


BOUNDED_WEATHER = {"name": "get_weather", "input_schema": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"],
    "additionalProperties": False}}
BOUNDED_TIME = {"name": "get_time", "input_schema": {"type": "object", "properties": {}, "additionalProperties": False}}


@pytest.fixture
def random_server(qwen3_server):
    """The shared tiny-Qwen3 server, its prefix cache emptied afterwards (other tests expect a cold cache)."""
    yield qwen3_server
    httpx.post(f"{qwen3_server.base_url}/v1/cache/clear")


def test_forced_tool_and_output_format_on_a_random_model(random_server):
    """tool_choice any/tool and output_format go through the chat pipeline's grammar constraints."""
    c = anthropic.Anthropic(base_url=random_server.base_url, api_key="k", max_retries=0)
    messages = [{"role": "user", "content": "hello"}]
    named = c.messages.create(model="m", max_tokens=120, messages=messages, extra_body={"temperature": 0.8},
                              tools=[BOUNDED_WEATHER, TIME_TOOL], tool_choice={"type": "tool", "name": "get_weather"})
    assert named.stop_reason == "tool_use" and named.content[-1].name == "get_weather"
    assert isinstance(named.content[-1].input["city"], str)
    anyone = c.messages.create(model="m", max_tokens=120, messages=messages, extra_body={"temperature": 0.8},
                               tools=[BOUNDED_WEATHER, BOUNDED_TIME],
                               tool_choice={"type": "any", "disable_parallel_tool_use": True})
    assert anyone.stop_reason == "tool_use" and anyone.content[-1].name in ("get_weather", "get_time")
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    fmt = c.messages.create(model="m", max_tokens=60, messages=messages,
                            extra_body={"output_format": {"type": "json_schema", "schema": schema}})
    assert isinstance(json.loads(fmt.content[0].text)["ok"], bool)
    with pytest.raises(anthropic.BadRequestError):
        c.messages.create(model="m", max_tokens=5, messages=messages, tools=[TIME_TOOL],
                          tool_choice={"type": "tool", "name": "nope"})
