"""MCP end to end: a real MCP server (tests/mcp_servers/demo_server.py, stdio) behind a real
vllm-mlx server with --mcp-config, and the server-side tool loop with a scripted model.

The scripted model calls ``add`` when the MCP tools are in its prompt and, once a tool result
is in the conversation, answers by quoting that result -- so the final answers below can only
be right if the server really ran the tool and fed its result back.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

DEMO_SERVER = Path(__file__).parent / "mcp_servers" / "demo_server.py"
KEY = "test-key-123"
SECRET = "s3cr3t-env-value-never-logged"


def _call(name: str, arguments: dict) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


RULES = [
    {"if_contains": "loop forever", "reply": _call("add", {"a": 1, "b": 1})},
    {"if_contains": "<tool_response>", "quote": r"<tool_response>\n(.*?)\n</tool_response>",
     "reply": "The tool says {quote}."},
    {"if_contains": "wipe everything", "reply": _call("delete_everything", {})},
    {"if_contains": "client weather", "reply": _call("get_weather", {"city": "Paris"})},
    {"if_contains": "both kinds", "reply": _call("add", {"a": 1, "b": 2}) + "\n" + _call("get_weather", {"city": "Oslo"})},
    {"if_contains": "slow please", "reply": _call("slow", {"seconds": 5})},
    {"if_contains": '"name": "demo__add"', "reply": _call("demo__add", {"a": 2, "b": 3})},
    {"if_contains": '"name": "add"', "reply": _call("add", {"a": 20, "b": 22})},
]
DEFAULT = "No tools were offered."
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture(scope="module")
def mcp_files(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("mcp")
    config = {
        "mcpServers": {
            "demo": {"command": sys.executable, "args": [str(DEMO_SERVER)], "env": {"DEMO_SECRET": SECRET},
                     "allowedTools": ["add", "slow", "crash", "fail"], "timeout": 1},
            "ghost": {"command": str(folder / "no-such-server"), "allowedTools": ["*"]},
        },
        "policy": {"maxRounds": 3, "auditLog": str(folder / "audit.jsonl")},
        "supervision": {"healthCheckInterval": 0.5, "restartBackoff": 0.2, "restartBackoffMax": 2,
                        "startupTimeout": 20},
    }
    path = folder / "mcp.json"
    path.write_text(json.dumps(config))
    return {"config": path, "audit": folder / "audit.jsonl"}


@pytest.fixture(scope="module")
def mcp_server(start_server, models_dir, mcp_files):
    from vllm_mlx_testing import build_scripted_model

    model = build_scripted_model(models_dir / "scripted-mcp", RULES, DEFAULT, "qwen3")
    return start_server(model, "--trust-remote-code", "--served-model-name", "scripted",
                        "--mcp-config", mcp_files["config"], "--api-key", KEY)


def _http(server) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)


def _client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEY, max_retries=0)


def _execute(vllm, tool: str, arguments=None, **extra) -> httpx.Response:
    body = {"tool": tool, **extra}
    if arguments is not None:
        body["arguments"] = arguments
    with _http(vllm) as c:
        return c.post("/v1/mcp/execute", json=body)


# -- routes ------------------------------------------------------------------------------------


def test_routes_need_the_api_key(mcp_server):
    for method, path in (("GET", "/v1/mcp/tools"), ("GET", "/v1/mcp/servers"), ("POST", "/v1/mcp/execute")):
        r = httpx.request(method, f"{mcp_server.base_url}{path}", json={"tool": "add"})
        assert r.status_code == 401, path
        assert r.json()["error"]["code"] == "invalid_api_key"


def test_discovery_lists_allowed_tools_and_server_status(mcp_server):
    with _http(mcp_server) as c:
        tools = c.get("/v1/mcp/tools").json()["data"]
        servers = {s["name"]: s for s in c.get("/v1/mcp/servers").json()["data"]}
    assert sorted(t["name"] for t in tools) == ["add", "crash", "fail", "slow"]  # not delete_everything
    add = next(t for t in tools if t["name"] == "add")
    assert add["server"] == "demo" and add["description"] == "Add two integers."
    assert add["input_schema"]["required"] == ["a", "b"]
    demo = servers["demo"]
    assert (demo["status"], demo["transport"], demo["tools"], demo["allowed_tools"]) == ("ready", "stdio", 6, 4)
    ghost = servers["ghost"]
    assert ghost["status"] in ("restarting", "starting") and ghost["last_error"] and ghost["tools"] == 0
    assert SECRET not in json.dumps(servers)  # env values are never shown


def test_execute_runs_the_tool(mcp_server, mcp_files):
    r = _execute(mcp_server, "add", {"a": 2, "b": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["object"], body["server"], body["tool"], body["is_error"]) == ("mcp.tool_result", "demo", "add", False)
    assert body["text"] == "5" and body["content"] == [{"type": "text", "text": "5"}]
    # the same with the server named, and with the qualified name
    assert _execute(mcp_server, "add", {"a": 1, "b": 1}, server="demo").json()["text"] == "2"
    assert _execute(mcp_server, "demo__add", {"a": 1, "b": 2}).json()["text"] == "3"
    records = [json.loads(line) for line in mcp_files["audit"].read_text().splitlines()]
    mine = [r for r in records if r["request_id"] == body["id"]]
    assert len(mine) == 1 and mine[0]["outcome"] == "ok" and mine[0]["source"] == "execute"
    assert mine[0]["arguments"]["keys"] == ["a", "b"] and set(mine[0]["arguments"]) == {"keys", "sha256"}


def test_a_failing_tool_is_a_result_with_is_error(mcp_server):
    r = _execute(mcp_server, "fail", {})
    assert r.status_code == 200 and r.json()["is_error"] is True
    assert "this tool always fails" in r.json()["text"]


def test_denied_and_unknown_tools(mcp_server, mcp_files):
    r = _execute(mcp_server, "delete_everything", {})
    assert r.status_code == 403
    assert r.json()["error"]["type"] == "permission_error" and r.json()["error"]["code"] == "tool_not_allowed"
    r = _execute(mcp_server, "no_such_tool", {})
    assert r.status_code == 404 and r.json()["error"]["code"] == "tool_not_found"
    r = _execute(mcp_server, "add", {"a": 1, "b": 2}, server="nowhere")
    assert r.status_code == 404 and r.json()["error"]["code"] == "server_not_found"
    r = _execute(mcp_server, "add", {"a": 1, "b": 2}, surprise=True)
    assert r.status_code == 400
    audit = mcp_files["audit"].read_text()
    assert '"outcome": "tool_not_allowed"' in audit and '"tool": "delete_everything"' in audit


def test_arguments_are_validated_against_the_schema(mcp_server, mcp_files):
    r = _execute(mcp_server, "add", {"a": "private-value-7781", "b": 3})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "invalid_arguments" and err["param"] == "arguments"
    assert "at a: must be of type integer" in err["message"] and "private-value-7781" not in err["message"]
    r = _execute(mcp_server, "add", {"a": 1})
    assert r.status_code == 400 and "misses the required property 'b'" in r.json()["error"]["message"]
    # the audit log records the refusal, never the value (docs/mcp.md)
    audit = mcp_files["audit"].read_text()
    assert '"outcome": "invalid_arguments"' in audit and "private-value-7781" not in audit


@pytest.mark.reliability
def test_nan_and_infinity_arguments_are_refused(mcp_server):
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        body = b'{"tool": "add", "arguments": {"a": %s, "b": 1}}' % literal
        with _http(mcp_server) as c:
            r = c.post("/v1/mcp/execute", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400, (literal, r.text)
        assert r.json()["error"]["code"] == "invalid_arguments" and "NaN or Infinity at a" in r.json()["error"]["message"]


def test_timeout_gives_504_and_the_server_keeps_working(mcp_server):
    began = time.monotonic()
    r = _execute(mcp_server, "slow", {"seconds": 5})
    assert r.status_code == 504 and r.json()["error"]["code"] == "tool_timeout"
    assert time.monotonic() - began < 4
    assert _execute(mcp_server, "add", {"a": 40, "b": 2}).json()["text"] == "42"


def test_crashed_server_is_restarted(mcp_server):
    with _http(mcp_server) as c:
        before = next(s for s in c.get("/v1/mcp/servers").json()["data"] if s["name"] == "demo")["restarts"]
        assert _execute(mcp_server, "crash", {}).json()["text"] == "crashing"  # exits just after answering
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            demo = next(s for s in c.get("/v1/mcp/servers").json()["data"] if s["name"] == "demo")
            if demo["restarts"] > before and demo["status"] == "ready":
                break
            time.sleep(0.2)
    assert demo["restarts"] > before and demo["status"] == "ready", demo
    assert demo["last_error"]  # what ended the previous connection
    assert _execute(mcp_server, "add", {"a": 2, "b": 2}).json()["text"] == "4"


# -- the server-side tool loop -----------------------------------------------------------------


def test_loop_is_off_by_default(mcp_server):
    resp = _client(mcp_server).chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "What is 20 plus 22?"}])
    assert resp.choices[0].message.content == DEFAULT
    assert "mcp" not in (resp.model_extra or {})


def test_loop_non_streaming(mcp_server):
    resp = _client(mcp_server).chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "What is 20 plus 22?"}], extra_body={"mcp": True})
    choice = resp.choices[0]
    assert choice.message.content == "The tool says 42."
    assert choice.finish_reason == "stop" and not choice.message.tool_calls
    report = resp.model_extra["mcp"]
    assert report["rounds"] == 2
    [call] = report["calls"]
    assert (call["server"], call["tool"], json.loads(call["arguments"]), call["is_error"]) == (
        "demo", "add", {"a": 20, "b": 22}, False)
    assistant, tool = report["messages"]
    assert assistant["tool_calls"][0]["function"]["name"] == "add"
    assert tool == {"role": "tool", "tool_call_id": assistant["tool_calls"][0]["id"], "content": "42"}
    assert resp.usage.completion_tokens > 0 and resp.usage.prompt_tokens > 0


def test_loop_streaming(mcp_server):
    chunks = list(_client(mcp_server).chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "What is 20 plus 22?"}], stream=True,
        stream_options={"include_usage": True}, extra_body={"mcp": True}))
    content = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert content == "The tool says 42."
    assert not any(ch.choices[0].delta.tool_calls for ch in chunks if ch.choices)  # MCP calls are not the client's
    events = [ch.model_extra["mcp"] for ch in chunks if (ch.model_extra or {}).get("mcp")]
    assert [e["type"] for e in events] == ["tool_call", "tool_result", "done"]
    assert events[0]["tool"] == "add" and json.loads(events[0]["arguments"]) == {"a": 20, "b": 22}
    assert events[1]["content"] == "42" and events[1]["is_error"] is False and events[1]["id"] == events[0]["id"]
    assert events[2]["rounds"] == 2 and len(events[2]["calls"]) == 1
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].usage.completion_tokens > 0


def test_loop_tool_errors_go_to_the_model(mcp_server):
    resp = _client(mcp_server).chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "slow please"}], extra_body={"mcp": True})
    assert resp.choices[0].message.content == "The tool says Error: the MCP tool 'slow' did not answer within 1 s."
    [call] = resp.model_extra["mcp"]["calls"]
    assert call["is_error"] and call["error"]["code"] == "tool_timeout"


def test_loop_refuses_a_denied_tool_and_tells_the_model(mcp_server, mcp_files):
    """delete_everything is on the server but not allowed: never offered, and a call to it anyway is
    refused by the policy, reported, and answered with the error (not returned as the client's call)."""
    resp = _client(mcp_server).chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "wipe everything"}], extra_body={"mcp": True})
    message = resp.choices[0].message
    assert not message.tool_calls
    assert message.content == ("The tool says Error: the MCP tool 'delete_everything' of server 'demo' is not "
                               "allowed by the policy.")
    [call] = resp.model_extra["mcp"]["calls"]
    assert call["tool"] == "delete_everything" and call["refused"] and call["error"]["code"] == "tool_not_allowed"
    assert '"tool": "delete_everything"' in mcp_files["audit"].read_text()


