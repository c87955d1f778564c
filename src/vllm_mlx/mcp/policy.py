"""The permission policy every MCP tool call goes through, whoever asks (route or chat loop).

In order: the server is allowed, the tool is allowed (and not denied), the arguments are JSON
(no NaN or Infinity, which Python's parser lets through) and validate against the tool's
``inputSchema``, and the per-minute limits have room. Refusals are :class:`ToolCallError` with the
HTTP status the routes answer with. A refusal's message says what the schema wanted, never the value
that was sent: it is written to the audit log, which records no argument values.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from .config import MCPConfig, ServerSpec


class ToolCallError(Exception):
    """A call that was refused or failed; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


@dataclass
class RateWindow:
    """At most ``limit`` events in any 60 s window (a sliding log of times)."""

    limit: int
    clock: Callable[[], float] = time.monotonic
    _times: deque = field(default_factory=deque)

    def retry_after(self) -> float:
        """0 when there is room now, else seconds until there is."""
        now = self.clock()
        while self._times and now - self._times[0] >= 60.0:
            self._times.popleft()
        return 0.0 if len(self._times) < self.limit else 60.0 - (now - self._times[0])

    def record(self) -> None:
        self._times.append(self.clock())


class ToolPolicy:
    def __init__(self, config: MCPConfig, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self._global = RateWindow(config.policy.calls_per_minute, clock) if config.policy.calls_per_minute else None
        self._per_server = {name: RateWindow(spec.calls_per_minute, clock)
                            for name, spec in config.servers.items() if spec.calls_per_minute}
        self._validators: dict[tuple[str, str, str], Any] = {}  # jsonschema validators, built on first use

    def server_allowed(self, server: str) -> bool:
        allowed = self.config.policy.allowed_servers
        return server in self.config.servers and (allowed is None or server in allowed)

    def tool_allowed(self, server: str, tool: str) -> bool:
        if not self.server_allowed(server):
            return False
        spec: ServerSpec = self.config.servers[server]
        if tool in spec.denied_tools:
            return False
        return "*" in spec.allowed_tools or tool in spec.allowed_tools

    def timeout(self, server: str) -> float:
        spec = self.config.servers.get(server)
        return (spec.timeout_s if spec and spec.timeout_s else None) or self.config.policy.timeout_s

    def check(self, server: str, tool: str, arguments: Any, schema: dict | None) -> None:
        """Raise :class:`ToolCallError` unless this call may run now; on success it is counted."""
        if not self.tool_allowed(server, tool):
            raise ToolCallError(403, f"the MCP tool '{tool}' of server '{server}' is not allowed by the policy",
                                "tool_not_allowed", "tool")
        self.validate(server, tool, arguments, schema)
        windows = [w for w in (self._per_server.get(server), self._global) if w is not None]
        wait = max((w.retry_after() for w in windows), default=0.0)
        if wait > 0:
            raise ToolCallError(429, f"MCP call limit reached; retry in {wait:.0f} s", "rate_limit_exceeded")
        for w in windows:
            w.record()

    def validate(self, server: str, tool: str, arguments: Any, schema: dict | None) -> None:
        if not isinstance(arguments, dict):
            raise ToolCallError(400, "arguments must be a JSON object", "invalid_arguments", "arguments")
        where = non_finite_number(arguments)
        if where is not None:
            raise ToolCallError(400, f"arguments of '{tool}' hold NaN or Infinity{' at ' + where if where else ''}, "
                                "which JSON has no numbers for", "invalid_arguments", "arguments")
        schema = schema or {"type": "object"}
        key = (server, tool, repr(schema))
        validator = self._validators.get(key)
        if validator is None:
            from jsonschema import Draft202012Validator  # installed with the mcp extra
            from jsonschema.exceptions import SchemaError

            try:
                Draft202012Validator.check_schema(schema)
            except SchemaError as exc:
                raise ToolCallError(502, f"the MCP tool '{tool}' declares an invalid input schema: {exc.message}",
                                    "invalid_tool_schema") from exc
            validator = self._validators[key] = Draft202012Validator(schema)
        errors = sorted(validator.iter_errors(arguments), key=lambda e: list(e.absolute_path))
        if errors:
            raise ToolCallError(400, f"arguments do not match the input schema of '{tool}': "
                                f"{schema_error_text(errors[0])}", "invalid_arguments", "arguments")


def non_finite_number(value: Any, path: str = "", depth: int = 0) -> str | None:
    """The path ("" for the top) of the first NaN or infinite number in JSON-like data, or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if depth > 64:
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = non_finite_number(item, f"{path}/{key}" if path else str(key), depth + 1)
        if found is not None:
            return found
    return None


_BOUNDS = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "minItems",
           "maxItems", "minProperties", "maxProperties", "multipleOf", "uniqueItems"})


def schema_error_text(error: Any) -> str:
    """A jsonschema error told from the schema's side: where, and what the schema wants -- never the
    value sent (jsonschema's own messages quote it)."""
    where = "/".join(str(p) for p in error.absolute_path)
    kind, wanted, instance = error.validator, error.validator_value, error.instance
    if kind == "type":
        what = f"must be of type {' or '.join(wanted) if isinstance(wanted, list) else wanted}"
    elif kind == "required":
        missing = [p for p in wanted if isinstance(instance, dict) and p not in instance]
        what = f"misses the required propert{'y' if len(missing) == 1 else 'ies'} {', '.join(map(repr, missing))}"
    elif kind == "additionalProperties" and isinstance(instance, dict):
        allowed = set((error.schema or {}).get("properties") or {})
        what = f"has properties the schema does not allow: {', '.join(map(repr, sorted(set(instance) - allowed)))}"
    elif kind in ("enum", "const"):
        what = "is not one of the values the schema allows"
    elif kind in _BOUNDS:
        what = f"breaks the schema's {kind} {wanted}"
    elif kind == "pattern":
        what = f"does not match the pattern {wanted!r}"
    elif kind == "format":
        what = f"is not a valid {wanted}"
    else:
        what = f"fails the schema's {kind!r} rule"
    return f"at {where}: {what}" if where else what
