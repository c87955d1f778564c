"""Codex CLI (`codex exec`) over the Responses API: a real shell tool call whose output comes back
in the next request.  Profile: `vllm-mlx serve MODEL --client codex`."""

from __future__ import annotations

import json

import pytest

from .client_support import (PROMPT, check_agent_round_trip, client_version, fill, find_client,
                            run_client, sandbox_env)

CODEX = find_client("codex")
pytestmark = [pytest.mark.clients,
              pytest.mark.skipif(CODEX is None, reason="the Codex CLI is not installed (scripts/install-clients.sh)")]

CONFIG = """model = "MODEL"
model_provider = "local"
approval_policy = "never"
sandbox_mode = "workspace-write"
check_for_update_on_startup = false

[analytics]
enabled = false

[features]
plugins = false
remote_plugin = false
apps = false

[model_providers.local]
name = "Local vllm-mlx server"
base_url = "http://127.0.0.1:PORT/v1"
env_key = "VLLM_MLX_API_KEY"
wire_api = "responses"
"""


@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_codex_shell_tool_round_trip(agent_server, proxy, record, tmp_path, family):
    server = agent_server(family)
    row = record(client="Codex", variant=f"responses, {family}", version=client_version(CODEX), family=server.parser)
    codex_home, work = tmp_path / "codex", tmp_path / "work"
    codex_home.mkdir()
    work.mkdir()
    (codex_home / "config.toml").write_text(fill(CONFIG, MODEL=server.model, PORT=str(server.port)))
    env = sandbox_env(tmp_path / "home", proxy, CODEX_HOME=str(codex_home), VLLM_MLX_API_KEY=server.api_key)
    with server.watch() as seen:
        run = run_client([CODEX, "exec", "--strict-config", "--json", "--skip-git-repo-check", PROMPT],
                         env=env, cwd=work)
    evidence = seen[0]
    events = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    items = [e["item"] for e in events if e.get("type") == "item.completed"]
    messages = [i["text"] for i in items if i.get("type") == "agent_message"]
    row.update(client_seconds=round(run.seconds, 1), **evidence.facts())
    check_agent_round_trip(run, evidence, proxy, messages[-1] if messages else "")
    commands = [i for i in items if i.get("type") == "command_execution"]
    assert commands and "MARKER_$((6*7))" in commands[0]["command"]
    assert commands[0]["exit_code"] == 0 and "MARKER_42" in commands[0]["aggregated_output"]
    assert [e for e in events if e.get("type") == "turn.completed"][-1]["usage"]["input_tokens"] > 0
    assert evidence.protocols() == ["/v1/responses"]
    row.update(text=True, tools=True)
