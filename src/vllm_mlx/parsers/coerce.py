"""Typing tool-call arguments by the tool's JSON schema.

Formats that write every argument as text (Qwen3-Coder's ``<parameter=..>``, GLM's
``<arg_value>``) need the schema to know that ``"3"`` is the integer 3; models that write JSON
sometimes quote numbers or booleans.  :func:`coerce_arguments` converts string values to the
declared type when the conversion is unambiguous, and leaves everything else alone.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable, Mapping

_INTEGER = re.compile(r"[+-]?\d+")
_JSON_FIRST = ("{", "[")


def tool_schemas(tools: Iterable[Any] | None) -> dict[str, dict]:
    """Map tool name -> JSON schema of its arguments, from request ``tools`` in OpenAI
    (``{"type": "function", "function": {"name", "parameters"}}``), bare function
    (``{"name", "parameters"}``) or Anthropic (``{"name", "input_schema"}``) form, as dicts or
    pydantic models."""
    schemas: dict[str, dict] = {}
    for tool in tools or ():
        if hasattr(tool, "model_dump"):  # a pydantic request model
            tool = tool.model_dump()
        if not isinstance(tool, Mapping):
            continue
        spec = tool.get("function") if isinstance(tool.get("function"), Mapping) else tool
        name = spec.get("name")
        schema = spec.get("parameters", spec.get("input_schema"))
        if isinstance(name, str):
            schemas[name] = dict(schema) if isinstance(schema, Mapping) else {}
    return schemas


def declared_types(schema: Any) -> list[str]:
    """The JSON types a schema allows, in declaration order (``type`` as a string or a list, or
    the branches of ``anyOf`` / ``oneOf``; an ``enum`` contributes its values' types)."""
    if not isinstance(schema, Mapping):
        return []
    kind = schema.get("type")
    types: list[str] = [kind] if isinstance(kind, str) else [t for t in kind or () if isinstance(t, str)]
    for key in ("anyOf", "oneOf"):
        for branch in schema.get(key) or ():
            types.extend(t for t in declared_types(branch) if t not in types)
    if not types and isinstance(schema.get("enum"), list):
        for value in schema["enum"]:
            name = _json_type_name(value)
            if name not in types:
                types.append(name)
    return types


def _json_type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return "string"


_MISSING = object()


def _convert_text(text: str, kind: str) -> Any:
    """``text`` as a value of JSON type ``kind``, or _MISSING when it is not one."""
    stripped = text.strip()
    if kind == "integer":
        return int(stripped) if _INTEGER.fullmatch(stripped) else _MISSING
    if kind == "number":
        if _INTEGER.fullmatch(stripped):
            return int(stripped)
        try:
            number = float(stripped)
        except ValueError:
            return _MISSING
        return number if number == number and abs(number) != float("inf") else _MISSING
    if kind == "boolean":
        lowered = stripped.lower()
        return True if lowered == "true" else False if lowered == "false" else _MISSING
    if kind == "null":
        return None if stripped.lower() in ("null", "none") else _MISSING
    if kind in ("object", "array"):
        try:
            value = json.loads(stripped)
        except ValueError:
            return _MISSING
        wanted = dict if kind == "object" else list
        return value if isinstance(value, wanted) else _MISSING
    return _MISSING


def coerce_value(value: Any, schema: Any) -> Any:
    """One value typed by its schema: strings become the declared non-string type when that is
    unambiguous (the schema does not also allow a string); objects and arrays are walked."""
    types = declared_types(schema)
    if isinstance(value, str):
        if not types or "string" in types:
            return value
        for kind in types:
            converted = _convert_text(value, kind)
            if converted is not _MISSING:
                return coerce_value(converted, schema) if kind in ("object", "array") else converted
        return value
    if isinstance(value, dict) and isinstance(schema, Mapping):
        return coerce_arguments(value, schema)
    if isinstance(value, list) and isinstance(schema, Mapping) and isinstance(schema.get("items"), Mapping):
        return [coerce_value(item, schema["items"]) for item in value]
    return value


def coerce_arguments(arguments: dict, json_schema: Mapping | None) -> dict:
    """A copy of ``arguments`` with string values converted to the types ``json_schema``
    declares for them (integer, number, boolean, null, and object / array from JSON text).

    A value stays as it is when the schema allows a string, says nothing about the key, or the
    text does not convert cleanly (``"3.5"`` for an integer stays ``"3.5"``).  Nested objects
    and arrays are converted by their ``properties`` / ``items`` schemas.
    """
    properties = json_schema.get("properties") if isinstance(json_schema, Mapping) else None
    if not isinstance(properties, Mapping):
        return dict(arguments)
    return {key: coerce_value(value, properties.get(key)) for key, value in arguments.items()}


def parameter_value(text: str, schema: Any) -> Any:
    """A value written as plain text inside markup (Qwen3-Coder, GLM), typed by its schema.

    Without a schema (unknown tool or parameter), text that is a JSON object or array is
    parsed; everything else stays a string.
    """
    types = declared_types(schema)
    if not types:
        stripped = text.strip()
        if stripped.startswith(_JSON_FIRST):
            try:
                return json.loads(stripped)
            except ValueError:
                return text
        return text
    return coerce_value(text, schema)
