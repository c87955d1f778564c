"""Qwen Code (`qwen -p`-style one-shot run) over chat completions: its run_shell_command tool runs
the marker command and the result comes back in the next request.
Profile: `vllm-mlx serve MODEL --client qwen-code`."""

from __future__ import annotations

import json

import pytest

from .client_support import PROMPT, check_agent_round_trip, client_version, find_client, run_client, sandbox_env

QWEN = find_client("qwen")
pytestmark = [pytest.mark.clients,
              pytest.mark.skipif(QWEN is None, reason="Qwen Code is not installed (scripts/install-clients.sh)")]

SETTINGS = {"privacy": {"usageStatisticsEnabled": False}, "telemetry": {"enabled": False}, "$version": 4}


@pytest.mark.parametrize("family", ["qwen3"])
def test_qwen_code_shell_tool_round_trip(agent_server, proxy, record, tmp_path, family):
    server = agent_server(family)
    row = record(client="Qwen Code", variant="", version=client_version(QWEN), family=server.parser)
    home, work = tmp_path / "home", tmp_path / "work"
    (home / ".qwen").mkdir(parents=True)
    work.mkdir()
    (home / ".qwen" / "settings.json").write_text(json.dumps(SETTINGS))
    # Qwen Code sends its requests to 127.0.0.1 through HTTP(S)_PROXY too (NO_PROXY is not honoured:
    # "fetch failed"), so no proxy variables here; strace still sees every connect
    env = sandbox_env(home, None)
    with server.watch() as seen:
        run = run_client([QWEN, "--auth-type", "openai", "--openai-base-url", f"{server.base_url}/v1",
                          "--openai-api-key", server.api_key, "-m", server.model, "--yolo", "-o", "json", PROMPT],
                         env=env, cwd=work)
    evidence = seen[0]
    row.update(client_seconds=round(run.seconds, 1), **evidence.facts())
    try:
        events = json.loads(run.stdout)
    except ValueError:
        events = []
    results = [e for e in events if isinstance(e, dict) and e.get("type") == "result"]
    final = results[-1].get("result", "") if results else run.stdout
    row["refused_egress"] = check_agent_round_trip(run, evidence, proxy, final)
    assert evidence.protocols() == ["/v1/chat/completions"]
    row.update(text=True, tools=True)
