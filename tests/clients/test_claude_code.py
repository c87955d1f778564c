"""Claude Code (`claude -p`) over the Anthropic Messages API: a real Bash tool call whose output
comes back in the next request.  Profile: `vllm-mlx serve MODEL --client claude-code`."""

from __future__ import annotations

import json

import pytest

from .client_support import PROMPT, check_agent_round_trip, client_version, find_client, run_client, sandbox_env

CLAUDE = find_client("claude")
pytestmark = [pytest.mark.clients,
              pytest.mark.skipif(CLAUDE is None, reason="Claude Code is not installed (scripts/install-clients.sh)")]


def test_claude_code_bash_tool_round_trip(agent_server, proxy, record, tmp_path):
    server = agent_server("qwen3")
    row = record(client="Claude Code", variant="", version=client_version(CLAUDE), family=server.parser)
    work = tmp_path / "work"
    work.mkdir()
    env = sandbox_env(tmp_path / "home", proxy, ANTHROPIC_BASE_URL=server.base_url, ANTHROPIC_API_KEY=server.api_key,
                      CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", DISABLE_TELEMETRY="1", DISABLE_AUTOUPDATER="1")
    with server.watch() as seen:
        run = run_client([CLAUDE, "-p", PROMPT, "--output-format", "stream-json", "--verbose",
                          "--model", server.model, "--allowedTools", "Bash"], env=env, cwd=work)
    evidence = seen[0]
    events = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    results = [e for e in events if e.get("type") == "result"]
    final = results[-1]["result"] if results else ""
    row.update(client_seconds=round(run.seconds, 1), **evidence.facts())
    check_agent_round_trip(run, evidence, proxy, final)
    tool_uses = [b for e in events if e.get("type") == "assistant" for b in e["message"]["content"]
                 if b.get("type") == "tool_use"]
    assert tool_uses[0]["name"] == "Bash" and "MARKER_$((6*7))" in tool_uses[0]["input"]["command"]
    assert not results[-1]["is_error"]
    assert evidence.protocols() == ["/v1/messages"] and evidence.facts()["streaming"]
    row.update(text=True, tools=True)
