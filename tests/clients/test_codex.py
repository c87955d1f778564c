"""Codex CLI (`codex exec`) over the Responses API: a real shell tool call whose output comes back
in the next request.  Profile: `vllm-mlx serve MODEL --client codex`."""

from __future__ import annotations

import json

import pytest

from .client_support import (PROMPT, check_agent_round_trip, check_offline, client_version, fill, find_client,
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


# Codex offers apply_patch as a custom (freeform, Lark grammar) tool only to models its catalog says
# take one; a local model gets a catalog entry of its own (model_catalog_json).
CATALOG_MODEL = {
    "slug": "MODEL", "display_name": "MODEL", "description": "local model", "visibility": "list", "priority": 1,
    "supported_in_api": True, "base_instructions": "You are a coding agent working in a terminal.",
    "apply_patch_tool_type": "freeform", "shell_type": "shell_command", "context_window": 262144,
    "input_modalities": ["text"], "supports_parallel_tool_calls": True, "default_reasoning_summary": "auto",
    "supported_reasoning_levels": [{"effort": "medium", "description": "medium"}],
    "default_reasoning_level": "medium", "support_verbosity": False,
    "truncation_policy": {"mode": "tokens", "limit": 10000}, "experimental_supported_tools": [],
}
PATCH = "*** Begin Patch\n*** Add File: hello.txt\n+Hello from apply_patch\n*** End Patch\n"


def test_codex_writes_a_file_through_apply_patch(start_server, models_dir, proxy, record, tmp_path):
    """The model calls the custom apply_patch tool (its Lark grammar enforced while it writes the
    call); Codex applies the patch and sends the result back as custom_tool_call_output."""
    from vllm_mlx_testing import build_scripted_model

    call = json.dumps({"name": "apply_patch", "arguments": {"input": PATCH}})
    rules = [{"if_contains": "Success. Updated the following files", "reply": "The file is written."},
             {"if_contains": "<tool_response>", "quote": r"<tool_response>\n(.*?)\n</tool_response>",
              "reply": "The patch did not apply: {quote}"},
             {"if_contains": "Create hello.txt", "reply": f"<tool_call>\n{call}\n</tool_call>"}]
    path = build_scripted_model(models_dir / "codex-patch", rules, "Hello.", "qwen3", max_position_embeddings=262144)
    log = tmp_path / "requests.jsonl"
    server = start_server(path, "--trust-remote-code", "--served-model-name", "scripted", "--api-key", "k",
                          "--request-log", log)
    row = record(client="Codex", variant="apply_patch: custom tool, Lark grammar", version=client_version(CODEX),
                 family="hermes")
    codex_home, work = tmp_path / "codex", tmp_path / "work"
    codex_home.mkdir()
    work.mkdir()
    catalog = codex_home / "catalog.json"
    catalog.write_text(json.dumps({"models": [{**CATALOG_MODEL, "slug": "scripted", "display_name": "scripted"}]}))
    config = fill(CONFIG, MODEL="scripted", PORT=str(server.port)).replace(
        'model_provider = "local"', f'model_provider = "local"\nmodel_catalog_json = "{catalog}"')
    (codex_home / "config.toml").write_text(config)
    env = sandbox_env(tmp_path / "home", proxy, CODEX_HOME=str(codex_home), VLLM_MLX_API_KEY="k")
    run = run_client([CODEX, "exec", "--strict-config", "--json", "--skip-git-repo-check",
                      "Create hello.txt with a greeting."], env=env, cwd=work)
    events = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    items = [e["item"] for e in events if e.get("type") == "item.completed"]
    messages = [i["text"] for i in items if i.get("type") == "agent_message"]
    bodies = [json.loads(line).get("body") for line in log.read_text().splitlines()]
    sent = [b for b in bodies if isinstance(b, dict) and b.get("tools")]
    row.update(client_seconds=round(run.seconds, 1), protocol="/v1/responses", streaming=True, system_prompt=True,
               auth=["bearer"], text=True, tools=True, tools_offered=len(sent[0]["tools"]) if sent else 0,
               checked="hello.txt written by Codex from the model's apply_patch call")
    assert run.returncode == 0, run.tail()
    assert sent and "apply_patch" in sent[0]["tools"], "Codex did not offer apply_patch"
    assert (work / "hello.txt").read_text() == "Hello from apply_patch\n", run.tail()
    assert messages and messages[-1] == "The file is written.", run.tail()
    check_offline(run, proxy)
