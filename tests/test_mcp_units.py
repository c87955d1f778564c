"""MCP pieces without a model: the config file, the policy, the audit log, the streamable HTTP
transport (against the demo MCP server run over HTTP) and the CLI checks."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import VLLM_MLX, free_port
from vllm_mlx.mcp import MCPConfigError, MCPManager, ToolCallError
from vllm_mlx.mcp.audit import AuditLog
from vllm_mlx.mcp.config import parse_mcp_config
from vllm_mlx.mcp.policy import RateWindow, ToolPolicy

DEMO_SERVER = Path(__file__).parent / "mcp_servers" / "demo_server.py"
ADD_SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
              "required": ["a", "b"]}


def _config(servers: dict, **sections):
    return parse_mcp_config({"mcpServers": servers, **sections}, {"TOKEN": "tok-123"})


# -- config ------------------------------------------------------------------------------------


def test_config_shapes_and_expansion():
    cfg = _config({
        "local": {"command": "python", "args": ["srv.py", "--token=${TOKEN}"], "env": {"KEY": "${TOKEN}"},
                  "allowedTools": ["add"]},
        "remote": {"url": "https://user:pw@example.test:8443/mcp?x=1", "headers": {"Authorization": "Bearer ${TOKEN}"},
                   "allowedTools": ["*"], "deniedTools": ["rm"], "timeout": 5, "callsPerMinute": 10},
        "typed": {"type": "streamable-http", "url": "http://127.0.0.1:9/mcp"},
    }, policy={"allowedServers": ["local", "remote"], "maxRounds": 2})
    local, remote, typed = cfg.servers["local"], cfg.servers["remote"], cfg.servers["typed"]
    assert (local.transport, local.args, local.env) == ("stdio", ("srv.py", "--token=tok-123"), {"KEY": "tok-123"})
    assert remote.transport == "http" and remote.headers == {"Authorization": "Bearer tok-123"}
    assert (remote.timeout_s, remote.calls_per_minute, remote.denied_tools) == (5.0, 10, frozenset({"rm"}))
    assert typed.transport == "http" and typed.allowed_tools == frozenset()
    # what is shown of a server: no arguments, no credentials, no path or query
    assert local.target == "python" and remote.target == "https://example.test:8443"
    assert cfg.policy.max_rounds == 2 and cfg.policy.allowed_servers == {"local", "remote"}


@pytest.mark.parametrize("data, message", [
    ({"servers": {}}, '"mcpServers"'),
    ({"mcpServers": {}, "extra": 1}, "unknown top-level key"),
    ({"mcpServers": {"a": {"url": "http://x", "type": "sse"}}}, "'sse' is not supported"),
    ({"mcpServers": {"a": {"args": []}}}, 'needs a "command"'),
    ({"mcpServers": {"a": {"url": "ftp://x"}}}, "http(s)"),
    ({"mcpServers": {"a b": {"command": "x"}}}, "server names"),
    ({"mcpServers": {"a": {"command": "x", "env": {"K": "${MISSING}"}}}}, "${MISSING}"),
    ({"mcpServers": {"a": {"command": "x", "allowedTools": "add"}}}, "list of tool names"),
    ({"mcpServers": {"a": {"command": "x", "timeout": 0}}}, "positive number"),
    ({"mcpServers": {"a": {"command": "x"}}, "policy": {"allowedServers": ["b"]}}, "unknown server"),
    ({"mcpServers": {}, "policy": {"maxRound": 3}}, "unknown key(s) in policy"),
    ({"mcpServers": {}, "policy": {"callsPerMinute": 1.5}}, "positive integer"),
])
def test_config_errors_say_what_is_wrong(data, message):
    with pytest.raises(MCPConfigError) as err:
        parse_mcp_config(data, {})
    assert message in str(err.value)


# -- policy ------------------------------------------------------------------------------------


def test_policy_allow_lists():
    cfg = _config({"a": {"command": "x", "allowedTools": ["add"]},
                   "b": {"command": "x", "allowedTools": ["*"], "deniedTools": ["rm"]},
                   "c": {"command": "x", "allowedTools": ["*"]},
                   "d": {"command": "x"}}, policy={"allowedServers": ["a", "b", "d"]})
    policy = ToolPolicy(cfg)
    assert policy.tool_allowed("a", "add") and not policy.tool_allowed("a", "sub")
    assert policy.tool_allowed("b", "anything") and not policy.tool_allowed("b", "rm")
    assert not policy.tool_allowed("c", "add")  # server not in allowedServers
    assert not policy.tool_allowed("d", "add")  # no allowedTools: nothing is allowed
    with pytest.raises(ToolCallError) as err:
        policy.check("b", "rm", {}, None)
    assert err.value.status == 403


def test_policy_validates_arguments():
    policy = ToolPolicy(_config({"a": {"command": "x", "allowedTools": ["add"]}}))
    policy.check("a", "add", {"a": 1, "b": 2}, ADD_SCHEMA)
    for args, text in (({"a": 1}, "misses the required property 'b'"), ({"a": 1, "b": "2"}, "at b: must be of type"),
                       ([1, 2], "must be a JSON object"), ({"a": float("nan"), "b": 1}, "NaN or Infinity at a"),
                       ({"a": 1, "b": {"deep": [1, float("-inf")]}}, "NaN or Infinity at b/deep/1")):
        with pytest.raises(ToolCallError) as err:
            policy.check("a", "add", args, ADD_SCHEMA)
        assert err.value.status == 400 and text in err.value.message
    with pytest.raises(ToolCallError) as err:
        policy.check("a", "add", {}, {"type": "no-such-type"})
    assert err.value.status == 502 and err.value.code == "invalid_tool_schema"


def test_policy_per_minute_limits():
    now = [1000.0]
    cfg = _config({"a": {"command": "x", "allowedTools": ["*"], "callsPerMinute": 2},
                   "b": {"command": "x", "allowedTools": ["*"]}}, policy={"callsPerMinute": 3})
    policy = ToolPolicy(cfg, clock=lambda: now[0])
    policy.check("a", "t", {}, None)
    policy.check("a", "t", {}, None)
    with pytest.raises(ToolCallError) as err:
        policy.check("a", "t", {}, None)  # the server's limit
    assert err.value.status == 429 and err.value.code == "rate_limit_exceeded"
    policy.check("b", "t", {}, None)  # another server: only the global limit (3) counts
    with pytest.raises(ToolCallError):
        policy.check("b", "t", {}, None)
    now[0] += 60.0
    policy.check("a", "t", {}, None)  # the window moved on


def test_refused_calls_do_not_count_against_the_limit():
    policy = ToolPolicy(_config({"a": {"command": "x", "allowedTools": ["add"], "callsPerMinute": 1}}),
                        clock=lambda: 0.0)
    for tool, args in (("rm", {}), ("add", {"a": "x", "b": 1})):
        with pytest.raises(ToolCallError):
            policy.check("a", tool, args, ADD_SCHEMA)
    policy.check("a", "add", {"a": 1, "b": 2}, ADD_SCHEMA)  # the one call this minute
    with pytest.raises(ToolCallError) as err:
        policy.check("a", "add", {"a": 1, "b": 2}, ADD_SCHEMA)
    assert err.value.status == 429 and "retry in 60 s" in err.value.message
    assert RateWindow(1, clock=lambda: 0.0).retry_after() == 0.0


@pytest.mark.reliability
def test_schema_errors_never_quote_the_value(tmp_path):
    """Every kind of schema refusal, with a secret as the offending value: neither the message nor the
    audit record that carries it holds the secret."""
    secret = "hunter2-private"
    schema = {"type": "object", "additionalProperties": False, "required": ["s"], "properties": {
        "s": {"type": "string", "maxLength": 3, "pattern": "^[a-z]+$", "enum": ["abc"]},
        "n": {"type": "integer"}, "c": {"const": "x"}, "f": {"type": "string", "format": "email"},
        "o": {"not": {"type": "string"}}}}
    policy = ToolPolicy(_config({"a": {"command": "x", "allowedTools": ["*"]}}))
    log = AuditLog(str(tmp_path / "audit.jsonl"))
    cases = [{"s": secret}, {"s": "abc", "n": secret}, {"s": "abc", "c": secret}, {"s": "abc", "o": secret},
             {"s": "abc", "f": secret, "n": 1.5}, {"n": 1}]
    for args in cases:
        with pytest.raises(ToolCallError) as err:
            policy.check("a", "t", args, schema)
        assert err.value.code == "invalid_arguments" and secret not in err.value.message, err.value.message
        log.record(source="execute", request_id="r", server="a", tool="t", arguments=args,
                   outcome=err.value.code, status=err.value.status, duration_ms=0.1, error=err.value.message)
    audit = (tmp_path / "audit.jsonl").read_text()
    assert audit.count('"invalid_arguments"') == len(cases) and secret not in audit
    # keys are recorded (docs/mcp.md), so an unexpected key may be named
    with pytest.raises(ToolCallError) as err:
        policy.check("a", "t", {"s": "abc", "extra": secret}, schema)
    assert "'extra'" in err.value.message and secret not in err.value.message


def test_audit_records_keys_and_digest_not_values(tmp_path):
    log = AuditLog(str(tmp_path / "audit" / "calls.jsonl"))
    log.record(source="execute", request_id="r1", server="s", tool="t", arguments={"password": "hunter2"},
               outcome="ok", status=200, duration_ms=1.25)
    [line] = (tmp_path / "audit" / "calls.jsonl").read_text().splitlines()
    entry = json.loads(line)
    assert "hunter2" not in line and entry["arguments"]["keys"] == ["password"]
    assert (entry["server"], entry["tool"], entry["outcome"], entry["status"]) == ("s", "t", "ok", 200)


# -- the streamable HTTP transport ----------------------------------------------------------


def test_streamable_http_server(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(DEMO_SERVER), "--http", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        cfg = parse_mcp_config({
            "mcpServers": {"web": {"url": f"http://127.0.0.1:{port}/mcp", "headers": {"X-Token": "${TOKEN}"},
                                   "allowedTools": ["add", "token_header"]}},
            "supervision": {"restartBackoff": 0.2, "restartBackoffMax": 0.5, "healthCheckInterval": 1},
        }, {"TOKEN": "tok-123"})
        asyncio.run(_use_http_server(cfg))
    finally:
        proc.terminate()
        proc.wait(10)


async def _use_http_server(cfg) -> None:
    manager = MCPManager(cfg)
    await manager.start()
    try:
        deadline = time.monotonic() + 30  # the server process may still be starting
        while manager.connections["web"].status != "ready" and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        [status] = manager.servers_status()
        assert status["status"] == "ready" and status["transport"] == "http" and status["tools"] == 6
        assert sorted(t.name for t in manager.allowed_tools()) == ["add", "token_header"]
        result = await manager.execute("add", {"a": 19, "b": 23})
        assert (result.server, result.text, result.is_error) == ("web", "42", False)
        assert (await manager.execute("token_header", {})).text == "tok-123"  # the configured, expanded header
        with pytest.raises(ToolCallError) as err:
            await manager.execute("delete_everything", {})
        assert err.value.status == 403
    finally:
        await manager.stop()
    assert manager.servers_status()[0]["status"] == "stopped"


# -- the CLI -----------------------------------------------------------------------------------


def test_cli_checks_the_mcp_config_before_loading_a_model(tmp_path):
    bad = tmp_path / "mcp.json"
    bad.write_text(json.dumps({"mcpServers": {"x": {"url": "http://h/mcp", "type": "sse"}}}))
    result = subprocess.run([VLLM_MLX, "serve", "--mcp-config", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "'sse' is not supported" in result.stderr
    result = subprocess.run([VLLM_MLX, "serve", "--mcp-auto"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "--mcp-auto needs --mcp-config" in result.stderr