def test_loop_stops_at_max_rounds(mcp_server):
    resp = _client(mcp_server).chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "loop forever"}], extra_body={"mcp": True})
    report = resp.model_extra["mcp"]
    assert report["stopped"] == "max_rounds" and len(report["calls"]) == 3 and report["rounds"] == 4
    assert not resp.choices[0].message.tool_calls


def test_loop_returns_client_tool_calls_to_the_client(mcp_server):
    c = _client(mcp_server)
    messages = [{"role": "user", "content": "client weather"}]
    resp = c.chat.completions.create(model="scripted", messages=messages, tools=[WEATHER_TOOL],
                                     extra_body={"mcp": True})
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert resp.model_extra["mcp"]["calls"] == []
    chunks = list(c.chat.completions.create(model="scripted", messages=messages, tools=[WEATHER_TOOL],
                                            stream=True, extra_body={"mcp": True}))
    starts = [tc for ch in chunks if ch.choices for tc in ch.choices[0].delta.tool_calls or [] if tc.id]
    assert [(tc.index, tc.function.name) for tc in starts] == [(0, "get_weather")]


def test_loop_runs_mcp_calls_and_returns_client_calls_of_the_same_turn(mcp_server):
    resp = _client(mcp_server).chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "both kinds"}], tools=[WEATHER_TOOL],
        extra_body={"mcp": True})
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [c.function.name for c in choice.message.tool_calls] == ["get_weather"]
    report = resp.model_extra["mcp"]
    assert [(c["tool"], c["is_error"]) for c in report["calls"]] == [("add", False)]
    assert report["messages"][1]["content"] == "3" and report["rounds"] == 1


