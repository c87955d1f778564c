"""Continue CLI (`cn -p`) over chat completions: its terminal tool runs the marker command and the
result comes back in the next request.  Profile: `vllm-mlx serve MODEL --client continue`."""

from __future__ import annotations

import pytest

from .client_support import (PROMPT, check_agent_round_trip, client_version, fill, find_client, run_client,
                            sandbox_env)

CN = find_client("cn")
pytestmark = [pytest.mark.clients,
              pytest.mark.skipif(CN is None, reason="the Continue CLI (cn) is not installed "
                                                    "(scripts/install-clients.sh)")]

CONFIG = """name: vllm-mlx-local
version: 1.0.0
schema: v1
models:
  - name: local
    provider: openai
    model: MODEL
    apiBase: http://127.0.0.1:PORT/v1
    apiKey: KEY
    roles: [chat, edit, apply]
    capabilities: [tool_use]
"""


@pytest.mark.parametrize("family", ["llama"])
def test_continue_cli_tool_round_trip(agent_server, proxy, record, tmp_path, family):
    server = agent_server(family)
    row = record(client="Continue CLI", variant="", version=client_version(CN), family=server.parser)
    work = tmp_path / "work"
    work.mkdir()
    config = work / "config.yaml"
    config.write_text(fill(CONFIG, MODEL=server.model, PORT=str(server.port), KEY=server.api_key))
    env = sandbox_env(tmp_path / "home", proxy, CONTINUE_GLOBAL_DIR=str(tmp_path / "home" / ".continue"))
    with server.watch() as seen:
        run = run_client([CN, "-p", PROMPT, "--config", str(config)], env=env, cwd=work)
    evidence = seen[0]
    row.update(client_seconds=round(run.seconds, 1), **evidence.facts())
    # cn checks for a newer version at start-up (a name lookup of its vendor's API host, which
    # fails offline); nothing else leaves
    row["refused_egress"] = check_agent_round_trip(run, evidence, proxy, run.stdout, dns_ok=True)
    assert evidence.protocols() == ["/v1/chat/completions"]
    row.update(text=True, tools=True)
