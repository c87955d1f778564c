"""Structured output by constrained decoding: random-weight models always produce valid output."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import jsonschema
import pytest

from test_server_openai import async_client, client

SCHEMAS = {
    "flat": {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 10}, "age": {"type": "integer", "minimum": 0,
                                                                              "maximum": 150}},
        "required": ["name", "age"], "additionalProperties": False,
    },
    "nested_with_arrays_and_enums": {
        "type": "object",
        "properties": {
            "user": {"type": "object", "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 999},
                                                      "role": {"enum": ["admin", "guest", "dev"]}},
                     "required": ["id", "role"], "additionalProperties": False},
            "scores": {"type": "array", "items": {"type": "number", "minimum": -1, "maximum": 1}, "maxItems": 4},
            "ok": {"type": "boolean"},
        },
        "required": ["user", "scores", "ok"], "additionalProperties": False,
    },
    "optional_fields": {
        "type": "object",
        "properties": {"title": {"type": "string", "maxLength": 8}, "note": {"type": "string", "maxLength": 5},
                       "count": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["title"], "additionalProperties": False,
    },
    "enum_only": {"enum": ["red", "green", "blue"]},
}


def _chat(server, schema: dict, **kw):
    return client(server).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Reply in JSON."}], max_tokens=160, temperature=1.0,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}, **kw)


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_schema_output_always_validates(qwen3_server, name):
    schema = SCHEMAS[name]
    for seed in range(3):
        resp = _chat(qwen3_server, schema, seed=seed)
        jsonschema.validate(json.loads(resp.choices[0].message.content), schema)
        assert resp.choices[0].finish_reason == "stop"
    chunks = _chat(qwen3_server, schema, seed=11, stream=True)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    jsonschema.validate(json.loads(text), schema)


def test_constrained_and_free_requests_share_a_batch(qwen3_server):
    schema = SCHEMAS["nested_with_arrays_and_enums"]

    async def run():
        c = async_client(qwen3_server)
        constrained = [c.chat.completions.create(
            model="m", messages=[{"role": "user", "content": f"JSON {i}"}], max_tokens=160, temperature=1.0, seed=i,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
            for i in range(4)]
        free = [c.chat.completions.create(model="m", messages=[{"role": "user", "content": f"free {i}"}],
                                          max_tokens=40, temperature=1.0, seed=i) for i in range(4)]
        return await asyncio.gather(*constrained, *free)

    results = asyncio.run(run())
    for resp in results[:4]:
        jsonschema.validate(json.loads(resp.choices[0].message.content), schema)
    free_texts = [r.choices[0].message.content for r in results[4:]]
    assert all(len(r.choices[0].message.content) > 0 for r in results[4:])
    assert sum(t.lstrip().startswith("{") for t in free_texts) < 4  # the free rows were not constrained


def test_json_object_regex_choice_and_grammar(qwen3_server):
    c = client(qwen3_server)
    msgs = [{"role": "user", "content": "go"}]
    regex = c.chat.completions.create(model="m", messages=msgs, max_tokens=30, temperature=1.0, seed=2,
                                      extra_body={"structured_outputs": {"regex": r"[A-Z]{3}-\d{4}"}})
    assert re.fullmatch(r"[A-Z]{3}-\d{4}", regex.choices[0].message.content)
    choice = c.chat.completions.create(model="m", messages=msgs, max_tokens=10, temperature=1.0, seed=3,
                                       extra_body={"guided_choice": ["yes", "no", "maybe"]})
    assert choice.choices[0].message.content in ("yes", "no", "maybe")
    lark = 'start: "ANSWER: " NUMBER\nNUMBER: /[0-9]{1,3}/'
    grammar = c.completions.create(model="m", prompt="Q:", max_tokens=12, temperature=1.0, seed=4,
                                   extra_body={"structured_outputs": {"grammar": lark}})
    assert re.fullmatch(r"ANSWER: [0-9]{1,3}", grammar.choices[0].text)
    many = c.chat.completions.create(model="m", messages=msgs, max_tokens=120, temperature=1.0, seed=5, n=3,
                                     response_format={"type": "json_schema",
                                                      "json_schema": {"name": "f", "schema": SCHEMAS["flat"]}})
    for ch in many.choices:
        jsonschema.validate(json.loads(ch.message.content), SCHEMAS["flat"])


def test_json_object_keeps_valid_output_unchanged(scripted_server):
    """A model that already answers in JSON is not disturbed by the constraint (streamed or not)."""
    c = client(scripted_server)
    msgs = [{"role": "user", "content": "JSON please"}]
    resp = c.chat.completions.create(model="scripted", messages=msgs, response_format={"type": "json_object"})
    assert resp.choices[0].message.content == '{"city":"Paris","temp":22}'
    streamed = c.chat.completions.create(model="scripted", messages=msgs, stream=True,
                                         response_format={"type": "json_object"})
    assert "".join(ch.choices[0].delta.content or "" for ch in streamed if ch.choices) == '{"city":"Paris","temp":22}'
    # a schema the scripted answer violates: the grammar wins and the output still validates
    schema = {"type": "object", "properties": {"city": {"enum": ["Rome"]}}, "required": ["city"],
              "additionalProperties": False}
    forced = c.chat.completions.create(model="scripted", messages=msgs, max_tokens=30, response_format={
        "type": "json_schema", "json_schema": {"name": "c", "schema": schema}})
    assert json.loads(forced.choices[0].message.content) == {"city": "Rome"}


def test_bad_constraints_are_400(qwen3_server):
    url = f"{qwen3_server.base_url}/v1/chat/completions"
    base = {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5}
    bad = [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
         "response_format"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"structured_outputs": {"regex": "(unclosed"}}, "structured_outputs.regex"),
        ({"guided_choice": ["a"], "guided_regex": "b"}, "guided_choice"),
        ({"guided_json": "{not json"}, "guided_json"),
        ({"response_format": {"type": "json_object"}, "guided_regex": "a"}, "guided_regex"),
    ]
    for extra, param in bad:
        resp = httpx.post(url, json={**base, **extra}, timeout=30)
        assert resp.status_code == 400, (extra, resp.text)
        assert resp.json()["error"]["param"] == param, resp.json()
        assert resp.json()["error"]["message"]


def test_thinking_is_off_by_default_with_a_schema(scripted_server):
    # The scripted model answers the "think" rule with a think block; under a schema the template is
    # rendered with enable_thinking=False (prompt gets the closed empty think block).
    c = client(scripted_server)
    msgs = [{"role": "user", "content": "Hi"}]
    free = c.chat.completions.create(model="scripted", messages=msgs, max_tokens=5)
    constrained = c.chat.completions.create(model="scripted", messages=msgs, max_tokens=40,
                                            extra_body={"guided_choice": ["Hello", "Bye"]})
    assert constrained.usage.prompt_tokens > free.usage.prompt_tokens
    assert constrained.choices[0].message.content in ("Hello", "Bye")


def test_tool_call_grammar_hook(tiny_qwen3):
    """The constraint the tool-calling layer uses for tool_choice required/named."""
    from mlx_lm.utils import load_tokenizer

    from vllm_mlx.engine.constraints import GrammarCompiler, GrammarError, tool_call_spec

    tok = load_tokenizer(tiny_qwen3)
    compiler = GrammarCompiler(tok, len(tok), sorted(tok.eos_token_ids))
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
             {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
    open_id, close_id = tok.convert_tokens_to_ids("<tool_call>"), tok.convert_tokens_to_ids("</tool_call>")

    def accepts(spec, body: str) -> bool:
        m = compiler.matcher(spec)
        ids = [open_id, *tok.encode("\n" + body + "\n", add_special_tokens=False), close_id]
        return all(m.consume_token(t) for t in ids) and m.is_accepting()

    named = tool_call_spec(tools, name="get_weather")
    assert accepts(named, '{"name":"get_weather","arguments":{"city":"Paris"}}')
    assert not accepts(named, '{"name":"get_time","arguments":{}}')
    assert not accepts(named, '{"name":"get_weather","arguments":{}}')  # required parameter missing
    anyone = tool_call_spec(tools)
    assert accepts(anyone, '{"name":"get_time","arguments":{}}')
    with pytest.raises(GrammarError):
        tool_call_spec(tools, name="nope")
