"""Claude Code (`claude -p`) against the server: a real Bash tool call whose output comes back.

Marked `clients`; skipped when the `claude` CLI is not installed
(`npm install -g @anthropic-ai/claude-code`). Select with `-m clients`, leave out with `-m 'not clients'`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

pytestmark = [pytest.mark.clients,
              pytest.mark.skipif(shutil.which("claude") is None, reason="the claude CLI is not installed")]

BASH_CALL = ('<tool_call>\n{"name": "Bash", "arguments": {"command": "echo MARKER_$((6*7))", '
             '"description": "Print the marker"}}\n</tool_call>')
RULES = [
    {"if_contains": "MARKER_42", "reply": "The command printed MARKER_42."},  # the tool's output came back
    {"if_contains": "run the marker command", "reply": BASH_CALL},
]


def test_claude_code_runs_a_bash_tool_call(start_server, models_dir, tmp_path):
    from vllm_mlx.testing import build_scripted_model

    path = build_scripted_model(models_dir / "claude-code-scripted", RULES, "Nothing to do.", "qwen3")
    config = json.loads((path / "config.json").read_text())
    config["max_position_embeddings"] = 262144  # Claude Code's system prompt and tools are ~35k tokens here
    (path / "config.json").write_text(json.dumps(config))
    server = start_server(path, "--trust-remote-code", "--served-model-name", "scripted", "--api-key", "cc-key")
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    env = {**os.environ, "HOME": str(home), "ANTHROPIC_BASE_URL": server.base_url, "ANTHROPIC_API_KEY": "cc-key",
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1",
           "DISABLE_AUTOUPDATER": "1"}
    done = subprocess.run(
        ["claude", "-p", "Please run the marker command", "--output-format", "stream-json", "--verbose",
         "--model", "scripted", "--allowedTools", "Bash"],
        cwd=work, env=env, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
    tool_uses = [b for e in events if e.get("type") == "assistant" for b in e["message"]["content"]
                 if b.get("type") == "tool_use"]
    assert tool_uses and tool_uses[0]["name"] == "Bash" and "MARKER_$((6*7))" in tool_uses[0]["input"]["command"]
    results = [b for e in events if e.get("type") == "user" for b in e["message"]["content"]
               if isinstance(b, dict) and b.get("type") == "tool_result"]
    assert results and "MARKER_42" in json.dumps(results[0]["content"])
    # the model only says this when MARKER_42 was in the next request's conversation
    final = [e for e in events if e.get("type") == "result"][-1]
    assert final["result"] == "The command printed MARKER_42." and not final["is_error"]
    log = server.log()
    assert "HEAD / " in log and "POST /v1/messages?beta=true" in log
