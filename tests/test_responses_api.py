"""The OpenAI Responses API (/v1/responses) through the official SDK against a real server process.

A scripted Qwen3 model gives exact replies (text, Hermes tool calls, <think> reasoning); the random
tiny Qwen3 shows the output constraints (text.format json_schema, tool_choice required) hold.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

TOOL_RESULT = json.dumps({"sky": "sunny", "checked_by": "weather-service"})
ANSWER = "It is sunny in Paris."
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>'
RULES = [
    {"if_contains": "two cities", "reply": CALL + "\n" + CALL.replace("Paris", "東京")},
    {"if_contains": "weather-service", "reply": ANSWER},
    {"if_contains": "get_weather", "reply": CALL},
    {"if_contains": "Noted, Ada.", "reply": "Your name is Ada."},
    {"if_contains": "my name is Ada", "reply": "Noted, Ada."},
    {"if_contains": "Rule A.\n\nRule B.\n\nRule C.", "reply": "All three rules are in place."},
    {"if_contains": "think", "reply": "<think>\nThe user wants a plan.\n</think>\n\nStep one: relax."},
]
DEFAULT = "Hello from the responses model."
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city", "strict": False,
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                          "required": ["city"]}}


@pytest.fixture(scope="module")
def server(start_server, models_dir):
    from vllm_mlx_testing import build_scripted_model

    path = build_scripted_model(models_dir / "responses-scripted", RULES, DEFAULT, "qwen3")
    return start_server(path, "--trust-remote-code", "--served-model-name", "scripted")


def _client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)


def test_string_input(server):
    resp = _client(server).responses.create(model="scripted", input="Hello there")
    assert resp.object == "response" and resp.id.startswith("resp_") and resp.status == "completed"
    assert resp.output_text == DEFAULT
    assert [item.type for item in resp.output] == ["message"]
    assert resp.output[0].content[0].type == "output_text"
    assert resp.usage.input_tokens > 0 and resp.usage.output_tokens > 0
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens


def test_item_input_with_roles_and_instructions(server):
    c = _client(server)
    items = [
        {"type": "message", "role": "developer", "content": "Rule B."},
        {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "Rule C."}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Go"}]},
    ]
    resp = c.responses.create(model="scripted", input=items, instructions="Rule A.")
    assert resp.output_text == "All three rules are in place."
    assert resp.instructions == "Rule A."
    with pytest.raises(openai.BadRequestError, match="does not accept images"):
        c.responses.create(model="scripted", input=[{"role": "user", "content": [
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}])


def test_stream_helper_text(server):
    c = _client(server)
    with c.responses.stream(model="scripted", input="Hello there") as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == DEFAULT
    assert final.output_text == DEFAULT and final.usage.output_tokens > 0
    for kind in ("response.output_item.added", "response.content_part.added", "response.output_text.done",
                 "response.content_part.done", "response.output_item.done"):
        assert kind in types


@pytest.mark.parametrize("streamed", [False, True])
def test_function_tool_round_trip(server, streamed):
    c = _client(server)
    ask = [{"role": "user", "content": "What's the weather in Paris?"}]
    if streamed:
        with c.responses.stream(model="scripted", input=ask, tools=[WEATHER]) as stream:
            events = list(stream)
            first = stream.get_final_response()
        deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
        assert json.loads(deltas) == {"city": "Paris", "days": 2}
        assert "response.function_call_arguments.done" in [e.type for e in events]
    else:
        first = c.responses.create(model="scripted", input=ask, tools=[WEATHER])
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].call_id
    assert json.loads(calls[0].arguments) == {"city": "Paris", "days": 2}
    assert first.output_text == ""
    follow = ask + [
        {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather", "arguments": calls[0].arguments},
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": TOOL_RESULT},
    ]
    answer = c.responses.create(model="scripted", input=follow, tools=[WEATHER], store=False)
    assert answer.output_text == ANSWER
    assert not [item for item in answer.output if item.type == "function_call"]


def test_parallel_calls_streamed_and_not(server):
    c = _client(server)
    ask = "Weather in two cities please"
    plain = c.responses.create(model="scripted", input=ask, tools=[WEATHER])
    with c.responses.stream(model="scripted", input=ask, tools=[WEATHER]) as stream:
        streamed = stream.get_final_response()
    for resp in (plain, streamed):
        calls = [item for item in resp.output if item.type == "function_call"]
        assert [json.loads(call.arguments)["city"] for call in calls] == ["Paris", "東京"]
        assert len({call.call_id for call in calls}) == 2 and len({call.id for call in calls}) == 2
        assert [item.type for item in resp.output] == ["function_call", "function_call"]


def test_tool_output_continues_a_stored_response(server):
    """Only the function_call_output is sent; the call itself comes from the stored response."""
    c = _client(server)
    first = c.responses.create(model="scripted", input="What's the weather in Paris?", tools=[WEATHER])
    call = first.output[0]
    assert call.type == "function_call"
    answer = c.responses.create(model="scripted", previous_response_id=first.id, tools=[WEATHER], input=[
        {"type": "function_call_output", "call_id": call.call_id, "output": TOOL_RESULT}])
    assert answer.output_text == ANSWER


def test_response_store_is_bounded_lru():
    from vllm_mlx.api.responses_convert import ResponseStore

    store = ResponseStore(capacity=2)
    store.put("a", [{"role": "user", "content": "1"}])
    store.put("b", [])
    assert store.get("a") is not None  # "a" is now the most recently used
    store.put("c", [])
    assert store.get("b") is None and store.get("a") is not None and len(store) == 2


def test_previous_response_id_continues_the_conversation(server):
    c = _client(server)
    first = c.responses.create(model="scripted", input="Hi, my name is Ada")
    assert first.output_text == "Noted, Ada."
    second = c.responses.create(model="scripted", input="What is my name?", previous_response_id=first.id)
    assert second.output_text == "Your name is Ada."
    assert second.previous_response_id == first.id
    alone = c.responses.create(model="scripted", input="What is my name?")
    assert second.usage.input_tokens > alone.usage.input_tokens + first.usage.input_tokens // 2
    with pytest.raises(openai.NotFoundError) as err:
        c.responses.create(model="scripted", input="x", previous_response_id="resp_unknown")
    assert err.value.body["param"] == "previous_response_id"
    # store=false responses cannot be continued
    unstored = c.responses.create(model="scripted", input="Hello", store=False)
    with pytest.raises(openai.NotFoundError):
        c.responses.create(model="scripted", input="x", previous_response_id=unstored.id)


def test_reasoning_item_streamed_and_not(server):
    c = _client(server)
    resp = c.responses.create(model="scripted", input="Please think about it", reasoning={"effort": "medium"})
    assert [item.type for item in resp.output] == ["reasoning", "message"]
    assert resp.output[0].content[0].text == "The user wants a plan."
    assert resp.output_text == "Step one: relax."
    assert resp.usage.output_tokens_details.reasoning_tokens > 0
    with c.responses.stream(model="scripted", input="Please think about it") as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert "".join(e.delta for e in events if e.type == "response.reasoning_text.delta") == "The user wants a plan."
    assert final.output_text == "Step one: relax."
    # a reasoning item sent back as input is accepted
    again = c.responses.create(model="scripted", input=[
        {"type": "reasoning", "id": resp.output[0].id, "summary": [{"type": "summary_text", "text": "plan"}]},
        {"role": "user", "content": "Hello"}])
    assert again.status == "completed"


def test_namespace_and_builtin_tools_accepted(server):
    tools = [{"type": "web_search"}, {"type": "file_search", "vector_store_ids": ["vs_1"]},
             {"type": "namespace", "name": "weather", "description": "Weather tools",
              "tools": [{k: v for k, v in WEATHER.items() if k != "strict"}]}]
    raw = httpx.post(f"{server.base_url}/v1/responses", timeout=30, json={
        "model": "scripted", "input": "What's the weather in Paris?", "tools": tools,
        "store": False, "include": ["reasoning.encrypted_content"], "prompt_cache_key": "k",
        "parallel_tool_calls": True})
    assert raw.status_code == 200, raw.text
    call = raw.json()["output"][0]
    assert call["type"] == "function_call" and call["name"] == "get_weather" and call["namespace"] == "weather"


@pytest.mark.parametrize("ask", ["Hello", "Please think about it", "What's the weather in Paris?"])
def test_raw_events_and_bodies_validate_against_the_sdk_types(server, ask):
    """Strict pydantic validation (not the SDK's lenient construction) of every event and body."""
    import typing

    from openai.types.responses import Response, ResponseStreamEvent

    union = typing.get_args(ResponseStreamEvent)[0]  # Annotated[Union[...], discriminator]
    by_type = {typing.get_args(cls.model_fields["type"].annotation)[0]: cls for cls in typing.get_args(union)}
    body = {"model": "scripted", "input": ask, "tools": [WEATHER]}
    with httpx.stream("POST", f"{server.base_url}/v1/responses", timeout=30, json={**body, "stream": True}) as r:
        text = "".join(r.iter_text())
    blocks = [b for b in text.split("\n\n") if b.strip()]
    for block in blocks:
        event_line, data_line = block.split("\n")
        data = json.loads(data_line.removeprefix("data: "))
        assert data["type"] == event_line.removeprefix("event: ")
        by_type[data["type"]].model_validate(data)
    plain = httpx.post(f"{server.base_url}/v1/responses", timeout=30, json=body).json()
    Response.model_validate(plain)
    assert data["type"] == "response.completed"
    assert [i["type"] for i in data["response"]["output"]] == [i["type"] for i in plain["output"]]


# -- the random tiny Qwen3: constraints hold whatever the weights ------------------------------


def test_json_schema_format_and_max_output_tokens(qwen3_server):
    c = _client(qwen3_server)
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10},
                                               "ok": {"type": "boolean"}},
              "required": ["name", "ok"], "additionalProperties": False}
    resp = c.responses.create(model="m", input="Give JSON", max_output_tokens=80, temperature=0.8,
                              text={"format": {"type": "json_schema", "name": "thing", "schema": schema,
                                               "strict": True}})
    data = json.loads(resp.output_text)
    assert set(data) == {"name", "ok"} and isinstance(data["ok"], bool)
    short = c.responses.create(model="m", input="Tell me a long story", max_output_tokens=3,
                               reasoning={"effort": "none"})
    assert short.status == "incomplete" and short.incomplete_details.reason == "max_output_tokens"
    assert short.usage.output_tokens == 3
    with pytest.raises(openai.BadRequestError) as err:
        c.responses.create(model="m", input="hi", max_output_tokens=10**7)
    assert err.value.body["param"] == "max_output_tokens"


def test_tool_choice_required_gives_a_call(qwen3_server):
    c = _client(qwen3_server)
    tool = {"type": "function", "name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"],
        "additionalProperties": False}}
    resp = c.responses.create(model="m", input="hello", tools=[tool], tool_choice="required", max_output_tokens=120,
                              parallel_tool_calls=False, temperature=0.8)
    calls = [item for item in resp.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather"
    assert isinstance(json.loads(calls[0].arguments)["city"], str)
    named = c.responses.create(model="m", input="hello", tools=[tool], max_output_tokens=120,
                               tool_choice={"type": "function", "name": "get_weather"})
    assert [item.name for item in named.output if item.type == "function_call"] == ["get_weather"]
    with pytest.raises(openai.BadRequestError):
        c.responses.create(model="m", input="hello", tool_choice="required", max_output_tokens=5)
