"""aider (one `--message`, no git) over chat completions: text only (aider edits files through
its own text formats, not tool calls).  Profile: `vllm-mlx serve MODEL --client generic-openai`."""

from __future__ import annotations

import json

import pytest

from .client_support import check_offline, client_version, find_client, run_client, sandbox_env

AIDER = find_client("aider")
pytestmark = [pytest.mark.clients,
              pytest.mark.skipif(AIDER is None, reason="aider is not installed (scripts/install-clients.sh)")]
REPLY = "Hello from the scripted agent model."


def test_aider_one_message(agent_server, proxy, record, tmp_path):
    server = agent_server("qwen3")
    row = record(client="aider", variant="", version=client_version(AIDER), family=server.parser)
    work = tmp_path / "work"
    work.mkdir()
    # aider downloads a model price list unless it knows the model: describe it locally instead
    metadata = work / "model-metadata.json"
    metadata.write_text(json.dumps({f"openai/{server.model}": {
        "max_input_tokens": 32768, "max_output_tokens": 4096, "input_cost_per_token": 0.0,
        "output_cost_per_token": 0.0, "litellm_provider": "openai", "mode": "chat"}}))
    # litellm (inside aider) downloads its model price list unless told to use the bundled copy
    env = sandbox_env(tmp_path / "home", proxy, LITELLM_LOCAL_MODEL_COST_MAP="True")
    with server.watch() as seen:
        run = run_client([AIDER, "--model", f"openai/{server.model}", "--openai-api-base", f"{server.base_url}/v1",
                          "--openai-api-key", server.api_key, "--message", "Say hello.", "--yes-always", "--no-git",
                          "--no-check-update", "--analytics-disable", "--no-pretty", "--no-show-model-warnings",
                          "--model-metadata-file", str(metadata)],
                         env=env, cwd=work, timeout=300)
    evidence = seen[0]
    row.update(client_seconds=round(run.seconds, 1), **evidence.facts())
    assert run.returncode == 0, run.tail()
    assert REPLY in run.stdout, run.tail()
    assert evidence.protocols() == ["/v1/chat/completions"]
    assert any("Say hello." in c["context"] for c in evidence.conversations)
    row["refused_egress"] = check_offline(run, proxy)
    row.update(text=True, tools=False)
