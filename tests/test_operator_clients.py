"""The client-side settings `--client` prints, pasted as they are into the real client programs.

Marked `clients`; each test skips when its CLI is not installed. The server is started with the
client profile, the settings block is taken from the server's own startup output, and the client
must complete a real tool call with nothing but those settings (plus a throwaway HOME).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from vllm_mlx.client_setup import KEY_PLACEHOLDER

pytestmark = pytest.mark.clients

KEY = "paste-key"
RULES = [
    {"if_contains": "MARKER_42", "reply": "The command printed MARKER_42."},
    {"if_contains": "run the marker command", "reply":
        '<tool_call>\n{"name": "exec_command", "arguments": {"cmd": "echo MARKER_$((6*7))"}}\n</tool_call>'},
]
CLAUDE_RULES = [RULES[0], {"if_contains": "run the marker command", "reply":
    '<tool_call>\n{"name": "Bash", "arguments": {"command": "echo MARKER_$((6*7))", '
    '"description": "Print the marker"}}\n</tool_call>'}]


def long_context_model(models_dir, name, rules):
    from vllm_mlx_testing import build_scripted_model

    path = build_scripted_model(models_dir / name, rules, "Nothing to do.", "qwen3")
    config = json.loads((path / "config.json").read_text())
    config["max_position_embeddings"] = 262144  # agent system prompts and tools are tens of thousands of tokens
    (path / "config.json").write_text(json.dumps(config))
    return path


def printed_block(log: str, client: str) -> list[str]:
    """The client-settings block the server printed at startup, up to the note about the key."""
    lines = log[log.index(f"=== client settings for {client}"):].splitlines()[1:]
    end = next(i for i, line in enumerate(lines) if line.startswith((KEY_PLACEHOLDER, "The server has no")))
    return lines[:end]


@pytest.mark.skipif(shutil.which("codex") is None, reason="the codex CLI is not installed")
def test_codex_with_the_printed_config(start_server, models_dir, tmp_path):
    path = long_context_model(models_dir, "paste-codex", RULES)
    server = start_server(path, "--trust-remote-code", "--served-model-name", "scripted", "--api-key", KEY,
                          "--client", "codex")
    try:
        lines = printed_block(server.log(), "codex")
        shell = lines.index("then, in the shell:")
        config = "\n".join(line[2:] for line in lines[1:shell])
        exports = [line.split("export ", 1)[1] for line in lines[shell:] if "export " in line]
        home, codex_home, work = tmp_path / "home", tmp_path / "codex", tmp_path / "work"
        for d in (home, codex_home, work):
            d.mkdir()
        (codex_home / "config.toml").write_text(config)
        env = {**os.environ, "HOME": str(home), "CODEX_HOME": str(codex_home)}
        for assignment in exports:
            name, value = assignment.split("=", 1)
            env[name] = value.replace(KEY_PLACEHOLDER, KEY)
        assert env["VLLM_MLX_API_KEY"] == KEY
        done = subprocess.run(["codex", "exec", "--json", "--skip-git-repo-check", "Please run the marker command"],
                              cwd=work, env=env, capture_output=True, text=True, timeout=240,
                              stdin=subprocess.DEVNULL)
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    messages = [e["item"]["text"] for e in events if e.get("type") == "item.completed"
                and e["item"].get("type") == "agent_message"]
    assert messages[-1] == "The command printed MARKER_42."


@pytest.mark.skipif(shutil.which("claude") is None, reason="the claude CLI is not installed")
def test_claude_code_with_the_printed_environment(start_server, models_dir, tmp_path):
    path = long_context_model(models_dir, "paste-claude", CLAUDE_RULES)
    server = start_server(path, "--trust-remote-code", "--served-model-name", "scripted", "--api-key", KEY,
                          "--client", "claude-code")
    try:
        lines = printed_block(server.log(), "claude-code")
        env = {**os.environ, "HOME": str(tmp_path), "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1"}
        for line in lines:
            match = re.match(r"\s+export (\w+)=(.*)", line)
            if match:
                env[match[1]] = match[2].replace(KEY_PLACEHOLDER, KEY)
        assert env["ANTHROPIC_BASE_URL"] == server.base_url  # no /v1
        work = tmp_path / "work"
        work.mkdir()
        done = subprocess.run(["claude", "-p", "Please run the marker command", "--output-format", "stream-json",
                               "--verbose", "--model", env["ANTHROPIC_MODEL"], "--allowedTools", "Bash"],
                              cwd=work, env=env, capture_output=True, text=True, timeout=240,
                              stdin=subprocess.DEVNULL)
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    final = [e for e in events if e.get("type") == "result"][-1]
    assert final["result"] == "The command printed MARKER_42." and not final["is_error"]
