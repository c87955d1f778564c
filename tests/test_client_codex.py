"""Codex CLI (`codex exec`) against the server over /v1/responses: a real shell tool call whose
output comes back in the next request.

Marked `clients`; skipped when the `codex` CLI is not installed (`npm install -g @openai/codex`).
Select with `-m clients`, leave out with `-m 'not clients'`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.clients,
              pytest.mark.skipif(shutil.which("codex") is None, reason="the codex CLI is not installed")]

SHELL_CALL = '<tool_call>\n{"name": "exec_command", "arguments": {"cmd": "echo MARKER_$((6*7))"}}\n</tool_call>'
RULES = [
    {"if_contains": "MARKER_42", "reply": "The command printed MARKER_42."},  # the command's output came back
    {"if_contains": "run the marker command", "reply": SHELL_CALL},
]
CONFIG = Path(__file__).resolve().parents[2] / "shared" / "clients" / "codex-config.toml"
FALLBACK_CONFIG = """model = "MODEL"
model_provider = "local"
approval_policy = "never"
sandbox_mode = "workspace-write"
check_for_update_on_startup = false

[analytics]
enabled = false

[model_providers.local]
name = "Local vllm-mlx server"
base_url = "http://127.0.0.1:PORT/v1"
env_key = "VLLM_MLX_API_KEY"
wire_api = "responses"
"""


def test_codex_runs_a_shell_tool_call(start_server, models_dir, tmp_path):
    from vllm_mlx.testing import build_scripted_model

    path = build_scripted_model(models_dir / "codex-scripted", RULES, "Nothing to do.", "qwen3")
    config = json.loads((path / "config.json").read_text())
    config["max_position_embeddings"] = 262144  # Codex's instructions and tools are ~16k tokens here
    (path / "config.json").write_text(json.dumps(config))
    server = start_server(path, "--trust-remote-code", "--served-model-name", "scripted", "--api-key", "cx-key")
    home, codex_home, work = tmp_path / "home", tmp_path / "codex", tmp_path / "work"
    for d in (home, codex_home, work):
        d.mkdir()
    template = CONFIG.read_text() if CONFIG.exists() else FALLBACK_CONFIG
    (codex_home / "config.toml").write_text(template.replace("MODEL", "scripted").replace("PORT", str(server.port)))
    env = {**os.environ, "HOME": str(home), "CODEX_HOME": str(codex_home), "VLLM_MLX_API_KEY": "cx-key"}
    try:
        done = subprocess.run(
            ["codex", "exec", "--strict-config", "--json", "--skip-git-repo-check", "Please run the marker command"],
            cwd=work, env=env, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
        log = server.log()
    finally:
        server.stop()  # its long-context caches hold memory the later tests' servers need
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    commands = [e["item"] for e in events if e.get("type") == "item.completed"
                and e["item"].get("type") == "command_execution"]
    assert commands and "MARKER_$((6*7))" in commands[0]["command"]
    assert commands[0]["exit_code"] == 0 and "MARKER_42" in commands[0]["aggregated_output"]
    # the model only says this when MARKER_42 was in the next request's input
    messages = [e["item"]["text"] for e in events if e.get("type") == "item.completed"
                and e["item"].get("type") == "agent_message"]
    assert messages[-1] == "The command printed MARKER_42."
    assert [e for e in events if e.get("type") == "turn.completed"][-1]["usage"]["input_tokens"] > 0
    assert log.count("POST /v1/responses HTTP/1.1\" 200") == 2