def test_loop_renames_an_mcp_tool_that_clashes_with_a_client_tool(mcp_server):
    client_add = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}
    resp = _client(mcp_server).chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "What is 2 plus 3?"}], tools=[client_add],
        extra_body={"mcp": True})
    # the client keeps "add"; the MCP tool is offered (and run) as "demo__add"
    assert resp.choices[0].message.content == "The tool says 5."
    [call] = resp.model_extra["mcp"]["calls"]
    assert (call["server"], call["tool"]) == ("demo", "add")
    assert resp.model_extra["mcp"]["messages"][0]["tool_calls"][0]["function"]["name"] == "demo__add"


def test_loop_rejects_what_it_cannot_honour(mcp_server):
    c = _client(mcp_server)
    messages = [{"role": "user", "content": "What is 20 plus 22?"}]
    for extra, param in (({"n": 2}, "n"), ({"tool_choice": "required"}, "tool_choice"),
                         ({"logprobs": True}, "logprobs")):
        with pytest.raises(openai.BadRequestError) as err:
            c.chat.completions.create(model="scripted", messages=messages, extra_body={"mcp": True, **extra})
        assert err.value.body["param"] == param


def test_no_secrets_in_the_server_log(mcp_server, mcp_files):
    assert SECRET not in mcp_server.log()
    assert SECRET not in mcp_files["audit"].read_text()
    assert '"source": "chat"' in mcp_files["audit"].read_text()


def test_mcp_auto_runs_the_loop_unless_the_request_opts_out(start_server, models_dir, mcp_files, mcp_server):
    server = start_server(models_dir / "scripted-mcp", "--trust-remote-code", "--mcp-config", mcp_files["config"],
                          "--mcp-auto")
    c = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
    messages = [{"role": "user", "content": "What is 20 plus 22?"}]
    assert c.chat.completions.create(model="m", messages=messages).choices[0].message.content == "The tool says 42."
    off = c.chat.completions.create(model="m", messages=messages, extra_body={"mcp": False})
    assert off.choices[0].message.content == DEFAULT and "mcp" not in (off.model_extra or {})
    server.stop()


def test_mcp_request_without_mcp_config_is_400(scripted_server):
    c = openai.OpenAI(base_url=f"{scripted_server.base_url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "hi"}],
                                  extra_body={"mcp": True})
    assert err.value.body["param"] == "mcp"
