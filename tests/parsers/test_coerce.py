"""Typing arguments by the tool schema."""

from __future__ import annotations

from vllm_mlx.parsers import coerce_arguments, tool_schemas
from vllm_mlx.parsers.coerce import parameter_value

SCHEMA = {
    "type": "object",
    "properties": {
        "count": {"type": "integer"},
        "ratio": {"type": "number"},
        "whole": {"type": "number"},
        "enabled": {"type": "boolean"},
        "name": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "integer"}},
        "options": {"type": "object", "properties": {"depth": {"type": "integer"}}},
        "maybe": {"type": ["integer", "null"]},
        "either": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
        "level": {"enum": [1, 2, 3]},
    },
}


def test_string_values_become_declared_types():
    arguments = {
        "count": "42",
        "ratio": "0.25",
        "whole": "7",
        "enabled": "True",
        "name": "123",
        "tags": '["1", 2]',
        "options": '{"depth": "3"}',
        "maybe": "null",
        "either": "5",
        "level": "2",
        "unknown": "9",
    }
    assert coerce_arguments(arguments, SCHEMA) == {
        "count": 42,
        "ratio": 0.25,
        "whole": 7,
        "enabled": True,
        "name": "123",
        "tags": [1, 2],
        "options": {"depth": 3},
        "maybe": None,
        "either": "5",
        "level": 2,
        "unknown": "9",
    }


def test_ambiguous_or_unconvertible_values_are_left_alone():
    arguments = {"count": "3.5", "ratio": "fast", "enabled": "yes", "tags": "[1, 2", "options": "[]", "maybe": 4}
    assert coerce_arguments(arguments, SCHEMA) == arguments


def test_nested_values_are_walked_without_changing_the_input():
    arguments = {"options": {"depth": "4"}, "tags": ["5", 6]}
    assert coerce_arguments(arguments, SCHEMA) == {"options": {"depth": 4}, "tags": [5, 6]}
    assert arguments == {"options": {"depth": "4"}, "tags": ["5", 6]}


def test_no_schema_means_no_change():
    assert coerce_arguments({"a": "1"}, {}) == {"a": "1"}
    assert coerce_arguments({"a": "1"}, None) == {"a": "1"}


def test_tool_schemas_accepts_openai_plain_and_anthropic_forms():
    tools = [
        {"type": "function", "function": {"name": "a", "parameters": {"type": "object"}}},
        {"name": "b", "parameters": {"type": "object", "properties": {}}},
        {"name": "c", "input_schema": {"type": "object"}},
        {"name": "d"},
        "not a tool",
    ]
    assert tool_schemas(tools) == {
        "a": {"type": "object"},
        "b": {"type": "object", "properties": {}},
        "c": {"type": "object"},
        "d": {},
    }


def test_parameter_value_without_schema_parses_only_json_containers():
    assert parameter_value("10", None) == "10"
    assert parameter_value(' {"a": 1} ', None) == {"a": 1}
    assert parameter_value("[1, 2]", {}) == [1, 2]
    assert parameter_value("[not json", None) == "[not json"
    assert parameter_value("10", {"type": "integer"}) == 10
    assert parameter_value(" keep spaces ", {"type": "string"}) == " keep spaces "
